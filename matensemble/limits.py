"""Ceilings on the size of input, checked before any memory is spent on it.

A typo (``--gpus 100000000``, a sweep over two ranges of a million values each) must be refused
in a millisecond, not take the driver's node down with it: the kernel's OOM killer gives no
message and leaves no journal. Each ceiling sits far above any real machine or ensemble and can
be raised with an environment variable (the sweep ceiling also with ``[ensemble] max_tasks`` in
the file), so a user who means it is one setting away.

Costs behind the defaults: an expanded task holds about 0.7 KB of the driver's resident memory,
also at the peak of loading (``benchmarks/bounded_input.py`` measures it), so the default
ceiling of 10^6 tasks is about 650 MB; a simulated machine's resource pool holds about 30 to 50
bytes per core or GPU id and 0.5 KB per node.
"""

from __future__ import annotations

import os
from typing import NamedTuple

from matensemble.errors import LimitExceeded

__all__ = [
    "MAX_CORES_PER_NODE",
    "MAX_FILE_BYTES",
    "MAX_GPUS_PER_NODE",
    "MAX_MACHINE_IDS",
    "MAX_NODES",
    "MAX_TASKS",
    "Limit",
]


class Limit(NamedTuple):
    """One ceiling: what it counts, its default, and the variable that raises it."""

    what: str
    default: int
    variable: str

    def value(self) -> int:
        """The ceiling in force: the environment variable's value if it is set, else the default.

        Raises:
            LimitExceeded: the variable is set to something other than a whole number >= 1.
        """
        text = os.environ.get(self.variable)
        if text is None or not text.strip():
            return self.default
        try:
            value = int(text.strip().replace("_", ""))
        except ValueError:
            value = 0
        if value < 1:
            raise LimitExceeded(
                f"{self.variable}={text!r} is not a whole number >= 1 (it sets the limit of "
                f"{self.what}, default {self.default:,})"
            )
        return value

    def check(self, count: int, subject: str, *, ceiling: int | None = None) -> None:
        """Raise ``LimitExceeded`` if ``count`` is over the ceiling (``ceiling`` overrides it).

        ``subject`` says what was counted, e.g. ``"--gpus"``; the message names the limit and
        how to raise it.
        """
        limit = self.value() if ceiling is None else ceiling
        if count > limit:
            raise LimitExceeded(f"{subject} is {count:,}: {self.explain(count, limit)}")

    def explain(self, count: int, limit: int, *, also: str = "") -> str:
        """The second half of a refusal: the limit, and the setting that raises it."""
        return (
            f"more than the limit of {limit:,} {self.what} (a guard against exhausting memory; "
            f"if you mean it, raise it with {self.variable}={count}{also})"
        )


MAX_TASKS = Limit("tasks per ensemble file", 1_000_000, "MATENSEMBLE_MAX_TASKS")
MAX_FILE_BYTES = Limit("bytes in an ensemble file", 128 * 2**20, "MATENSEMBLE_MAX_FILE_BYTES")
MAX_CORES_PER_NODE = Limit("cores per node", 65_536, "MATENSEMBLE_MAX_CORES_PER_NODE")
MAX_GPUS_PER_NODE = Limit("GPUs per node", 1_024, "MATENSEMBLE_MAX_GPUS_PER_NODE")
MAX_NODES = Limit("nodes in a simulated machine", 1_000_000, "MATENSEMBLE_MAX_NODES")
MAX_MACHINE_IDS = Limit(
    "core and GPU ids in a simulated machine", 10_000_000, "MATENSEMBLE_MAX_MACHINE_IDS"
)
