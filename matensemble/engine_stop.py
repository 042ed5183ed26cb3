"""How a run ends: teardown on leaving the ``async with`` block, on an error, or after ``stop``.

Whatever stops a run from outside its tasks (a signal, an exception or cancellation in the
user's code, the walltime, a full disk) marks it *interrupted*: the backend cancels what runs,
and every unfinished task is recorded as cancelled and interrupted, so that ``resume`` runs it
again (invariant 7; only ``cancel(id)`` is final). The final events and files are written even
on a full disk, and the run directory's lock is given back.
"""

from __future__ import annotations

from typing import Literal

import anyio

from matensemble.engine_loop import EngineLoop
from matensemble.engine_state import why
from matensemble.events import RunFinished
from matensemble.model import TaskState
from matensemble.observer import close_all

__all__ = ["EngineStop"]


class EngineStop(EngineLoop):
    """Teardown of one run: cancel, record every open task, close the files and the lock."""

    async def _close(self, error: BaseException | None) -> None:
        """Tear the run down (``error``: what stopped it, if anything) and end its task group."""
        assert self._tg is not None
        await self._teardown(error)
        self._tg.cancel_scope.cancel()
        await self._tg.__aexit__(None, None, None)

    async def _teardown(self, exc: BaseException | None) -> None:
        """Stop starting, cancel what runs, record every open task, write the final files."""
        with anyio.CancelScope(shield=True):
            if self._deadline_timer is not None:
                self._deadline_timer.cancel()
            self._stopping = True
            if exc is not None and not self._interrupted:  # stopped from outside its tasks:
                self._interrupted = True  # every unfinished task stays resumable (invariant 7)
                self._stop_reason = f"ensemble stopped: {why(exc)}"
            reason = self._stop_reason or "ensemble stopped"
            try:
                await self.backend.close()
            finally:
                self._drain_outcomes()
                for rec in [r for r in self._records.values() if r.state is TaskState.RUNNING]:
                    self._finish(rec, TaskState.CANCELLED, reason=reason)
                for rec in list(self._records.values()):
                    if not rec.state.terminal:
                        self._finish(rec, TaskState.CANCELLED, reason=reason)
                if self._logger is not None:  # the run files exist
                    self._t_end = self.backend.now()
                    outcome: Literal["completed", "interrupted", "cancelled", "error"]
                    outcome = "interrupted" if self._interrupted else "completed"
                    if exc is not None:
                        outcome = "error" if isinstance(exc, Exception) else "cancelled"
                    counts = self._state_counts()
                    self._emit(RunFinished(self._t_end, counts, outcome))
                    self._log.info("run_finished", outcome=outcome, reason=reason, **counts)
                    full = close_all(self._observers)  # every one, also on a full disk
                    self._error = self._error or full
                    self._logger.close()
                self._give_up_run_dir()
                self._wake_waiters()

    def _give_up_run_dir(self) -> None:
        """Release the run directory's lock; if the run never reached its journal, leave the
        directory as it was found."""
        owner, self._owner = self._owner, None
        if owner is None:
            return
        if self._journal is None:
            owner.abandon()
        else:
            owner.release()
