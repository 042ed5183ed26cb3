"""Flux backend throughput and latency, side by side with the raw ways to run the same jobs.

Run it inside a Flux instance (every figure comes from the same instance, in one run):

    flux start --test-size=2 .venv/bin/python benchmarks/flux_throughput.py

(if ``import flux`` fails, put flux-core's Python directory on PYTHONPATH, see docs/flux.md).

Figures, all with ``true`` jobs:

1. N jobs through ``FluxBackend`` via ``Ensemble``: the engine launches only what fits the
   cores, so at most (cores) jobs are in Flux at once;
2. N jobs through ``FluxBackend`` alone, all launched at once (Flux queues them);
3. ``flux submit --cc=1-N --wait true``;
4. a plain loop: ``flux.job.submit_async`` for all, then ``result_async`` for each;
5. the same jobs watched three ways on the plain Flux reactor (journal / per-job eventlog /
   ``result_async``), to show which costs least;
6. ``FluxExecutor`` + ``asyncio.wrap_future``;
7. latency of one job end to end: backend (alone and via Ensemble), raw in-process submit +
   result, and ``flux run true``;
8. --big jobs via Ensemble: throughput per window of 1,000 and the driver's RSS.

Inactive jobs are purged between sections so that each starts from the same instance state.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from matensemble import Ensemble, Task
from matensemble.backends.base import Launch, Outcome
from matensemble.backends.flux import FluxBackend
from matensemble.model import Event, Slot, TaskFinished
from matensemble.observer import Observer

try:
    import flux
    import flux.constants
    import flux.job
except ImportError as exc:  # pragma: no cover - a usage error
    sys.exit(f"cannot import flux ({exc}); see docs/flux.md for PYTHONPATH")

FLUX = shutil.which("flux") or "flux"
RESULTS: list[tuple[str, float, str]] = []


def cpu_seconds() -> float:
    """CPU time of this process and of the children it has waited for (``flux submit``)."""
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime


def report(name: str, seconds: float, n: int, note: str = "", cpu: float | None = None) -> float:
    rate = n / seconds
    RESULTS.append((name, rate, note))
    per_job = f"driver CPU {cpu / n * 1000:5.2f} ms/job" if cpu is not None else ""
    print(f"{name:<54} {n:>6} jobs {seconds:7.2f} s {rate:7.1f} jobs/s  {per_job}  {note}")
    sys.stdout.flush()
    return rate


def purge() -> None:
    subprocess.run([FLUX, "job", "purge", "-f", "--num-limit=0"], capture_output=True, check=False)


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def true_jobspec() -> str:
    spec = flux.job.JobspecV1.from_command(["true"])
    spec.cwd = tempfile.gettempdir()
    spec.environment = dict(os.environ)
    return str(spec.dumps())


# -- through the backend ------------------------------------------------------------------------


async def via_ensemble(n: int, run_dir: Path) -> float:
    tasks = [Task(id=f"t{i}", command=("true",)) for i in range(n)]
    t0 = time.perf_counter()
    summary = await Ensemble(tasks, backend=FluxBackend(), run_dir=run_dir).run()
    elapsed = time.perf_counter() - t0
    assert summary.counts["succeeded"] == n, summary.counts
    return elapsed


async def backend_alone(n: int, run_dir: Path) -> float:
    """Launch all N at once, round-robin over the ranks, and wait for every outcome."""
    done = asyncio.Event()
    outcomes: list[Outcome] = []

    def sink(outcome: Outcome) -> None:
        outcomes.append(outcome)
        if len(outcomes) == n:
            done.set()

    backend = FluxBackend()
    nodes = await backend.open(sink, anyio.create_task_group())
    t0 = time.perf_counter()
    for i in range(n):
        node = nodes[i % len(nodes)]
        backend.launch(
            Launch(
                task=Task(id=f"a{i}", command=("true",)),
                attempt=1,
                placement=(Slot(node.name, node.cores[:1]),),
                task_dir=run_dir / f"a{i}",
                run_id="bench",
            )
        )
    await done.wait()
    elapsed = time.perf_counter() - t0
    await backend.close()
    assert all(o.state.value == "succeeded" for o in outcomes)
    return elapsed


# -- the raw ways -------------------------------------------------------------------------------


def flux_submit_cc(n: int) -> float:
    t0 = time.perf_counter()
    subprocess.run([FLUX, "submit", f"--cc=1-{n}", "--wait", "--quiet", "true"], check=True)
    return time.perf_counter() - t0


def raw_submit_then_results(n: int) -> float:
    h = flux.Flux()
    spec = true_jobspec()
    t0 = time.perf_counter()
    futures = [flux.job.submit_async(h, spec) for _ in range(n)]
    ids = [f.get_id() for f in futures]
    results = [flux.job.result_async(h, jobid) for jobid in ids]
    for f in results:
        f.get_dict()
    return time.perf_counter() - t0


def raw_watch(n: int, how: str) -> float:
    """Submit N with callbacks and watch them on the plain reactor, one of three ways."""
    h = flux.Flux()
    spec = true_jobspec()
    left = [n]
    ours: set[int] = set()

    def finished() -> None:
        left[0] -= 1
        if left[0] == 0:
            h.reactor_stop()

    def on_result(f: Any) -> None:
        f.get_dict()
        finished()

    def on_event(f: Any) -> None:
        event = f.get_event()
        if event is None or event.name == "clean":
            finished()
            f.cancel(stop=True)

    def on_submitted(f: Any) -> None:
        jobid = f.get_id()
        ours.add(int(jobid))
        if how == "result_async":
            flux.job.result_async(h, jobid).then(on_result)
        elif how == "eventlog":
            flux.job.event_watch_async(h, jobid).then(on_event)

    def on_journal(f: Any) -> None:
        payload = f.get()
        f.reset()
        if payload["id"] in ours and any(e["name"] == "clean" for e in payload["events"]):
            finished()

    journal = None
    if how == "journal":
        journal = h.rpc(
            "job-manager.events-journal",
            {"full": False, "allow": {"clean": 1}},
            flags=flux.constants.FLUX_RPC_STREAMING,
        )
        journal.then(on_journal)
    t0 = time.perf_counter()
    for _ in range(n):
        flux.job.submit_async(h, spec).then(on_submitted)
    h.reactor_run()
    return time.perf_counter() - t0


async def executor_wrap_future(n: int) -> float:
    spec = flux.job.JobspecV1.from_command(["true"])
    spec.cwd = tempfile.gettempdir()
    spec.environment = dict(os.environ)
    with flux.job.FluxExecutor() as executor:
        t0 = time.perf_counter()
        futures = [asyncio.wrap_future(executor.submit(spec)) for _ in range(n)]
        codes = await asyncio.gather(*futures)
        elapsed = time.perf_counter() - t0
    assert set(codes) == {0}
    return elapsed


# -- latency ------------------------------------------------------------------------------------


async def latency_backend(reps: int, run_dir: Path) -> list[float]:
    arrived: asyncio.Queue[Outcome] = asyncio.Queue()
    backend = FluxBackend()
    nodes = await backend.open(arrived.put_nowait, anyio.create_task_group())
    times = []
    for i in range(reps):
        t0 = time.perf_counter()
        backend.launch(
            Launch(
                task=Task(id=f"l{i}", command=("true",)),
                attempt=1,
                placement=(Slot(nodes[0].name, nodes[0].cores[:1]),),
                task_dir=run_dir / f"l{i}",
                run_id="bench",
            )
        )
        await arrived.get()
        times.append(time.perf_counter() - t0)
    await backend.close()
    return times


async def latency_ensemble(reps: int, run_dir: Path) -> list[float]:
    times = []
    async with Ensemble(backend=FluxBackend(), run_dir=run_dir) as ens:
        for i in range(reps):
            t0 = time.perf_counter()
            ens.submit(Task(id=f"e{i}", command=("true",)))
            async for _ in ens.completed():
                pass
            times.append(time.perf_counter() - t0)
    return times


def latency_raw(reps: int) -> list[float]:
    h = flux.Flux()
    spec = true_jobspec()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jobid = flux.job.submit(h, spec)
        flux.job.result(h, jobid)
        times.append(time.perf_counter() - t0)
    return times


def latency_flux_run(reps: int) -> list[float]:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        subprocess.run([FLUX, "run", "true"], check=True)
        times.append(time.perf_counter() - t0)
    return times


def show_latency(name: str, times: list[float]) -> None:
    ms = sorted(t * 1000 for t in times)
    print(
        f"{name:<58} median {statistics.median(ms):7.1f} ms  min {ms[0]:7.1f}  max {ms[-1]:7.1f}",
        flush=True,
    )


# -- at scale -----------------------------------------------------------------------------------


def broker_pids() -> list[int]:
    """The brokers of this instance: the rank 0 broker runs us; its parent started them all."""
    rank0 = os.getppid()
    try:
        start = int(Path(f"/proc/{rank0}/stat").read_text().rsplit(")", 1)[1].split()[1])
        found = set()
        for task in Path(f"/proc/{start}/task").iterdir():
            found.update(int(p) for p in (task / "children").read_text().split())
        return sorted(found) or [rank0]
    except (OSError, ValueError, IndexError):
        return [rank0]


def flux_cpu_seconds(pids: list[int]) -> float:
    """CPU of the brokers and of the job shells they have reaped (utime+stime+cutime+cstime)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(f) for f in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class Windows(Observer):
    """Per window of ``size`` finished tasks: throughput, CPU per job (driver, Flux), RSS."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.count = 0
        self.brokers = broker_pids()
        self.mark = self._sample()
        self.rows: list[tuple[int, float, float, float, float]] = []

    def _sample(self) -> tuple[float, float, float]:
        return time.perf_counter(), time.process_time(), flux_cpu_seconds(self.brokers)

    def on_event(self, event: Event) -> None:
        if isinstance(event, TaskFinished) and event.retry_in is None:
            self.count += 1
            if self.count % self.size == 0:
                now = self._sample()
                wall, driver, fluxcpu = (b - a for a, b in zip(self.mark, now, strict=True))
                per = 1000 / self.size
                self.rows.append(
                    (self.count, self.size / wall, driver * per, fluxcpu * per, rss_mib())
                )
                self.mark = now


async def at_scale(n: int, run_dir: Path) -> None:
    windows = Windows(1000)
    tasks = [Task(id=f"b{i}", command=("true",)) for i in range(n)]
    before = rss_mib()
    cpu = time.process_time()
    t0 = time.perf_counter()
    summary = await Ensemble(
        tasks, backend=FluxBackend(), run_dir=run_dir, observers=[windows]
    ).run()
    elapsed = time.perf_counter() - t0
    assert summary.counts["succeeded"] == n, summary.counts
    report(f"FluxBackend via Ensemble, {n} jobs", elapsed, n, cpu=time.process_time() - cpu)
    print(f"    driver RSS before {before:.1f} MiB; brokers {windows.brokers}", flush=True)
    for count, rate, driver, fluxcpu, rss in windows.rows:
        print(
            f"    tasks {count - 999:>6}-{count:<6} {rate:7.1f} jobs/s  CPU per job: driver "
            f"{driver:5.2f} ms, Flux {fluxcpu:6.2f} ms  driver RSS {rss:6.1f} MiB"
        )


# -- main ---------------------------------------------------------------------------------------


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--big", type=int, default=10_000, help="0 to skip")
    parser.add_argument("--reps", type=int, default=20, help="latency repetitions")
    parser.add_argument("--only-big", action="store_true", help="only the --big section")
    args = parser.parse_args()
    n = args.tasks

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        if args.only_big:
            await at_scale(args.big, base / "b")
            return
        sections: list[tuple[str, Callable[[], Any], str]] = [
            (
                "FluxBackend via Ensemble (only what fits is in Flux)",
                lambda: via_ensemble(n, base / "e"),
                "",
            ),
            ("FluxBackend alone (all launched at once)", lambda: backend_alone(n, base / "a"), ""),
            (f"flux submit --cc=1-{n} --wait true", lambda: flux_submit_cc(n), ""),
            (
                "raw loop: submit_async all, then result_async each",
                lambda: raw_submit_then_results(n),
                "",
            ),
            (
                "raw reactor: submit_async + journal (1 RPC for all)",
                lambda: raw_watch(n, "journal"),
                "",
            ),
            (
                "raw reactor: submit_async + event_watch_async each",
                lambda: raw_watch(n, "eventlog"),
                "",
            ),
            (
                "raw reactor: submit_async + result_async each",
                lambda: raw_watch(n, "result_async"),
                "",
            ),
            (
                "FluxExecutor + asyncio.wrap_future",
                lambda: executor_wrap_future(n),
                "0.1 s poll timer",
            ),
        ]
        for name, fn, note in sections:
            purge()
            cpu = cpu_seconds()
            result = fn()
            seconds = await result if asyncio.iscoroutine(result) else result
            report(name, seconds, n, note, cpu_seconds() - cpu)
        best_raw = max(rate for name, rate, _ in RESULTS[2:7])
        print(
            f"\nratio to the best raw method: via Ensemble {RESULTS[0][1] / best_raw:.2f}, "
            f"backend alone {RESULTS[1][1] / best_raw:.2f}\n",
            flush=True,
        )

        purge()
        show_latency(
            "latency: FluxBackend alone, launch -> outcome",
            await latency_backend(args.reps, base / "l"),
        )
        show_latency(
            "latency: Ensemble + FluxBackend, submit -> result",
            await latency_ensemble(args.reps, base / "m"),
        )
        show_latency("latency: raw flux.job.submit + flux.job.result", latency_raw(args.reps))
        show_latency(
            "latency: `flux run true` (a new process each time)", latency_flux_run(args.reps)
        )

        if args.big:
            print()
            purge()
            await at_scale(args.big, base / "b")


def describe_instance() -> None:
    subprocess.run([FLUX, "version"], check=False)
    subprocess.run([FLUX, "resource", "list"], check=False)
    print(f"driver: {sys.executable}, {os.cpu_count()} CPUs on this machine\n", flush=True)


if __name__ == "__main__":
    describe_instance()
    asyncio.run(main())
