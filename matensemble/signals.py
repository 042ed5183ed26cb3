"""Stopping a run on a signal: the first one stops it gracefully, a second one exits at once.

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
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matensemble.engine import Ensemble

__all__ = ["SignalStop"]


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class SignalStop:
    """Handlers on the running event loop: first signal ``ensemble.stop(NAME)``, second
    ``ensemble.abort()`` and ``os._exit(128 + N)`` (the journal stays replayable).

    ``seen`` lists the signals received, in order. ``remove()`` puts back the default action.
    """

    def __init__(self, ensemble: Ensemble, announce: Callable[[str], None] = _to_stderr) -> None:
        self.ensemble = ensemble
        self.announce = announce
        self.seen: list[int] = []
        self._installed: list[int] = []

    def install(self, signums: Iterable[int], *, only_if_default: bool = False) -> SignalStop:
        """Handle ``signums`` on the running loop.

        With ``only_if_default``, a signal whose handler is not ``SIG_DFL`` (the application
        handles it itself, or ignores it) is left alone, and so is every signal outside the
        main thread (Python delivers signals there only).
        """
        if threading.current_thread() is not threading.main_thread():
            return self
        loop = asyncio.get_running_loop()
        for signum in signums:
            if only_if_default and signal.getsignal(signum) is not signal.SIG_DFL:
                continue
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
            self.announce(
                f"{name}: stopping (running tasks are cancelled; again to force); continue with: "
                f"matensemble resume {self.ensemble.run_dir}"
            )
            self.ensemble.stop(name)
            return
        self.announce(f"{name}: forced exit; the journal is kept for resume")
        self.ensemble.abort()
        os._exit(128 + signum)
