"""GPU tasks first, then the largest: packs scarce GPUs before cores fragment."""

from __future__ import annotations

from typing import Any

from matensemble.model import Task
from matensemble.strategies.base import SubmissionOrder

__all__ = ["GPUFirst"]


class GPUFirst(SubmissionOrder):
    """More GPUs first, then more cores; GPU nodes fill before CPU-only work takes their cores."""

    name = "gpu-first"

    def key(self, task: Task) -> tuple[Any, ...]:
        return (-task.resources.gpus, -task.resources.cores)
