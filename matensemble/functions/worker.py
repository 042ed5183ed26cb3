"""The worker: runs one Python call inside the process a backend launched.

``python -m matensemble.worker <task-dir>`` reads ``call.json``, puts the driver's
``sys.path[0]`` on the path (the user's ``PYTHONPATH`` arrives through the environment),
loads the function and the arguments (replacing each reference to another call by that call's
value, read from the run directory), calls it, and writes ``result.*`` or ``error.json``
atomically before exiting: 0 for a value, 1 for an exception.

Under MPI (``Resources(mpi=True)``) every rank runs the function; rank 0 writes the result.
A rank that raises writes its traceback and aborts the job, so that no rank waits forever in a
collective for a rank that is gone.
"""

from __future__ import annotations

import os
import sys

from matensemble.functions.files import (
    FUNCTION_FILE,
    CallSpec,
    RemoteError,
    args_file,
    read_call,
    read_task_file,
    read_value,
    write_error,
    write_result,
)
from matensemble.functions.serialisation import (
    decode,
    encode_value,
    load_json,
    load_pickle,
    resolve_function,
    unpicklable_path,
)

TYPE_CHECKING = False  # not from typing: every millisecond of a worker's start counts
if TYPE_CHECKING:
    from typing import Any

__all__ = ["WORKER_ARGV", "main", "run"]

# How a backend starts a call: ``python -c`` with ``run()`` rather than ``python -m
# matensemble.worker``, which imports ``runpy`` (and ``importlib.util``, ``contextlib``) first:
# about 3 ms of a cold call that a bare ``python -c pass`` does not pay.
WORKER_ARGV = ("-c", "from matensemble.functions.worker import run; run()")


class _Call:
    def __init__(self, task_dir: str, inline: str | None = None) -> None:
        self.task_dir = task_dir
        self.run_dir = os.path.dirname(os.path.dirname(task_dir))
        self.task_id = os.path.basename(task_dir)
        self.inline: dict[str, Any] | None = None
        if inline is not None:  # a call from an ensemble file (file_calls): all in the command
            self.inline = load_json(inline)
            assert isinstance(self.inline, dict)
            self.spec = CallSpec(
                function=self.inline["function"],
                by_value=False,
                args_format="json",
                fingerprint="",
                sys_path=tuple(self.inline.get("sys_path", ())),
                mpi=bool(self.inline.get("mpi", False)),
            )
        else:
            spec = read_call(self.run_dir, self.task_id)
            if spec is None:
                raise FileNotFoundError(f"no call.json in {task_dir}")
            self.spec = spec
        self._values: dict[str, Any] = {}

    def upstream(self, task_id: str) -> Any:
        if task_id not in self._values:
            found, value = read_value(self.run_dir, task_id)
            if not found:
                raise RuntimeError(
                    f"task {self.task_id!r}: the result of {task_id!r}, an argument, is missing"
                )
            self._values[task_id] = value
        return self._values[task_id]

    def function(self) -> Any:
        if not self.spec.by_value:
            return resolve_function(self.spec.function)
        data = read_task_file(self.run_dir, self.task_id, FUNCTION_FILE)
        if data is None:
            raise FileNotFoundError(f"no {FUNCTION_FILE} in {self.task_dir}")
        return load_pickle(data)

    def arguments(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        if self.inline is not None:
            return tuple(self.inline.get("args", ())), dict(self.inline.get("kwargs", {}))
        name = args_file(self.spec.args_format)
        data = read_task_file(self.run_dir, self.task_id, name)
        if data is None:
            raise FileNotFoundError(f"no {name} in {self.task_dir}")
        args, kwargs = decode(self.spec.args_format, data, self.upstream)
        return tuple(args), kwargs

    def write_result(self, value: Any) -> None:
        try:
            fmt, data = encode_value(value)
        except Exception as exc:
            path = unpicklable_path(value, "result")
            raise TypeError(
                f"task {self.task_id!r}: {path} cannot be serialised: {type(exc).__name__}: {exc}"
            ) from exc
        write_result(self.task_dir, fmt, data, durable=self.spec.durable)


def _name(exc: BaseException) -> str:
    kind = type(exc)
    return (
        kind.__qualname__
        if kind.__module__ == "builtins"
        else f"{kind.__module__}.{kind.__qualname__}"
    )


def run() -> None:
    """Run the call that ``sys.argv`` names and exit (the entry ``WORKER_ARGV`` starts)."""
    if sys.path and sys.path[0] == "":  # as under ``python -m``: the working directory itself
        sys.path[0] = os.getcwd()
    sys.exit(main(sys.argv[1:]))


def main(argv: list[str]) -> int:
    argv = [a for a in argv if a not in ("--warm", "--cold")]  # for the backend, not for us
    inline = None
    if len(argv) == 2 and argv[0] == "--inline" and "MATENSEMBLE_TASK_DIR" in os.environ:
        inline, task_dir = argv[1], os.environ["MATENSEMBLE_TASK_DIR"]
    elif len(argv) == 1:
        task_dir = os.path.abspath(argv[0])
    else:
        print(
            "usage: python -m matensemble.worker <task-dir>  (or --inline <call-json>, "
            "with MATENSEMBLE_TASK_DIR set)",
            file=sys.stderr,
        )
        return 2
    rank, size, comm = 0, 1, None
    try:
        call = _Call(task_dir, inline)
        for entry in reversed(call.spec.sys_path):
            if entry not in sys.path:
                sys.path.insert(0, entry)
        if call.spec.mpi:
            from mpi4py import MPI

            comm = MPI.COMM_WORLD
            rank, size = comm.Get_rank(), comm.Get_size()
        function = call.function()
        args, kwargs = call.arguments()
        value = function(*args, **kwargs)
        if rank == 0:
            call.write_result(value)
    except (Exception, SystemExit) as exc:
        import traceback  # only on the error path

        text = traceback.format_exc()
        print(text, file=sys.stderr, flush=True)
        error = RemoteError(
            type=_name(exc),
            message=str(exc),
            traceback=text,
            rank=rank,
            attempt=int(os.environ.get("MATENSEMBLE_ATTEMPT", "0") or 0),
        )
        try:
            write_error(task_dir, error)
        finally:
            if comm is not None and size > 1:
                comm.Abort(1)
        return 1
    return 0
