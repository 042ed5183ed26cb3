"""What the local backend may hand out (cores, GPUs), and what an earlier driver left running."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import Sequence

import anyio

from matensemble.errors import BackendError, BackendUnavailable
from matensemble.limits import MAX_GPUS_PER_NODE

__all__ = [
    "CAN_PIN",
    "check_platform",
    "detect_gpus",
    "find_run_processes",
    "kill_group",
    "kill_leftovers",
    "select_cores",
    "select_gpus",
]

GPU_VARIABLES = ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "HIP_VISIBLE_DEVICES")
CAN_PIN = hasattr(os, "sched_setaffinity")


def check_platform(cores: Sequence[int]) -> None:
    """What the local backend needs of this system, checked at ``open()``.

    Raises:
        BackendUnavailable: no ``os.pidfd_open`` (Linux before 5.3).
        BackendError: ``cores`` holds cores this thread (the event loop's) may not run on.
    """
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as exc:
        raise BackendUnavailable(
            f"LocalBackend needs os.pidfd_open (Linux >= 5.3): {exc}"
        ) from None
    if CAN_PIN:
        outside = sorted(set(cores) - os.sched_getaffinity(0))
        if outside:
            raise BackendError(f"the event loop thread may not run on cores {outside}")


def select_cores(cores: int | Sequence[int] | None) -> list[int]:
    """Core ids from ``LocalBackend(cores=...)``, checked against the affinity mask."""
    available = sorted(os.sched_getaffinity(0)) if CAN_PIN else list(range(os.cpu_count() or 1))
    if cores is None:
        return available
    if isinstance(cores, bool):
        raise TypeError("cores must be a count or a sequence of core ids, not a bool")
    if isinstance(cores, int):
        if not 1 <= cores <= len(available):
            raise ValueError(f"cores={cores}, but this process may use cores {available}")
        return available[:cores]
    chosen = list(cores)
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(f"cores must be distinct core ids, got {chosen}")
    outside = sorted(set(chosen) - set(available))
    if outside:
        raise ValueError(
            f"cores {outside} are not among the cores this process may use: {available}"
        )
    return chosen


def select_gpus(gpus: int | Sequence[str] | None) -> tuple[str, ...] | None:
    """GPU ids from ``LocalBackend(gpus=...)``; ``None`` means detect them."""
    if gpus is None:
        return None
    if isinstance(gpus, bool | str):
        raise TypeError(f"gpus must be a count or a sequence of id strings, got {gpus!r}")
    if isinstance(gpus, int):
        if gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {gpus}")
        MAX_GPUS_PER_NODE.check(gpus, "gpus")  # before making one id string per GPU
        return tuple(str(i) for i in range(gpus))
    chosen = tuple(gpus)
    MAX_GPUS_PER_NODE.check(len(chosen), "the number of gpus")
    if len(set(chosen)) != len(chosen) or any(not g or "," in g for g in chosen):
        raise ValueError(f"gpus must be distinct non-empty ids without commas, got {chosen}")
    return chosen


async def detect_gpus(given: tuple[str, ...] | None) -> tuple[tuple[str, ...], str | None]:
    """The GPU ids to hand out, and the variable they were found in (if one)."""
    if given is not None:
        return given, None
    for variable in GPU_VARIABLES:
        value = os.environ.get(variable)
        if value is not None:
            return tuple(g.strip() for g in value.split(",") if g.strip()), variable
    nvidia_smi = shutil.which("nvidia-smi")
    if nvidia_smi is None:
        return (), None
    with anyio.move_on_after(30):  # a wedged driver must not hang the start of a run
        try:
            result = await anyio.run_process([nvidia_smi, "-L"], check=False)
        except OSError:
            return (), None
        count = sum(1 for line in result.stdout.splitlines() if line.startswith(b"GPU "))
        return tuple(str(i) for i in range(count)), None
    return (), None


def find_run_processes(run_id: str) -> list[int]:
    """Pids of this user's processes whose environment says they belong to run ``run_id``."""
    marker = f"MATENSEMBLE_RUN_ID={run_id}".encode()
    me = os.getpid()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as f:
                env = f.read()
        except OSError:  # gone, or not ours
            continue
        if marker in env.split(b"\0"):
            found.append(int(entry.name))
    return found


async def kill_leftovers(run_id: str, *, within: float) -> None:
    """SIGKILL the process groups of what ``find_run_processes`` finds, then wait (on pidfds,
    for at most ``within`` seconds) until they are gone."""
    leftovers = find_run_processes(run_id)
    for pid in leftovers:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGKILL)
    with anyio.move_on_after(within):
        await _wait_gone(leftovers)


async def _wait_gone(pids: Sequence[int]) -> None:
    """Wait until each process has exited (pidfd readable), without polling."""
    loop = asyncio.get_running_loop()
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue  # already gone
        gone: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _settle, gone)
        try:
            await gone
        finally:
            loop.remove_reader(fd)
            os.close(fd)


def _settle(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def kill_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    """Signal a task's process group; a group already gone (or no longer ours) is left be."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
