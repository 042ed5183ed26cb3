"""The files of a Python call in its task directory, written atomically and read back safely.

``<run-dir>/tasks/<id>/``
  ``call.json``       what to run: the function's name, formats, the driver's ``sys.path[0]``,
                      the calls whose values the arguments hold, and the call's fingerprint
  ``function.pkl``    the function by value (only for ``__main__``, closures, ...)
  ``args.json|pkl``   ``[args, kwargs]``
  ``result.json|pkl`` the return value (rank 0's for an MPI call), written and synced before the
                      worker exits (not synced in a run made with ``Ensemble(durable=False)``)
  ``error.json``      the exception of a call that raised: type, message, traceback, rank

Every file is written to a temporary name, synced and renamed, so a reader sees all or nothing.
A reader takes a file only from the run directory's own ``tasks/<id>/`` with no symbolic link
on the way, so a task id (or a planted link) can never make the driver unpickle a foreign file.
"""

from __future__ import annotations

import os
import stat

from matensemble.functions.serialisation import decode, dump_json, load_json

TYPE_CHECKING = False  # not from typing: the worker starts faster without importing it
if TYPE_CHECKING:
    from typing import Any

    from matensemble.errors import ResultUnavailable
    from matensemble.functions.serialisation import Format


__all__ = [
    "CALL_FILE",
    "ERROR_FILE",
    "FUNCTION_FILE",
    "CallSpec",
    "RemoteError",
    "args_file",
    "read_call",
    "read_error",
    "read_task_file",
    "read_value",
    "write_atomically",
    "write_call",
    "write_error",
    "write_result",
]

CALL_FILE = "call.json"
FUNCTION_FILE = "function.pkl"
ERROR_FILE = "error.json"
_SUFFIX: dict[Format, str] = {"json": ".json", "pickle": ".pkl"}


def args_file(fmt: Format) -> str:
    return "args" + _SUFFIX[fmt]


def result_file(fmt: Format) -> str:
    return "result" + _SUFFIX[fmt]


_RESULT_FILES: tuple[tuple[Format, str], ...] = (
    ("json", result_file("json")),
    ("pickle", result_file("pickle")),
)


# Plain classes and ``_json`` (see ``serialisation.dump_json``), not msgspec or the json package:
# the worker imports this module, and every millisecond of its start is paid once per cold call.


class CallSpec:
    """What the worker needs to make the call (``call.json``)."""

    __slots__ = (
        "args_format",
        "by_value",
        "durable",
        "fingerprint",
        "function",
        "mpi",
        "refs",
        "sys_path",
    )

    def __init__(
        self,
        *,
        function: str,
        by_value: bool,
        args_format: Format,
        fingerprint: str,
        refs: tuple[str, ...] = (),
        sys_path: tuple[str, ...] = (),
        mpi: bool = False,
        durable: bool = True,
    ) -> None:
        self.function = function
        self.by_value = by_value
        self.args_format: Format = args_format
        self.fingerprint = fingerprint
        self.refs = tuple(refs)
        self.sys_path = tuple(sys_path)
        self.mpi = mpi
        self.durable = durable  # sync the result before exiting (``Ensemble(durable=...)``)

    def encode(self) -> bytes:
        return dump_json({k: getattr(self, k) for k in self.__slots__})

    @classmethod
    def decode(cls, data: bytes) -> CallSpec:
        fields = _object(data, "call")
        if fields.get("args_format") not in ("json", "pickle"):
            raise ValueError(f"call file: unknown args_format {fields.get('args_format')!r}")
        return cls(**{k: fields[k] for k in cls.__slots__ if k in fields})


class RemoteError:
    """An exception raised in the worker (``error.json``)."""

    __slots__ = ("attempt", "message", "rank", "traceback", "type")

    def __init__(
        self, *, type: str, message: str, traceback: str, rank: int = 0, attempt: int = 0
    ) -> None:
        self.type = type
        self.message = message
        self.traceback = traceback
        self.rank = rank
        self.attempt = attempt

    def encode(self) -> bytes:
        return dump_json({k: getattr(self, k) for k in self.__slots__})

    @classmethod
    def decode(cls, data: bytes) -> RemoteError:
        fields = _object(data, "error")
        return cls(**{k: fields[k] for k in cls.__slots__ if k in fields})


def _object(data: bytes, what: str) -> dict[str, Any]:
    fields = load_json(data)
    if not isinstance(fields, dict):
        raise ValueError(f"{what} file: expected a JSON object")
    return fields


def write_atomically(path: str | os.PathLike[str], data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    With ``durable`` the new file survives a crash of the machine once this returns (a call's
    result, before the worker reports success). A call's inputs are written without the syncs:
    a killed driver loses nothing the OS holds, and they are cheap to write again.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if not durable:
        return
    dir_fd = os.open(folder or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def read_task_file(run_dir: str | os.PathLike[str], task_id: str, name: str) -> bytes | None:
    """The bytes of ``<run_dir>/tasks/<task_id>/<name>``, or ``None`` if there is no such file.

    The task directory and the file are opened relative to the open ``tasks`` folder with
    ``O_NOFOLLOW``: three ``open`` calls, no path resolution (a worker reads two files per call,
    and resolving paths with ``realpath`` cost most of a warm call's time).

    Raises:
        ResultUnavailable: the id is not a valid task id, the task directory is a link or not a
            directory, or the file is a link or not a regular file.
    """
    if not task_id or task_id in (".", "..") or "/" in task_id or "\0" in task_id:
        raise _unavailable(f"refusing to read a result for {task_id!r}: not a task id")
    tasks = os.path.join(run_dir, "tasks")
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(tasks, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except FileNotFoundError:
            return None
        try:
            fds.append(os.open(task_id, flags | os.O_DIRECTORY, dir_fd=fds[0]))
        except FileNotFoundError:
            return None
        except OSError:
            task_dir = os.path.join(tasks, task_id)
            raise _unavailable(
                f"refusing to read {name} of task {task_id!r}: {task_dir} is a link or not a "
                f"directory (results are read only from the run directory {run_dir} itself)"
            ) from None
        path = os.path.join(tasks, task_id, name)
        try:
            fds.append(os.open(name, flags, dir_fd=fds[1]))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise _unavailable(
                f"refusing to read {path}: {exc.strerror} (a link? results are read only from "
                f"files in the run directory {run_dir} itself)"
            ) from None
        if not stat.S_ISREG(os.fstat(fds[2]).st_mode):
            raise _unavailable(f"refusing to read {path}: not a regular file")
        with os.fdopen(fds[2], "rb", closefd=False) as file:
            return file.read()
    finally:
        for fd in fds:
            os.close(fd)


def write_call(
    task_dir: str | os.PathLike[str], spec: CallSpec, arguments: bytes, function: bytes | None
) -> None:
    """Write a call's files (the driver, before it submits the call's task). ``call.json`` comes
    last, so that whoever finds it finds the rest. Not synced: they are cheap to write again."""
    if function is not None:
        write_atomically(os.path.join(task_dir, FUNCTION_FILE), function, durable=False)
    write_atomically(os.path.join(task_dir, args_file(spec.args_format)), arguments, durable=False)
    write_atomically(os.path.join(task_dir, CALL_FILE), spec.encode(), durable=False)


def read_call(run_dir: str | os.PathLike[str], task_id: str) -> CallSpec | None:
    """The ``call.json`` of a task, or ``None`` if it has none (it is not a Python call)."""
    data = read_task_file(run_dir, task_id, CALL_FILE)
    return None if data is None else CallSpec.decode(data)


def read_error(run_dir: str | os.PathLike[str], task_id: str) -> RemoteError | None:
    """The exception a call raised (``error.json``), or ``None``."""
    data = read_task_file(run_dir, task_id, ERROR_FILE)
    return None if data is None else RemoteError.decode(data)


def write_error(task_dir: str, error: RemoteError) -> None:
    """Write the exception a call raised (the worker, before it exits with 1)."""
    write_atomically(os.path.join(task_dir, ERROR_FILE), error.encode())


def read_value(run_dir: str | os.PathLike[str], task_id: str) -> tuple[bool, Any]:
    """``(True, value)`` of a finished call's result file, ``(False, None)`` if there is none."""
    for fmt, name in _RESULT_FILES:
        data = read_task_file(run_dir, task_id, name)
        if data is not None:
            return True, decode(fmt, data)
    return False, None


def write_result(task_dir: str, fmt: Format, data: bytes, *, durable: bool) -> None:
    """Write a call's result (the worker), and remove one of the other format that an earlier
    attempt left (a retry may return another kind of value)."""
    for other_fmt, name in _RESULT_FILES:
        if other_fmt != fmt:
            stale = os.path.join(task_dir, name)
            if os.path.lexists(stale):  # (not contextlib: it costs the worker's start)
                os.unlink(stale)
    write_atomically(os.path.join(task_dir, result_file(fmt)), data, durable=durable)


def _unavailable(message: str) -> ResultUnavailable:
    from matensemble.errors import ResultUnavailable  # only on this path: a worker starts faster

    return ResultUnavailable(message)
