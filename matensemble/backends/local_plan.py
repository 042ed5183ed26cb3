"""What the local backend starts for a launch.

``LaunchPlanner.plan`` turns a launch into processes: argv, the executable (looked up once per
program name and ``PATH`` for the run), the environment (the driver's, encoded once, with the
task's variables, rank and GPU ids over it) and the cores of each copy. How a launch that did
not start is worded is ``local_failures``'.
"""

from __future__ import annotations

import os
import shutil
import sys

from matensemble.backends.base import Launch, TaskDirPaths, task_variables
from matensemble.backends.local_failures import LaunchError, Process

__all__ = ["LaunchPlanner", "find_mpiexec"]

_FS, _ESC = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def find_mpiexec(given: str | None) -> str | None:
    """The ``mpiexec`` for MPI tasks: ``given`` (a name looked up on the ``PATH``, or a path),
    else the one on the ``PATH``, else the one beside this Python (a virtual environment's)."""
    if given is not None:
        return shutil.which(given) or given
    beside_python = os.path.dirname(sys.executable)
    return shutil.which("mpiexec") or shutil.which("mpiexec", path=beside_python)


class LaunchPlanner:
    """Plans launches on this node: its GPU ids, the variable that hands them out, and the
    ``mpiexec`` for MPI tasks; the driver's environment is taken when it is made."""

    def __init__(self, gpus: tuple[str, ...], gpu_variable: str, mpiexec: str | None) -> None:
        self.gpus = gpus
        self.gpu_variable = gpu_variable
        self.mpiexec = mpiexec
        self._base_env = dict(os.environ)
        # The driver's variables, encoded: b"NAME" -> b"value".
        self._base_env_bytes = {os.fsencode(k): os.fsencode(v) for k, v in os.environ.items()}
        self._inherited: dict[frozenset[bytes], list[bytes]] = {}  # names set -> entries kept
        self._driver_path = os.environ.get("PATH", os.defpath)
        # (program, PATH) -> its file; None: looked up by the child (a relative PATH entry)
        self._executables: dict[tuple[str, str], str | None] = {}
        # The launch's task directory, absolute: its outputs, default working directory and
        # ``MATENSEMBLE_TASK_DIR``.
        self.task_dir = TaskDirPaths()

    def plan(self, launch: Launch, task_dir: str) -> list[Process]:
        """argv, executable, environment and cores of each process to start; ``task_dir``
        is ``self.task_dir(launch)``.

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
        variables = task_variables(launch, task_dir)
        # With GPUs to hand out, every task gets the variable (empty: none for it); without,
        # a value inherited from the driver must not leak through either.
        hand_out_gpus = (
            bool(self.gpus or gpus)
            or self.gpu_variable in variables
            or (task.inherit_env and self.gpu_variable in self._base_env)
        )
        # (What os.fsencode does on POSIX, without a Python-level call per string.)
        common = {k.encode(_FS, _ESC): v.encode(_FS, _ESC) for k, v in variables.items()}
        gpu_key = os.fsencode(self.gpu_variable)
        if copies == 1:
            if hand_out_gpus:
                common[gpu_key] = ",".join(gpus).encode()
            if not res.mpi:
                common[b"MATENSEMBLE_RANK"], common[b"MATENSEMBLE_NRANKS"] = b"0", b"1"
            return [(argv, executable, self._environment(common, task.inherit_env), cores)]
        plan: list[Process] = []
        nc, ng = len(cores) // copies, len(gpus) // copies
        common[b"MATENSEMBLE_NRANKS"] = str(copies).encode()
        for rank in range(copies):
            common[b"MATENSEMBLE_RANK"] = str(rank).encode()
            if hand_out_gpus:
                common[gpu_key] = ",".join(gpus[rank * ng : (rank + 1) * ng]).encode()
            env = self._environment(common, task.inherit_env)
            plan.append((argv, executable, env, cores[rank * nc : (rank + 1) * nc]))
        return plan

    def _environment(self, variables: dict[bytes, bytes], inherit: bool) -> list[bytes]:
        """``NAME=value`` entries: the driver's (if inherited) less those ``variables`` set,
        then ``variables``. The driver's part is filtered once per set of names."""
        own = [k + b"=" + v for k, v in variables.items()]
        if not inherit:
            return own
        names = frozenset(variables)
        base = self._inherited.get(names)
        if base is None:
            if len(self._inherited) >= 64:  # tasks that each set other names: keep it bounded
                self._inherited.clear()
            base = [k + b"=" + v for k, v in self._base_env_bytes.items() if k not in names]
            self._inherited[names] = base
        return base + own

    def resolve(self, program: str, path: str | None) -> str | None:
        """``program``'s file on ``path`` (the driver's ``PATH`` at ``open()`` when ``None``),
        remembered for the run; ``None`` where only the child can resolve it (a relative
        ``PATH`` entry is relative to the task's working directory)."""
        if os.sep in program:
            return program
        search = path or self._driver_path
        key = (program, search)
        try:
            return self._executables[key]
        except KeyError:
            pass
        found: str | None = None
        if path is None or all(os.path.isabs(d) for d in search.split(os.pathsep)):
            found = self.resolve_now(program, search)
        self._executables[key] = found
        return found

    def resolve_now(self, program: str, path: str | None) -> str:
        if os.sep in program:
            return program
        found = shutil.which(program, path=path or self._driver_path)
        if found is None:
            raise LaunchError(f"executable not found: {program!r}")
        return found
