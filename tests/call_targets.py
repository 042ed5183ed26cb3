"""Functions the Python-call tests run in workers (importable, so they travel by reference)."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any


@dataclasses.dataclass(frozen=True)
class Point:
    x: float
    label: Any


def add(a: Any, b: Any = 0) -> Any:
    return a + b


def total(values: Any) -> float:
    return float(sum(values))


def echo(value: Any) -> Any:
    return value


def fail(message: str) -> None:
    raise ValueError(message)


def sleep(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def environment() -> dict[str, Any]:
    return {"PYTHONPATH": os.environ.get("PYTHONPATH"), "sys_path": sys.path, "cwd": os.getcwd()}


def a_lock() -> Any:
    import threading

    return {"ok": 1, "lock": threading.Lock()}


def count_and_return(counter: str, value: Any) -> Any:
    """Append a line to ``counter`` (a side file counting executions), return ``value``."""
    with open(counter, "a") as file:
        file.write(f"{value}\n")
    return value


def mpi_rank_value() -> dict[str, int]:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    total = comm.allreduce(comm.Get_rank() + 1)
    return {"rank": comm.Get_rank(), "size": comm.Get_size(), "sum": total}


def mpi_fail_on_rank_one() -> int:
    from mpi4py import MPI

    comm = MPI.COMM_WORLD
    if comm.Get_rank() == 1:
        raise RuntimeError("rank one gives up")
    comm.Barrier()  # rank 0 would wait here forever if the job were not aborted
    return 0


def wait_unless(flag: str, counter: str) -> str:
    """Count the execution; return at once if ``flag`` exists, else sleep (to be killed)."""
    with open(counter, "a") as file:
        file.write("slow\n")
    if not os.path.exists(flag):
        time.sleep(120)
    return "slow done"


def process_and_cores() -> tuple[int, list[int]]:
    print("hello from the call")
    return os.getpid(), sorted(os.sched_getaffinity(0))


def exit_hard(code: int) -> None:
    os._exit(code)


_HOARD: list[bytes] = []


def hoard(megabytes: int) -> int:
    _HOARD.append(b"x" * (megabytes * 2**20))
    return os.getpid()


def node_value(index: int, upstream: list[int], fails: bool) -> int:
    """A node of a random graph: its index plus its upstream calls' values, or an error."""
    if fails:
        raise RuntimeError(f"node {index} fails")
    return index + sum(upstream)


def visible_gpus() -> str | None:
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def make_adder(n: int) -> Any:
    """A closure: the standard pickler cannot carry it back, cloudpickle can."""

    def adder(x: int) -> int:
        return x + n

    return adder
