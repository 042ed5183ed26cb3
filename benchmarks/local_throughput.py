"""Local backend throughput, the driver's CPU per task and slot refill latency, side by side with
the best raw methods in one run.

    python benchmarks/local_throughput.py [--tasks 2000] [--repeat 3] [--cores N] [--profile]
                                          [--baseline DIR [--baseline-case CASE]]
                                          [--tmpfs-only] [--sleep S]
                                          [--raw-only] [--no-raw-spawners]
                                          [--cores-per-helper K[,K...]]

For each repetition, alternating, it times N ``true`` commands (``sleep S`` with ``--sleep S``)
through

- ``xargs -P <cores> -I@ true`` (``seq N | xargs ...``: one command per line);
- ``threads``: a ``ThreadPoolExecutor(<cores>)`` calling ``subprocess.run(["true"])`` (fork/exec
  releases the GIL, so this is what Python itself can spawn on the machine);
- ``spawners``: one helper process per core, pinned, fed through pipes with one (then two)
  launches booked ahead beside the one it runs; each reaps its process and starts the next at
  once (``raw_spawners.py``: the upper bound of a backend that spawns outside the driver's
  interpreter); once more with each task's directory and output files made by the helper on
  tmpfs and a few variables added to its environment, as the backend does. Not counted as the
  "best" raw method, so the ratios stay those to xargs and the threads; its lines give the
  driver's and the helpers' CPU per task. The threads and the spawner runs take turns in
  going first;
- the engine: N tasks through ``Ensemble`` + ``LocalBackend(cores=<cores>)`` (each task with its
  own directory, stdout/stderr files, CPU pinning, process group, pidfd and journal), once with
  the run directory on tmpfs (/dev/shm: the engine and spawn path alone) and once on the disk
  under the current directory (adds the file system's metadata cost, unless ``--tmpfs-only``).
  On tmpfs, in turn: the default (``engine/helpers+auto``: helper processes start, wait for and
  reap the tasks, and short tasks are queued ahead, ``queue_ahead="auto"``), the helpers with
  ``queue_ahead=True`` (``+ahead``) and ``False``, and worker threads of the driver
  (``spawners="threads"``, ``engine/threads``) without and with queueing ahead; with
  ``--cores-per-helper 1,2`` the helpers' cases once per value (``engine/helpers/2``:
  ``cores_per_helper=2``).

"driver CPU/task" is the engine process's own user+system CPU (``RUSAGE_SELF``: its threads,
not its children) over the run, per task: launch, reap, journal and status; "loop" is the part
of it spent in the event loop's thread (``time.thread_time``), the rest is the spawner workers'
(task directory, output files, ``vfork``/``exec``) and the journal's sync thread. "switches/task"
counts the context switches of all the driver's threads, voluntary + involuntary (each
voluntary one is a thread going to sleep: waiting for an exit, a launch, the GIL, a
``vfork``), and of the loop thread alone. The same figures are printed for the threads'
own process ("threads' own": its pool threads' ``fork``/``exec`` and ``wait``). The "backend
alone" line drives ``LocalBackend`` directly (no engine, journal or status: one launch per
free core, as outcomes arrive), so the two lines together split that CPU between the backend
and the engine. The ratio is the engine's throughput over the best raw method's in the same
repetition. "busy" is the rate between the first task's start and the last one's end (the run
without the backend's start and end: helper processes take 0.1 s to start). Refill latency
is, per core, the time from one task's exit being seen to the next task's process existing on
that core.
"children CPU/task" is the CPU of the processes the driver reaped: the tasks, or the helpers
and the tasks they reaped, so the difference between the two is the helpers' own CPU: printed
as "helpers' own" on the helpers' lines (their children CPU less that of the threads' engine
without queueing ahead in the same repetition).
With two repetitions or more, a last table gives each engine case over them: the least, the
median and the largest of its ratio to the best raw method (and in how many it reached 0.85),
of its ratio to xargs alone, and of the driver's CPU per task.
``--raw-only`` runs the raw methods alone, ``--no-raw-spawners`` all but the raw spawners.
``--profile`` runs the default engine case under cProfile and prints the top entries.

``--baseline DIR`` (a directory holding another ``matensemble`` package, e.g. ``git archive
main matensemble | tar -x -C DIR``) compares two versions of the code on the loaded machine
this runs on: each repetition then also runs the engine on tmpfs in two fresh interpreters,
one importing this checkout's ``matensemble`` and one the baseline's, in alternating order,
and prints both lines (``engine@current``, ``engine@baseline``) with the ratio of each to the
repetition's best raw method: each version's default backend, or with ``--baseline-case
threads`` ``LocalBackend(spawners="threads", queue_ahead=False)`` (the default before
2026-11-29), with ``helpers+ahead`` ``LocalBackend(spawners="processes", queue_ahead=True)``.
Run it from a directory that holds no ``matensemble`` package (a baseline's helper processes may
import from their working directory). The load average is printed with every repetition.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import json
import os
import pstats
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio

from matensemble import Ensemble, LocalBackend, Task
from matensemble.backends.base import Launch, Outcome
from matensemble.model import Slot, TaskState

import raw_spawners

COMMAND = ["true"]  # what every task runs (``--sleep S``: ``sleep S``)
# The raw spawners' variants: launches booked ahead per helper, whether each task gets a
# directory (on tmpfs), its own output files and variables there, as in the backend, and the
# CPU seconds the driver spends on each exit before it books the next (an engine's share).
SPAWNED_BY = ("threads", "processes")  # LocalBackend(spawners=...)
# What --baseline compares: (queue_ahead, spawners) of the engine runs in fresh interpreters
# (None: the backend's default, whatever it is in the code run).
Case = tuple[bool | str | None, str | None]
CASES: dict[str, Case] = {
    "default": (None, None),
    "threads": (False, "threads"),
    "helpers+ahead": (True, "processes"),
}
# The engine cases on tmpfs (queue_ahead, spawners), in turn; the first is the default.
ENGINE_CASES: list[Case] = [
    ("auto", "processes"),
    (True, "processes"),
    (False, "processes"),
    (False, "threads"),
    (True, "threads"),
]
SPAWNERS = {
    "0 ahead, files": (0, True, 0.0),
    "1 ahead": (1, False, 0.0),
    "2 ahead": (2, False, 0.0),
    "2 ahead, files": (2, True, 0.0),
    "1 ahead, files, 100 us": (1, True, 100e-6),
    "1 ahead, files, 150 us": (1, True, 150e-6),
}


def xargs(n: int, cores: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        f"seq {n} | xargs -P {cores} -I@ {' '.join(COMMAND)}",
        shell=True,
        check=True,
        executable="/bin/sh",
    )
    return time.perf_counter() - t0


def threads(n: int, cores: int, cpu: DriverCPU | None = None) -> float:
    """Wall seconds; ``cpu`` (if given) gets the process's CPU and switches over the run (its
    "loop" is the main thread, which only waits for the pool)."""
    cpu = cpu or DriverCPU()
    t0 = time.perf_counter()
    cpu.start()
    with ThreadPoolExecutor(cores) as pool:
        codes = list(pool.map(lambda _: subprocess.run(COMMAND, check=False).returncode, range(n)))
    cpu.stop()
    elapsed = time.perf_counter() - t0
    assert not any(codes)
    return elapsed


def cpu_seconds(who: int = resource.RUSAGE_SELF) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def switches(who: int) -> tuple[int, int]:
    """Voluntary and involuntary context switches so far (``RUSAGE_SELF``: every thread)."""
    usage = resource.getrusage(who)
    return usage.ru_nvcsw, usage.ru_nivcsw


class DriverCPU:
    """The driver's CPU seconds between ``start`` and ``stop``: all threads, and the calling
    (event loop) thread alone; and the context switches of both. ``children``: the CPU of
    the processes it reaped meanwhile (the tasks; with helper processes, the helpers and,
    through them, the tasks)."""

    total = loop = children = 0.0
    busy = 0.0  # seconds from the first task's start to the last one's end, if known
    switches: tuple[int, int, int, int] = (0, 0, 0, 0)  # all threads vol, invol; loop vol, invol

    def start(self) -> None:
        self._cpu0, self._loop0 = cpu_seconds(), time.thread_time()
        self._children0 = cpu_seconds(resource.RUSAGE_CHILDREN)
        self._sw0 = (*switches(resource.RUSAGE_SELF), *switches(resource.RUSAGE_THREAD))

    def stop(self) -> None:
        self.total = cpu_seconds() - self._cpu0
        self.children = cpu_seconds(resource.RUSAGE_CHILDREN) - self._children0
        self.loop = time.thread_time() - self._loop0
        now = (*switches(resource.RUSAGE_SELF), *switches(resource.RUSAGE_THREAD))
        self.switches = (
            now[0] - self._sw0[0],
            now[1] - self._sw0[1],
            now[2] - self._sw0[2],
            now[3] - self._sw0[3],
        )

    def per_task(self, n: int) -> str:
        vol, invol, loop_vol, loop_invol = (count / n for count in self.switches)
        return (
            f"driver CPU/task {self.total / n * 1e3:.3f} ms (loop {self.loop / n * 1e3:.3f})"
            f" switches/task {vol:.2f}+{invol:.2f} (loop {loop_vol:.2f}+{loop_invol:.2f})"
            f" children CPU/task {self.children / n * 1e3:.3f} ms"
        )


async def engine(
    n: int,
    cores: int,
    base: Path,
    queue_ahead: bool | str | None = None,
    spawners: str | None = None,
    cores_per_helper: int | None = None,
) -> tuple[float, DriverCPU, list[float]]:
    """Wall seconds, driver CPU and the refill gaps of one engine run (``None``: the
    backend's default)."""
    tasks = [Task(id=f"t{i}", command=tuple(COMMAND)) for i in range(n)]
    with tempfile.TemporaryDirectory(dir=base) as run_dir:
        by: dict[str, object] = {}  # a baseline may lack these options
        if queue_ahead is not None:
            by["queue_ahead"] = queue_ahead
        if spawners is not None:
            by["spawners"] = spawners
        if cores_per_helper is not None:
            by["cores_per_helper"] = cores_per_helper
        backend = LocalBackend(cores=cores, **by)
        ensemble = Ensemble(tasks, backend=backend, run_dir=run_dir)
        cpu, t0 = DriverCPU(), time.perf_counter()
        cpu.start()
        summary = await ensemble.run()
        cpu.stop()
        elapsed = time.perf_counter() - t0
    assert summary.counts["succeeded"] == n, summary.counts
    by_core: dict[tuple[str, int], list[tuple[float, float]]] = {}
    for r in summary.results.values():
        assert r.start_time is not None
        assert r.end_time is not None
        for slot in r.placement:
            for core in slot.cores:
                by_core.setdefault((slot.node, core), []).append((r.start_time, r.end_time))
    gaps = []
    for runs in by_core.values():
        runs.sort()
        gaps += [nxt[0] - prev[1] for prev, nxt in itertools.pairwise(runs)]
    starts, ends = zip(*(run for runs in by_core.values() for run in runs), strict=True)
    cpu.busy = max(ends) - min(starts)
    return elapsed, cpu, gaps


async def backend_alone(
    n: int, cores: int, base: Path, spawners: str = "threads"
) -> tuple[float, DriverCPU]:
    """Wall seconds and driver CPU of n tasks through LocalBackend, without the engine."""
    outcomes: asyncio.Queue[Outcome] = asyncio.Queue()
    backend = LocalBackend(cores=cores, queue_ahead=False, spawners=spawners)
    tasks = [Task(id=f"t{i}", command=tuple(COMMAND)) for i in range(n)]
    async with anyio.create_task_group() as tg:
        (node,) = await backend.open(outcomes.put_nowait, tg)
        with tempfile.TemporaryDirectory(dir=base) as run_dir:
            free, started = list(node.cores), 0
            tasks_dir = Path(run_dir, "tasks")
            core_of: dict[tuple[str, int], int] = {}
            cpu, t0 = DriverCPU(), time.perf_counter()
            cpu.start()
            while started < n or core_of:
                while free and started < n:
                    task, core = tasks[started], free.pop()
                    slot = Slot(node.name, (core,), ())
                    launch = Launch(
                        task=task, attempt=1, placement=(slot,), tasks_dir=tasks_dir, run_id="b"
                    )
                    core_of[launch.key] = core
                    backend.launch(launch)
                    started += 1
                outcome = await outcomes.get()
                assert outcome.state is TaskState.SUCCEEDED, outcome
                free.append(core_of.pop(outcome.key))
            cpu.stop()
            elapsed = time.perf_counter() - t0
            await backend.close()
    return elapsed, cpu


MARK = "FIGURES "


def engine_line(
    name: str, n: int, elapsed: float, cpu: DriverCPU, gaps: list[float], best: float
) -> str:
    gaps = sorted(gaps)
    p50 = statistics.median(gaps) * 1e3
    p99 = gaps[int(0.99 * (len(gaps) - 1))] * 1e3
    busy = f" (busy {n / cpu.busy:4.0f}/s)" if cpu.busy else ""
    return (
        f"    {name}: {n / elapsed:6.0f}/s{busy} ratio {best / elapsed:4.2f}"
        f" {cpu.per_task(n)} refill p50 {p50:.2f} ms p99 {p99:.2f} ms"
    )


class Summary:
    """Each engine case over the repetitions: its throughput over the best raw method's and
    over xargs's in the same repetition, and the driver's CPU per task."""

    def __init__(self) -> None:
        self._cases: dict[str, list[tuple[float, float, float]]] = {}

    def add(
        self, label: str, elapsed: float, cpu_per_task: float, raw: dict[str, float], best: str
    ) -> None:
        figures = (raw[best] / elapsed, raw["xargs"] / elapsed, cpu_per_task * 1e3)
        self._cases.setdefault(label, []).append(figures)

    def print(self) -> None:
        if not self._cases or len(next(iter(self._cases.values()))) < 2:
            return
        print("over the repetitions: min / median / max (and how many of them >= 0.85)")
        for label, rows in self._cases.items():
            best, xargs_, cpu = (sorted(column) for column in zip(*rows, strict=True))
            print(
                f"    {label:38}: of the best raw {_spread(best)} ({sum(r >= 0.85 for r in best)}"
                f" of {len(best)}), of xargs {_spread(xargs_)}, driver CPU/task"
                f" {_spread(cpu, 3)} ms"
            )


def _spread(values: list[float], digits: int = 2) -> str:
    return " / ".join(f"{v:.{digits}f}" for v in (values[0], statistics.median(values), values[-1]))


def engine_elsewhere(
    n: int, cores: int, matensemble_dir: str | None, case: str = "default"
) -> tuple[float, DriverCPU, list[float]]:
    """One engine run on tmpfs in a fresh interpreter, importing ``matensemble`` from
    ``matensemble_dir`` (``None``: as this script does); ``case``: one of ``CASES``."""
    env = dict(os.environ)
    if matensemble_dir is not None:
        env["PYTHONPATH"] = os.pathsep.join([matensemble_dir, env.get("PYTHONPATH", "")])
    command = [sys.executable, __file__, "--one-engine", "--tasks", str(n), "--cores", str(cores)]
    command += ["--baseline-case", case]
    if COMMAND[0] == "sleep":
        command += ["--sleep", COMMAND[1]]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            figures = json.loads(line[len(MARK) :])
            cpu = DriverCPU()
            cpu.total, cpu.loop = figures["cpu"], figures["loop"]
            vol, invol, loop_vol, loop_invol = figures["switches"]
            cpu.switches = (vol, invol, loop_vol, loop_invol)
            cpu.children = figures["children"]
            return figures["elapsed"], cpu, figures["gaps"]
    raise SystemExit(f"the engine run failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def one_engine(n: int, cores: int, case: str) -> None:
    queue_ahead, spawners = CASES[case]
    elapsed, cpu, gaps = asyncio.run(engine(n, cores, Path("/dev/shm"), queue_ahead, spawners))
    figures = {
        "elapsed": elapsed,
        "cpu": cpu.total,
        "loop": cpu.loop,
        "children": cpu.children,
        "switches": cpu.switches,
        "gaps": gaps,
    }
    print(MARK + json.dumps(figures), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cores", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--tmpfs-only", action="store_true", help="no engine run on the disk")
    parser.add_argument("--raw-only", action="store_true", help="only xargs, threads, spawners")
    parser.add_argument("--no-raw-spawners", action="store_true", help="no raw spawners runs")
    parser.add_argument("--sleep", type=float, help="every task runs `sleep SLEEP`, not `true`")
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="a directory holding another matensemble package: its engine runs too, alternating",
    )
    parser.add_argument(
        "--cores-per-helper",
        metavar="K[,K...]",
        help="run the helpers' engine cases once per value of LocalBackend(cores_per_helper=K)",
    )
    parser.add_argument(
        "--baseline-case",
        choices=CASES,
        default="default",
        help="the engine that --baseline runs: the backend's default (default), threads without "
        "queueing ahead, or helpers with queue_ahead=True",
    )
    parser.add_argument("--one-engine", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    n, cores = args.tasks, args.cores
    if args.sleep is not None:
        COMMAND[:] = ["sleep", f"{args.sleep:g}"]
    if args.one_engine:
        one_engine(n, cores, args.baseline_case)
        return
    per_helper: list[int | None] = [None]
    if args.cores_per_helper:
        per_helper = [int(k) for k in args.cores_per_helper.split(",")]
    baseline: str | None = None
    if args.baseline:
        if not (Path(args.baseline) / "matensemble" / "__init__.py").is_file():
            raise SystemExit(f"--baseline {args.baseline}: no matensemble package in it")
        baseline = str(Path(args.baseline).resolve())
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(asyncio.run, engine(n, cores, Path("/dev/shm")))
        pstats.Stats(profile).sort_stats("tottime").print_stats(25)
        return
    places = {"tmpfs": Path("/dev/shm"), "disk": Path.cwd()}
    if args.tmpfs_only:
        del places["disk"]
    print(f"{n} `{' '.join(COMMAND)}` tasks on {cores} cores; load {os.getloadavg()[0]:.1f}")
    summary = Summary()
    for rep in range(args.repeat):
        threads_cpu = DriverCPU()
        raw = {"xargs": xargs(n, cores)}
        spawners: dict[str, tuple[float, float, float]] = {}
        methods = ["threads", *([] if args.no_raw_spawners else SPAWNERS)]
        for method in methods[rep % len(methods) :] + methods[: rep % len(methods)]:
            if method == "threads":
                raw["threads"] = threads(n, cores, threads_cpu)
                continue
            ahead, files, work = SPAWNERS[method]
            with tempfile.TemporaryDirectory(dir="/dev/shm") as tasks_dir:
                where = tasks_dir if files else ""
                spawners[method] = raw_spawners.run(n, cores, COMMAND, ahead, where, work)
        best = min(raw, key=raw.__getitem__)
        line = " ".join(f"{name} {n / t:6.0f}/s" for name, t in raw.items())
        print(f"[{rep}] {line} (best: {best}) load {os.getloadavg()[0]:.1f}")
        print(f"    threads' own {threads_cpu.per_task(n)}")
        for method, (wall, driver, helpers) in spawners.items():
            print(
                f"    spawners ({method}) {n / wall:6.0f}/s"
                f" ({raw['threads'] / wall:4.2f} of the threads)"
                f" driver CPU/task {driver / n * 1e3:.3f} ms, helpers' {helpers / n * 1e3:.3f} ms"
            )
        if args.raw_only:
            continue
        if places["tmpfs"].is_dir():
            for spawners in SPAWNED_BY[:: 1 if rep % 2 == 0 else -1]:
                elapsed, cpu = asyncio.run(backend_alone(n, cores, places["tmpfs"], spawners))
                label = f"backend alone{'/helpers' if spawners == 'processes' else ''} (tmpfs):"
                print(f"    {label:29} {n / elapsed:6.0f}/s {cpu.per_task(n)}")
        for name, base in places.items():
            if not base.is_dir():
                continue
            # On tmpfs: the default, then with and without queueing ahead, by helpers and by
            # threads, in turn; on the disk the default alone.
            cases = [
                (a, by, k)
                for a, by in ENGINE_CASES
                for k in (per_helper if by == "processes" else [None])
            ]
            turn = rep % len(cases)
            cases = cases[turn:] + cases[:turn] if name == "tmpfs" else cases[:1]
            lines, tasks_cpu = [], None  # the children CPU of the threads' engine: the tasks'
            for queue_ahead, spawners, k in cases:
                elapsed, cpu, gaps = asyncio.run(engine(n, cores, base, queue_ahead, spawners, k))
                label = f"engine/{'helpers' if spawners == 'processes' else 'threads'}"
                label += f"{f'/{k}' if k else ''}"
                label += {True: "+ahead", False: "", "auto": "+auto (default)"}[queue_ahead]
                label += f" ({name:5})"
                line = engine_line(f"{label:38}", n, elapsed, cpu, gaps, raw[best])
                lines.append((line, cpu.children if spawners == "processes" else None))
                summary.add(label, elapsed, cpu.total / n, raw, best)
                if spawners == "threads" and not queue_ahead:
                    tasks_cpu = cpu.children
            for line, children in lines:
                if children is not None and tasks_cpu is not None:
                    line += f" helpers' own {(children - tasks_cpu) / n * 1e3:.3f} ms"
                print(line)
        if baseline is not None and places["tmpfs"].is_dir():
            versions = {"engine@current": None, "engine@baseline": baseline}
            for name in list(versions)[:: 1 if rep % 2 == 0 else -1]:
                elapsed, cpu, gaps = engine_elsewhere(n, cores, versions[name], args.baseline_case)
                print(engine_line(f"{name:15}", n, elapsed, cpu, gaps, raw[best]))
    summary.print()
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
