"""How the local backend words what went wrong with a launch: an output file that cannot be
opened, a process that cannot start, an exit status.

Kept apart from the planner, with nothing of the engine imported, so that a spawner helper
process (``local_helper``) starts quickly.
"""

from __future__ import annotations

import os

from matensemble.backends.task_files import TaskOutputs
from matensemble.errors import UnsafeTaskPath

__all__ = [
    "Exit",
    "LaunchError",
    "Process",
    "describe_exit",
    "describe_spawn_error",
    "open_outputs",
]

Exit = tuple[int | None, int | None, str]  # returncode, signal, reason
# argv, executable, environment (b"NAME=value" entries, as exec takes them), cores
Process = tuple[list[str], str | None, list[bytes], list[int]]


class LaunchError(Exception):
    """A per-task problem found before any process started; the message is the reason."""


def open_outputs(outputs: TaskOutputs, task_dir: str) -> tuple[int, int]:
    """Open stdout and stderr for appending, creating the task directory if it is missing,
    without following links (see ``task_files``)."""
    try:
        return outputs.open(task_dir)
    except UnsafeTaskPath as exc:
        raise LaunchError(str(exc)) from None
    except OSError as exc:
        where = exc.filename if exc.filename is not None else task_dir
        raise LaunchError(f"cannot open {str(where)!r}: {exc.strerror}") from None


def describe_spawn_error(exc: Exception, process: Process, cwd: str) -> str:
    argv, executable, env, _ = process
    program = argv[0]
    if not isinstance(exc, OSError):
        return f"cannot start {program!r}: {exc}"
    if exc.filename == cwd and program != cwd:  # Popen names cwd when chdir failed
        if isinstance(exc, FileNotFoundError):
            return f"working directory not found: {cwd!r}"
        if isinstance(exc, NotADirectoryError):
            return f"working directory is not a directory: {cwd!r}"
        return f"cannot enter working directory {cwd!r}: {exc.strerror}"
    if isinstance(exc, FileNotFoundError):
        target = executable or program
        if os.sep not in target:
            import shutil  # here: a spawner helper starts faster without it

            path = next((e[5:] for e in env if e.startswith(b"PATH=")), os.defpath.encode())
            target = shutil.which(target, path=os.fsdecode(path)) or ""
        if target and os.path.isfile(os.path.join(cwd, target)):
            return f"the interpreter in the #! line of {program!r} was not found"
        return f"executable not found: {program!r}"
    if isinstance(exc, PermissionError):
        return f"permission denied: cannot execute {program!r}"
    return f"cannot start {program!r}: {exc.strerror or exc}"


def describe_exit(code: int | None, prefix: str) -> Exit:
    if code is None:
        return None, None, f"{prefix}exit status lost: the process was reaped elsewhere"
    if code >= 0:
        return code, None, f"{prefix}exited with code {code}"
    import signal  # here: a spawner helper starts faster without it (it imports enum)

    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "unknown"
    return None, -code, f"{prefix}killed by signal {-code} ({name})"
