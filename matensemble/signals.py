"""Stopping runs on a signal: the first one stops them gracefully, a second one exits at once.

Used by the CLI (SIGINT and SIGTERM) and, by default, by ``Ensemble`` itself for SIGTERM, so that
a plain Python script that a batch system warns with SIGTERM stops like the CLI does: nothing
more starts, running process trees are killed, every unfinished task is journaled as interrupted
and ``matensemble resume`` continues the run. Without this, SIGTERM's default action would end
the driver at once and leave its tasks running.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Protocol

__all__ = ["SignalStop", "Stoppable", "release_sigterm", "stop_on_sigterm"]


class Stoppable(Protocol):
    """What a signal handler needs of a run (``engine.Ensemble`` is one)."""

    @property
    def run_dir(self) -> Path: ...

    def stop(self, reason: str) -> None: ...

    def abort(self) -> None: ...


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class SignalStop:
    """Handlers on the running event loop for the ``ensembles`` it holds: the first signal
    calls ``stop(NAME)`` on each, a second one ``abort()`` and ``os._exit(128 + N)`` (the
    journals stay replayable).

    ``seen`` lists the signals received, in order. ``remove()`` puts back the default action.
    """

    def __init__(
        self, ensembles: Iterable[Stoppable], announce: Callable[[str], None] = _to_stderr
    ) -> None:
        self.ensembles = list(ensembles)
        self.announce = announce
        self.seen: list[int] = []
        self._installed: list[int] = []

    def install(self, signums: Iterable[int]) -> SignalStop:
        """Handle ``signums`` on the running loop (which must be the main thread's)."""
        loop = asyncio.get_running_loop()
        for signum in signums:
            loop.add_signal_handler(signum, self._on_signal, signum)
            self._installed.append(signum)
        return self

    def remove(self) -> None:
        """Give the signals back their default action (``SIG_DFL``; SIGINT: KeyboardInterrupt)."""
        loop = asyncio.get_running_loop()
        while self._installed:
            loop.remove_signal_handler(self._installed.pop())

    def _on_signal(self, signum: int) -> None:
        self.seen.append(signum)
        name = signal.Signals(signum).name
        if len(self.seen) == 1:
            for ensemble in self.ensembles:
                self.announce(
                    f"{name}: stopping (running tasks are cancelled; again to force); continue "
                    f"with: matensemble resume {ensemble.run_dir}"
                )
                ensemble.stop(name)
            return
        self.announce(f"{name}: forced exit; the journal is kept for resume")
        for ensemble in self.ensembles:
            ensemble.abort()
        os._exit(128 + signum)


_sigterm: SignalStop | None = None  # the library's own SIGTERM handler, while runs are active


def stop_on_sigterm(ensemble: Stoppable) -> None:
    """Let SIGTERM stop ``ensemble`` gracefully until ``release_sigterm(ensemble)``.

    Only where SIGTERM has its default action (``SIG_DFL``) when the first run starts, and only
    in the main thread (Python delivers signals there only): an application that handles or
    ignores SIGTERM itself keeps its choice. Runs active at the same time share one handler,
    which stops them all; the default action comes back when the last one ends.
    """
    global _sigterm
    if threading.current_thread() is not threading.main_thread():
        return
    if _sigterm is not None:
        _sigterm.ensembles.append(ensemble)
    elif signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        _sigterm = SignalStop([ensemble]).install([signal.SIGTERM])


def release_sigterm(ensemble: Stoppable) -> None:
    """``ensemble``'s run is over; the last one to go gives SIGTERM its default back."""
    global _sigterm
    if _sigterm is None or ensemble not in _sigterm.ensembles:
        return
    _sigterm.ensembles.remove(ensemble)
    if not _sigterm.ensembles:
        _sigterm.remove()
        _sigterm = None
