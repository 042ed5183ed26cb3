"""A task's directory and output files, made without following links.

A ``tasks/<id>`` or ``tasks/<id>/stdout`` that is a symbolic link (left there by anyone who can
write the run directory) would make a task write wherever it points. So the two directories
below the run directory (``tasks`` and ``<id>``) are created and opened relative to an open
handle of their parent (``mkdir``/``open`` with ``dir_fd``) with ``O_NOFOLLOW | O_DIRECTORY``,
and the output files with ``O_NOFOLLOW``; anything that is not a plain directory or a plain
file with a single link is refused with ``UnsafeTaskPath``, naming the path. The run directory
itself is the user's choice and may be a link (e.g. to scratch space).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from matensemble.errors import UnsafeTaskPath

TYPE_CHECKING = False  # not from typing: a spawner helper starts faster without it (and pathlib)

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["TaskOutputs", "open_task_outputs", "prepare_task_outputs"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC
_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_OUTPUTS = ("stdout", "stderr")


def open_task_outputs(task_dir: str | Path) -> tuple[int, int]:
    """Make ``task_dir`` if needed and open its ``stdout`` and ``stderr`` for appending.

    Returns the two descriptors (the caller closes them).

    Raises:
        UnsafeTaskPath: ``task_dir``, its parent, or an output file is a link or not what it
            should be (the message names the path); nothing was written through it.
        OSError: the directory or a file cannot be made (permissions, a full disk).
    """
    task_dir = os.fspath(task_dir)
    return _open_outputs_in(_open_task_dir(task_dir), task_dir)


class TaskOutputs:
    """``open_task_outputs`` for many tasks of one run: the ``tasks`` directory is made and
    opened once (on first use) and held, so each task costs only its own directory and files.

    The held handle keeps pointing at the directory it opened, even if the path is later
    replaced by a link: nothing is written outside it. If it was removed, it is made again.
    """

    def __init__(self) -> None:
        self._tasks: tuple[str, int] | None = None  # the tasks directory and its handle

    def open(self, task_dir: str) -> tuple[int, int]:
        """As ``open_task_outputs(task_dir)``."""
        held = self._tasks
        tasks = os.path.dirname(task_dir)
        if held is not None and held[0] == tasks:
            try:
                return _open_outputs_in(_open_subdir(held[1], task_dir), task_dir)
            except FileNotFoundError:  # the tasks directory was removed: make it again
                pass
        self.close()
        held = self._tasks = (tasks, _open_tasks_dir(tasks))
        return _open_outputs_in(_open_subdir(held[1], task_dir), task_dir)

    def close(self) -> None:
        if self._tasks is not None:
            os.close(self._tasks[1])
            self._tasks = None


def _open_outputs_in(dir_fd: int, task_dir: str) -> tuple[int, int]:
    """The task's ``stdout`` and ``stderr`` opened in ``dir_fd`` (closed here)."""
    fds: list[int] = []
    try:
        for name in _OUTPUTS:
            fds.append(_open_output(dir_fd, task_dir, name))
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    finally:
        os.close(dir_fd)
    return fds[0], fds[1]


def prepare_task_outputs(task_dir: str | Path) -> None:
    """Make ``task_dir`` and empty ``stdout``/``stderr`` files in it, safely, for a backend whose
    launcher opens the output files itself (Flux): what it then opens is ours.

    Raises:
        UnsafeTaskPath, OSError: as ``open_task_outputs``.
    """
    for fd in open_task_outputs(task_dir):
        os.close(fd)


def _open_task_dir(task_dir: str) -> int:
    """An open handle of ``task_dir``, whose last two components are made and opened without
    following links."""
    tasks_fd = _open_tasks_dir(os.path.dirname(task_dir))
    try:
        return _open_subdir(tasks_fd, task_dir)
    finally:
        os.close(tasks_fd)


def _open_tasks_dir(tasks: str) -> int:
    """An open handle of ``tasks`` (the run directory's ``tasks``), made and opened without
    following a link there; the run directory is made if missing."""
    top = os.path.dirname(tasks) or os.curdir
    try:
        top_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        os.makedirs(top, exist_ok=True)
        top_fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return _open_subdir(top_fd, tasks)
    finally:
        os.close(top_fd)


def _open_subdir(parent_fd: int, path: str) -> int:
    name = os.path.basename(path)
    try:
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    except FileExistsError:
        pass
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, path) from None
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        # Linux says ENOTDIR for a link opened with O_DIRECTORY | O_NOFOLLOW, others ELOOP.
        if exc.errno in (errno.ELOOP, errno.ENOTDIR) and _is_link(parent_fd, name):
            raise _refused(path, "it is a symbolic link") from None
        raise OSError(exc.errno, exc.strerror, path) from None


def _is_link(dir_fd: int, name: str) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _open_output(dir_fd: int, task_dir: str, name: str) -> int:
    try:
        # The common case, a first attempt: a file this call creates is a plain file with one
        # link (O_EXCL fails on anything already there, a link or a FIFO included).
        return os.open(name, _NEW_FILE_FLAGS, 0o644, dir_fd=dir_fd)
    except FileExistsError:
        pass  # a retry, a resume, or something planted: opened and checked below
    except OSError as exc:
        raise OSError(exc.errno, exc.strerror, os.path.join(task_dir, name)) from None
    try:
        # O_NONBLOCK: a FIFO planted here fails (ENXIO) instead of blocking the driver.
        fd = os.open(name, _FILE_FLAGS, 0o644, dir_fd=dir_fd)
    except OSError as exc:
        path = os.path.join(task_dir, name)
        if exc.errno == errno.ELOOP:
            raise _refused(path, "it is a symbolic link") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise _refused(path, "it is not a regular file") from None
        raise OSError(exc.errno, exc.strerror, path) from None
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "it is not a regular file"
    elif st.st_nlink != 1:
        why = f"it has {st.st_nlink} hard links (one may lead outside the run directory)"
    if why is not None:
        os.close(fd)
        raise _refused(os.path.join(task_dir, name), why)
    # F_SETFL sets the file status flags that can change: O_APPEND stays, O_NONBLOCK goes.
    fcntl.fcntl(fd, fcntl.F_SETFL, os.O_APPEND)
    return fd


def _refused(path: str, why: str) -> UnsafeTaskPath:
    return UnsafeTaskPath(
        f"refusing to write {path!r}: {why}; task outputs are written only inside "
        "the run directory (remove it, then resume)"
    )
