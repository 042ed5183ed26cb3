"""What the local backend starts for a launch, and how it words a launch that did not start.

``LaunchPlanner.plan`` turns a launch into processes: argv, the executable (looked up once per
program name and ``PATH`` for the run), the environment (the driver's, encoded once, with the
task's variables, rank and GPU ids over it) and the cores of each copy. The rest words
failures: an output file that cannot be opened, a process that cannot start, an exit status.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys

from matensemble.backends.base import Launch, task_variables
from matensemble.backends.task_files import open_task_outputs
from matensemble.errors import UnsafeTaskPath

__all__ = [
    "Exit",
    "LaunchError",
    "LaunchPlanner",
    "Process",
    "describe_exit",
    "describe_spawn_error",
    "open_outputs",
]

Exit = tuple[int | None, int | None, str]  # returncode, signal, reason
# argv, executable, environment (encoded, as exec takes it), cores
Process = tuple[list[str], str | None, dict[bytes, bytes], list[int]]


class LaunchError(Exception):
    """A per-task problem found before any process started; the message is the reason."""


class LaunchPlanner:
    """Plans launches on this node: its GPU ids, the variable that hands them out, and the
    ``mpiexec`` for MPI tasks; the driver's environment is taken when it is made."""

    def __init__(self, gpus: tuple[str, ...], gpu_variable: str, mpiexec: str | None) -> None:
        self.gpus = gpus
        self.gpu_variable = gpu_variable
        self.mpiexec = mpiexec
        self._base_env = dict(os.environ)
        self._base_env_bytes = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
        self._driver_path = os.environ.get("PATH", os.defpath)
        self._executables: dict[tuple[str, str], str] = {}  # (program, PATH) -> its file

    def plan(self, launch: Launch) -> list[Process]:
        """argv, executable, environment and cores of each process to start.

        Without ``PATH`` in the task's environment (``inherit_env=False``), ``command[0]`` is
        looked up on the driver's ``PATH`` as it was at ``open()``, so ``["env"]`` still runs.
        """
        task, res = launch.task, launch.task.resources
        cores = [c for slot in launch.placement for c in slot.cores]
        gpus = [g for slot in launch.placement for g in slot.gpus]
        copies = 1 if res.mpi else res.ranks
        argv = list(task.command)
        # The program is looked up once per (name, PATH) here, not in every child: exec'ing
        # each PATH entry in turn costs the driver an encoded path per entry and a failed exec
        # each (the driver waits for the child's exec under vfork).
        path = task.env.get("PATH") or (self._base_env.get("PATH") if task.inherit_env else None)
        if res.mpi and self.mpiexec is None:
            raise LaunchError(
                f"mpi task, but no mpiexec was found on PATH or next to {sys.executable}; "
                "install an MPI (e.g. the mpich wheel) or pass LocalBackend(mpiexec=...)"
            )
        executable = self.resolve(argv[0], path)
        if res.mpi:
            assert self.mpiexec is not None
            # mpiexec would only say "exited with code 255"; name the missing program instead.
            program = executable or self.resolve_now(argv[0], path)
            argv = [self.mpiexec, "-n", str(res.ranks), program, *argv[1:]]
            executable = None
        variables = task_variables(launch)
        # With GPUs to hand out, every task gets the variable (empty: none for it); without,
        # a value inherited from the driver must not leak through either.
        hand_out_gpus = (
            bool(self.gpus or gpus)
            or self.gpu_variable in variables
            or (task.inherit_env and self.gpu_variable in self._base_env)
        )
        base = self._base_env_bytes if task.inherit_env else {}
        common = base | {os.fsencode(k): os.fsencode(v) for k, v in variables.items()}
        gpu_key = os.fsencode(self.gpu_variable)
        if copies == 1:
            if hand_out_gpus:
                common[gpu_key] = ",".join(gpus).encode()
            if not res.mpi:
                common[b"MATENSEMBLE_RANK"], common[b"MATENSEMBLE_NRANKS"] = b"0", b"1"
            return [(argv, executable, common, cores)]
        plan: list[Process] = []
        nc, ng = len(cores) // copies, len(gpus) // copies
        for rank in range(copies):
            env = common.copy()
            env[b"MATENSEMBLE_RANK"] = str(rank).encode()
            env[b"MATENSEMBLE_NRANKS"] = str(copies).encode()
            if hand_out_gpus:
                env[gpu_key] = ",".join(gpus[rank * ng : (rank + 1) * ng]).encode()
            plan.append((argv, executable, env, cores[rank * nc : (rank + 1) * nc]))
        return plan

    def resolve(self, program: str, path: str | None) -> str | None:
        """``program``'s file on ``path`` (the driver's ``PATH`` at ``open()`` when ``None``),
        remembered for the run; ``None`` where only the child can resolve it (a relative
        ``PATH`` entry is relative to the task's working directory)."""
        if os.sep in program:
            return program
        search = path or self._driver_path
        if path is not None and not all(os.path.isabs(d) for d in search.split(os.pathsep)):
            return None
        key = (program, search)
        found = self._executables.get(key)
        if found is None:
            found = self._executables[key] = self.resolve_now(program, search)
        return found

    def resolve_now(self, program: str, path: str | None) -> str:
        if os.sep in program:
            return program
        found = shutil.which(program, path=path or self._driver_path)
        if found is None:
            raise LaunchError(f"executable not found: {program!r}")
        return found


def open_outputs(launch: Launch) -> tuple[int, int]:
    """Open stdout and stderr for appending, creating the task directory if it is missing,
    without following links (see ``task_files``)."""
    try:
        return open_task_outputs(launch.task_dir)
    except UnsafeTaskPath as exc:
        raise LaunchError(str(exc)) from None
    except OSError as exc:
        where = exc.filename if exc.filename is not None else launch.task_dir
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
            search = os.fsdecode(env.get(b"PATH", os.defpath.encode()))
            target = shutil.which(target, path=search) or ""
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
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "unknown"
    return None, -code, f"{prefix}killed by signal {-code} ({name})"
