"""When to try a failed task again, and how long to wait first."""

from __future__ import annotations

import msgspec

from matensemble.model import TaskState

__all__ = ["RetryPolicy"]


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """Exponential backoff between attempts; the number of attempts is ``Task.retries``.

    Args:
        delay: seconds before the first retry (0: at once).
        factor: each further retry waits ``factor`` times longer.
        max_delay: upper bound of one wait.
        on: which outcomes are retried (failures and timeouts by default; never cancels).
    """

    delay: float = 0.0
    factor: float = 2.0
    max_delay: float = 300.0
    on: frozenset[TaskState] = frozenset({TaskState.FAILED, TaskState.TIMED_OUT})

    def __post_init__(self) -> None:
        if self.delay < 0 or self.factor < 1 or self.max_delay < 0:
            raise ValueError("RetryPolicy needs delay >= 0, factor >= 1 and max_delay >= 0")

    def wait_before(self, attempt: int) -> float:
        """Seconds to wait before attempt ``attempt + 1``, after attempt ``attempt`` failed."""
        if self.delay == 0:
            return 0.0
        return float(min(self.max_delay, self.delay * self.factor ** (attempt - 1)))
