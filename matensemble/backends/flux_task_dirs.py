"""Task directories for Flux jobs, made at the cost of one ``mkdir`` per launch.

The job shell opens the task's ``stdout`` and ``stderr`` itself (appending, creating them), in
the directory the job runs in. A directory this driver has just made holds nothing, so nothing
in it can lead outside the run directory: the files are left to the shell. Only a directory
that already exists (a retry, a resume, a task id used again) goes through
``prepare_task_outputs``, which checks what is there and creates the files without following
links. On a loaded node this halves the driver's file-system work per job (``mkdir`` and file
creation cost 0.2-0.3 ms each there, against the Flux brokers' own writes). The price: a job
that never started (cancelled while queued, refused by Flux) leaves an empty directory.
"""

from __future__ import annotations

import os
from pathlib import Path

from matensemble.backends.base import TaskDirPaths
from matensemble.backends.task_files import prepare_task_outputs

__all__ = ["TaskDirs"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class TaskDirs:
    """Makes each launch's directory under one ``tasks/`` directory, held open."""

    def __init__(self) -> None:
        self._parent: str | None = None
        self._fd = -1  # the open tasks/ directory (opened without following a link)
        self.path = TaskDirPaths()  # ``launch.task_dir`` as an absolute path

    def prepare(self, task_dir: str) -> None:
        """Make ``task_dir`` (an absolute path); if it existed, make sure its output files are
        safe to open.

        Raises:
            UnsafeTaskPath, OSError: as ``prepare_task_outputs``.
        """
        parent, name = os.path.split(task_dir)
        if self._fd < 0 or parent != self._parent:
            prepare_task_outputs(Path(task_dir))  # makes and checks tasks/ too
            self.close()
            self._fd = os.open(parent, _DIR_FLAGS)
            self._parent = parent
            return
        try:
            os.mkdir(name, 0o755, dir_fd=self._fd)
        except FileExistsError:
            prepare_task_outputs(Path(task_dir))

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
