"""Flux throughput: MatEnsemble against the best raw Flux method, each in a fresh instance.

A Flux instance slows down as its job count grows, so a method that runs second in the same
instance is handicapped. Here every method runs alone in its own fresh
``flux start --test-size=SIZE`` instance; the methods alternate (the order reverses on every
repetition) and the best and the median of the repetitions count:

    .venv/bin/python benchmarks/flux_throughput.py --tasks 300 --reps 3

(``flux`` must be on PATH, and its Python bindings importable or found through ``flux env``.)

Methods, all running N ``true`` jobs (``--methods`` picks some):

- ``raw-waitable``: ``flux.job.submit_async(h, JobspecV1.from_command(["true"]),
  waitable=True)`` for all, then ``wait_async`` for each (what a new user writes);
- ``raw-journal``: ``submit_async`` for all on the plain reactor, watched by one
  ``job-manager.events-journal`` stream;
- ``raw-novalidate``: ``raw-waitable`` submitted with ``novalidate=True`` (the instance owner
  may skip job-ingest's jobspec validator, as the backend does);
- ``raw-ours``: ``raw-novalidate`` with the jobspecs the backend builds (files, directory,
  environment, rank constraint): the cost of the jobspec alone, without the engine;
- ``raw-ours-noPART`` (e.g. ``raw-ours-nooutput``, ``raw-ours-norank-nocwd``): ``raw-ours``
  without one or more of its parts (what each costs; see ``our_jobspecs``);
- ``raw-windowW`` (e.g. ``raw-window4``): ``raw-journal`` with novalidate that keeps only W
  jobs in Flux, submitting the next at each job's ``finish`` event, as the engine does with W
  slots: how much a bounded queue ahead of the free cores would gain (W = cores: none);
- ``raw-windowW-ranked`` (e.g. ``raw-window8-ranked``): the same, each job constrained to one
  broker rank, W / (slots) jobs per slot: a slot's next jobs wait in Flux's queue for that
  rank (what queueing ahead with a placement the engine accounted would do; Fluxion's
  first-come-first-served queue holds every later job behind one waiting for a busy rank);
- ``raw-windowW-after``: ``raw-windowW-ranked`` whose queued jobs each depend
  (``afterany``) on the slot's job before them: they wait in DEPEND, out of Fluxion's queue,
  and enter it when that job is inactive (queueing ahead through Flux's dependencies);
- ``raw-windowW-held``: the same, the queued jobs submitted held (urgency 0) instead and
  raised to 16 by a ``job-manager.urgency`` RPC at the ``finish`` of the slot's running job;
- ``ensemble``: ``Ensemble(tasks, backend=FluxBackend()).run()``, start-up included (the
  default ``queue_ahead="auto"``: these tasks are short, so it queues ahead as ``"depend"``
  once the first has finished);
- ``ensemble-off``: the same with ``FluxBackend(queue_ahead=False)`` (never queueing ahead,
  the default before ``"auto"``);
- ``ensemble-ahead``: the same with ``FluxBackend(queue_ahead=True)`` (each slot's next task
  queued in Flux behind the running one);
- ``ensemble-depend``: the same with ``FluxBackend(queue_ahead="depend")`` (each queued task
  also depends on the running job it waits for: see ``flux_chains``);
- ``ensemble-k2``, ``ensemble-k4``: the same with ``FluxBackend(partitions=k)``;
  ``ensemble-k2-off``, ``ensemble-k4-off`` also with ``queue_ahead=False``.

For the ensemble methods a line also gives the reactor bridges' drains (wake-ups) and
``flux_reactor_run`` iterations per job, which the load moves much less than CPU time.

``--baseline DIR`` (a directory holding another ``matensemble`` package, e.g. ``git archive main
matensemble | tar -x -C DIR``) also runs each ensemble method with that code, as
``METHOD@baseline``, alternating with the current code in the same run. ``METHOD+SETTING``
(e.g. ``ensemble-ahead+easy``) runs METHOD in an instance whose Fluxion queue policy is
SETTING (``fcfs``, ``easy``, ``hybrid``, ``conservative``; without it, the instance's default),
or, with ``+ingest1``, whose job ingest commits each job at once (``[ingest] batch-count = 1``)
instead of gathering the jobs submitted within 10 ms.

Each line gives jobs/s, the driver's CPU per job, the brokers' CPU per job (the brokers
and the job shells they reaped), and the median **slot turnover**: the time from a job's
``finish`` to the ``start`` of the job that next takes its slot, read from the jobs' eventlogs
and ``R`` after the clock stopped, and where it goes (see ``flux_turnover.py``). Where jobs/s moves
with the other work on a shared machine, the turnover says how long a slot stands empty
between two jobs: what a driver that submits only when a slot frees adds to a raw loop that
has every job queued in Flux already. The summary compares the best of each method with the
best raw method of the same run, and its median with the best raw median.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flux_turnover import slot_turnover  # this script's directory is on sys.path

RAW = ("raw-waitable", "raw-journal", "raw-novalidate")
OURS_WITHOUT = ("rank", "output", "append", "affinity", "pinning", "cwd", "tag", "env", "environ")
OURS = re.compile(r"raw-ours((?:-no(?:" + "|".join((*OURS_WITHOUT, "all")) + r"))*)$")
METHODS = (*RAW, "raw-ours", "ensemble", "ensemble-off", "ensemble-ahead", "ensemble-depend")
METHODS += ("ensemble-k2", "ensemble-k4", "ensemble-k2-off", "ensemble-k4-off")
WINDOW = re.compile(r"raw-window(\d+)(-ranked|-after|-held)?$")
MARK = "RESULT "


# -- inside one instance ------------------------------------------------------------------------


def import_flux() -> Any:
    try:
        import flux.job
    except ImportError:
        out = subprocess.run(["flux", "env"], capture_output=True, text=True, check=False).stdout
        found = re.search(r'^export PYTHONPATH="([^"]*)"', out, re.MULTILINE)
        sys.path[:0] = [p for p in (found.group(1).split(":") if found else []) if p]
    import flux
    import flux.constants
    import flux.job

    return flux


def broker_pids() -> list[int]:
    """The brokers of this instance: rank 0 runs us; its parent (``flux start``) runs them."""
    rank0 = os.getppid()
    try:
        start = int(Path(f"/proc/{rank0}/stat").read_text().rsplit(")", 1)[1].split()[1])
        found = set()
        for task in Path(f"/proc/{start}/task").iterdir():
            found.update(int(p) for p in (task / "children").read_text().split())
        return sorted(found) or [rank0]
    except (OSError, ValueError, IndexError):
        return [rank0]


def flux_cpu_seconds(pids: list[int]) -> tuple[float, float]:
    """CPU of the brokers themselves (utime+stime) and of the job shells (and their tasks)
    they reaped (cutime+cstime)."""
    own = reaped = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        own += int(fields[11]) + int(fields[12])
        reaped += int(fields[13]) + int(fields[14])
    tick = os.sysconf("SC_CLK_TCK")
    return own / tick, reaped / tick


def raw_waitable(
    flux: Any, n: int, specs: list[str] | None = None, novalidate: bool = False
) -> None:
    """Pipelined: every submit in flight at once, then one ``wait_async`` per job."""
    h = flux.Flux()
    if specs is None:
        spec = flux.job.JobspecV1.from_command(["true"])
        specs = [spec] * n
    futures = [flux.job.submit_async(h, s, waitable=True, novalidate=novalidate) for s in specs]
    ids = [f.get_id() for f in futures]
    waits = [flux.job.wait_async(h, jobid) for jobid in ids]
    for w in waits:
        assert w.get_status().success


def raw_journal(flux: Any, n: int) -> None:
    """Submit all with callbacks on the plain reactor; one journal stream reports the ends."""
    h = flux.Flux()
    spec = flux.job.JobspecV1.from_command(["true"]).dumps()
    left, ours, ended = [n], set(), set()

    def finished(jobid: int) -> None:
        left[0] -= 1
        if left[0] == 0:
            h.reactor_stop()

    def on_submitted(f: Any) -> None:
        jobid = int(f.get_id())
        ours.add(jobid)
        if jobid in ended:
            finished(jobid)

    def on_journal(f: Any) -> None:
        payload = f.get()
        f.reset()
        if any(e["name"] == "clean" for e in payload["events"]):
            if payload["id"] in ours:
                finished(payload["id"])
            else:
                ended.add(payload["id"])

    journal = h.rpc(
        "job-manager.events-journal",
        {"full": False, "allow": {"clean": 1}},
        flags=flux.constants.FLUX_RPC_STREAMING,
    )
    journal.then(on_journal)
    for _ in range(n):
        flux.job.submit_async(h, spec).then(on_submitted)
    h.reactor_run()


def raw_slots(flux: Any, h: Any) -> list[int]:
    """One broker rank per core of the instance (each core a slot)."""
    from matensemble.backends.flux_inventory import read_inventory

    nodes, names = read_inventory(h.rpc("sched.resource-status").get(), driver_rank=0)
    return [names.rank(node.name) for node in nodes for _ in node.cores]


def raw_window(flux: Any, n: int, window: int, ranked: bool = False) -> None:
    """At most ``window`` jobs in Flux: the next is submitted at each ``finish`` event.

    ``ranked``: each job is constrained to a broker rank; the ``window`` jobs are spread
    evenly over the slots (one core each), and a job that finishes on a rank is replaced by
    one for the same rank, so each slot has its next jobs queued behind it.
    """
    h = flux.Flux()
    slots = raw_slots(flux, h) if ranked else [-1]  # rank -1: no constraint
    specs: dict[int, str] = {}
    for rank in set(slots):
        spec = flux.job.JobspecV1.from_command(["true"])
        if rank >= 0:
            spec.setattr("system.constraints", {"ranks": [str(rank)]})
        specs[rank] = spec.dumps()
    counts = {"sent": 0, "clean": 0}
    rank_of: dict[int, int] = {}

    def submit(rank: int) -> None:
        if counts["sent"] < n:
            counts["sent"] += 1
            flux.job.submit_async(h, specs[rank], novalidate=True)

    def on_journal(f: Any) -> None:
        payload = f.get()
        f.reset()
        jobid = payload["id"]
        for event in payload["events"]:
            if event["name"] == "submit" and ranked:
                ranks = payload["jobspec"]["attributes"]["system"]["constraints"]["ranks"]
                rank_of[jobid] = int(ranks[0])
            elif event["name"] == "finish":
                submit(rank_of.pop(jobid, -1))
            elif event["name"] == "clean":
                counts["clean"] += 1
                if counts["clean"] == n:
                    h.reactor_stop()

    allow = {"finish": 1, "clean": 1, **({"submit": 1} if ranked else {})}
    journal = h.rpc(
        "job-manager.events-journal",
        {"full": False, "allow": allow},
        flags=flux.constants.FLUX_RPC_STREAMING,
    )
    journal.then(on_journal)
    for i in range(window):
        submit(slots[i % len(slots)])
    h.reactor_run()


def raw_window_chained(flux: Any, n: int, window: int, mode: str) -> None:
    """``window`` jobs per instance, ``window / slots`` per slot, each constrained to its
    slot's rank; a slot's jobs behind its running one are kept out of the scheduler's queue:

    - ``after``: each depends (``afterany``) on the slot's job before it, so it waits in
      DEPEND and enters the scheduler's queue when that job is inactive;
    - ``held``: each is submitted held (urgency 0); at the ``finish`` of the slot's running
      job the driver raises the next one's urgency (one small RPC) and submits a held one.
    """
    h = flux.Flux()
    slots = raw_slots(flux, h)
    depth = max(1, window // len(slots))
    specs = {}
    for rank in set(slots):
        spec = flux.job.JobspecV1.from_command(["true"])
        spec.setattr("system.constraints", {"ranks": [str(rank)]})
        specs[rank] = spec.jobspec
    counts = {"sent": 0, "clean": 0}
    lines: list[list[int | None]] = [[] for _ in slots]  # per slot: its jobs in Flux, in order
    slot_of: dict[int, int] = {}
    waiting: list[int] = [0] * len(slots)  # per slot: submits waiting for an unanswered id
    release: list[bool] = [False] * len(slots)  # per slot: its first job to raise when answered

    def raise_urgency(jobid: int) -> None:
        h.rpc("job-manager.urgency", {"id": jobid, "urgency": 16})

    def submit(s: int) -> None:
        if counts["sent"] >= n:
            return
        line = lines[s]
        if line and line[-1] is None:
            waiting[s] += 1  # the id to depend on is not known yet
            return
        counts["sent"] += 1
        urgency = 16
        if mode == "after" and line:
            spec = dict(specs[slots[s]])
            attrs = spec["attributes"] = dict(spec["attributes"])
            system = attrs["system"] = dict(attrs["system"])
            system["dependencies"] = [{"scheme": "afterany", "value": str(line[-1])}]
            body = json.dumps(spec)
        else:
            body = json.dumps(specs[slots[s]])
            if mode == "held" and line:
                urgency = 0
        line.append(None)
        f = flux.job.submit_async(h, body, urgency=urgency, novalidate=True)
        f.then(lambda f: answered(s, f))

    def answered(s: int, f: Any) -> None:
        jobid = int(f.get_id())
        line = lines[s]
        line[line.index(None)] = jobid
        slot_of[jobid] = s
        if release[s] and line[0] == jobid:
            release[s] = False
            raise_urgency(jobid)
        if waiting[s]:
            waiting[s] -= 1
            submit(s)

    def on_journal(f: Any) -> None:
        payload = f.get()
        f.reset()
        jobid = payload["id"]
        for event in payload["events"]:
            if event["name"] == "finish":
                s = slot_of[jobid]
                lines[s].remove(jobid)
                if mode == "held" and lines[s]:
                    if lines[s][0] is None:
                        release[s] = True
                    else:
                        raise_urgency(lines[s][0])
                submit(s)
            elif event["name"] == "clean":
                counts["clean"] += 1
                if counts["clean"] == n:
                    h.reactor_stop()

    journal = h.rpc(
        "job-manager.events-journal",
        {"full": False, "allow": {"finish": 1, "clean": 1}},
        flags=flux.constants.FLUX_RPC_STREAMING,
    )
    journal.then(on_journal)
    for _ in range(depth):
        for s in range(len(slots)):
            submit(s)
    h.reactor_run()


def our_jobspecs(flux: Any, n: int, base: Path, without: str = "") -> list[str]:
    """The jobspecs the backend builds for N ``true`` tasks, spread over the ranks; ``without``
    parts of ``OURS_WITHOUT``, each after ``-no`` (e.g. ``-norank-nooutput``): without the
    rank constraint, the output files (``output``: to the KVS, as a bare jobspec's;
    ``append``: files truncated, not appended to), the CPU affinity option (``affinity``:
    Flux's default, ``on``; ``pinning``: ``off``, no hwloc topology in the shell), the working
    directory (``cwd``), the job name and tag (``tag``), the variables the backend adds to the
    environment (``env``) or the whole environment (``environ``); ``all``: every part a bare
    ``from_command(["true"])`` jobspec lacks (to weigh what each costs)."""
    from matensemble import Task
    from matensemble.backends.base import Launch
    from matensemble.backends.flux_inventory import read_inventory
    from matensemble.backends.flux_jobspec import JobspecBuilder
    from matensemble.model import Slot

    parts = set(without.split("-no")) - {""}
    if "all" in parts:
        parts = {"rank", "output", "affinity", "cwd", "tag", "env"}
    h = flux.Flux()
    nodes, names = read_inventory(h.rpc("sched.resource-status").get(), driver_rank=0)
    builder = JobspecBuilder(flux.job.JobspecV1, names, token="bench", environ=os.environ)
    specs = []
    for i in range(n):
        node = nodes[i % len(nodes)]
        launch = Launch(
            task=Task(id=f"r{i}", command=("true",)),
            attempt=1,
            placement=(Slot(node.name, node.cores[:1]),),
            tasks_dir=base / "tasks",
            run_id="bench",
        )
        launch.task_dir.mkdir(parents=True)
        spec = json.loads(builder.build(launch, constrain="rank" not in parts))
        system = spec["attributes"]["system"]
        options = system["shell"]["options"]
        if "append" in parts:  # before ``output``, which takes the whole table away
            del options["output"]["mode"]
        if "output" in parts:
            del options["output"]
        if "affinity" in parts:
            del options["cpu-affinity"]
        if "pinning" in parts:
            options["cpu-affinity"] = "off"
        if not options:
            del system["shell"]
        if "cwd" in parts:
            del system["cwd"]
        if "tag" in parts:
            del system["job"]
            del spec["attributes"]["user"]
        if "env" in parts:
            system["environment"] = dict(os.environ)
        if "environ" in parts:
            system["environment"] = {}
        specs.append(json.dumps(spec))
    return specs


REACTOR: dict[str, int] = {}  # the ensemble methods' reactor bridges: drains, iterations


async def ensemble(n: int, run_dir: Path, partitions: int, ahead: bool | str | None = None) -> None:
    from matensemble import Ensemble, Task  # imported before the clock starts, see inner()
    from matensemble.backends.flux import FluxBackend

    tasks = [Task(id=f"t{i}", command=("true",)) for i in range(n)]
    # None: the backend's default (``"auto"``; a baseline before it knew none: ``False``).
    options = {} if ahead is None else {"queue_ahead": ahead}
    backend = FluxBackend(partitions=partitions, **options)
    summary = await Ensemble(tasks, backend=backend, run_dir=run_dir).run()
    assert summary.counts["succeeded"] == n, summary.counts
    # The bridges' own counters (statistics kept for benchmarks), read through the backend's
    # private fields: the enclosing instance's channel and each partition's.
    channels = [backend._parent] + [p.channel for p in backend._partitions]
    bridges = [c.bridge for c in channels if c is not None]
    REACTOR["wakeups"] = sum(b.wakeups for b in bridges)
    REACTOR["iterations"] = sum(b.iterations for b in bridges)


def inner(method: str, n: int, profile: str | None) -> None:
    """Run one method in the enclosing instance; print its figures as one JSON line."""
    flux = import_flux()
    import matensemble.backends.flux  # noqa: F401 - a script imports before it runs
    from matensemble import Ensemble  # noqa: F401 - the engine is imported lazily otherwise

    # anyio imports its asyncio backend at the run's first task group: 40 ms on this VM (where
    # PYTHONDONTWRITEBYTECODE is set), an import a script pays once, not per job.
    importlib.import_module("anyio._backends._asyncio")

    brokers = broker_pids()
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        specs: list[str] = []
        ours = OURS.match(method)
        if ours:
            specs = our_jobspecs(flux, n, base, without=ours.group(1))
        runs: dict[str, Callable[[], Any]] = {
            "raw-waitable": lambda: raw_waitable(flux, n),
            "raw-journal": lambda: raw_journal(flux, n),
            "raw-novalidate": lambda: raw_waitable(flux, n, novalidate=True),
            "ensemble": lambda: asyncio.run(ensemble(n, base / "run", 1)),
            "ensemble-off": lambda: asyncio.run(ensemble(n, base / "run", 1, ahead=False)),
            "ensemble-ahead": lambda: asyncio.run(ensemble(n, base / "run", 1, ahead=True)),
            "ensemble-depend": lambda: asyncio.run(ensemble(n, base / "run", 1, ahead="depend")),
            "ensemble-k2": lambda: asyncio.run(ensemble(n, base / "run", 2)),
            "ensemble-k4": lambda: asyncio.run(ensemble(n, base / "run", 4)),
            "ensemble-k2-off": lambda: asyncio.run(ensemble(n, base / "run", 2, ahead=False)),
            "ensemble-k4-off": lambda: asyncio.run(ensemble(n, base / "run", 4, ahead=False)),
        }
        if ours:
            runs[method] = lambda: raw_waitable(flux, n, specs, novalidate=True)
        window = WINDOW.match(method)
        if window:
            width, mode = int(window.group(1)), (window.group(2) or "-")[1:]
            if mode in ("after", "held"):
                runs[method] = lambda: raw_window_chained(flux, n, width, mode)
            else:
                runs[method] = lambda: raw_window(flux, n, width, mode == "ranked")
        cpu0, (own0, shells0) = time.process_time(), flux_cpu_seconds(brokers)
        t0 = time.perf_counter()
        if profile:
            import cProfile

            # The main thread's CPU time, not wall time (on a loaded machine the wall clock
            # charges a call for the time the driver waited for a core) nor the process's
            # (which would charge it for what other threads, e.g. the journal's fdatasync
            # worker, did meanwhile).
            profiler = cProfile.Profile(time.thread_time)
            profiler.runcall(runs[method])
            profiler.dump_stats(profile)
        else:
            runs[method]()
        seconds = time.perf_counter() - t0
        cpu, (own, shells) = time.process_time() - cpu0, flux_cpu_seconds(brokers)
    figures = {
        "method": method,
        "n": n,
        "seconds": seconds,
        "driver_cpu": cpu,
        "flux_cpu": own - own0 + shells - shells0,
        "broker_cpu": own - own0,
        "shell_cpu": shells - shells0,
    }
    figures.update(REACTOR)
    figures.update(slot_turnover(flux))
    print(MARK + json.dumps(figures), flush=True)


# -- the runs, each in a fresh instance ---------------------------------------------------------


BASELINE = "@baseline"
POLICY = "+"  # METHOD+SETTING: in an instance configured so (``SETTINGS``)
POLICIES = ("fcfs", "easy", "hybrid", "conservative")
# Instance configuration (TOML) per setting: Fluxion's queue policies, and ``ingest1``: job
# ingest commits each submitted job at once instead of batching them for up to 10 ms.
SETTINGS = {
    **{p: f'[sched-fluxion-qmanager]\nqueue-policy = "{p}"\n' for p in POLICIES},
    "ingest1": "[ingest]\nbatch-count = 1\n",
}


def fresh(method: str, n: int, size: int, baseline: str | None = None) -> dict[str, Any]:
    """Start a fresh ``flux start --test-size=SIZE`` and run one method in it; a method named
    ``...@baseline`` imports ``matensemble`` from the ``baseline`` directory instead."""
    env = None
    if method.endswith(BASELINE):
        assert baseline is not None
        method = method[: -len(BASELINE)]
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join([baseline, os.environ.get("PYTHONPATH", "")]),
        }
    method, _, policy = method.partition(POLICY)
    with tempfile.TemporaryDirectory() as conf:
        command = ["flux", "start", f"--test-size={size}"]
        if policy:
            Path(conf, "setting.toml").write_text(SETTINGS[policy])
            command.append(f"-o,--config-path={conf}")
        command += [sys.executable, __file__, "--inner", method, "--tasks", str(n)]
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=1800, check=False, env=env
        )
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK) :]))
    raise SystemExit(f"{method} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def outer(methods: list[str], n: int, reps: int, size: int, baseline: str | None) -> None:
    flux_version = subprocess.run(["flux", "version"], capture_output=True, text=True).stdout
    print(flux_version.strip())
    print(f"{n} `true` jobs per run, --test-size={size}, {os.cpu_count()} CPUs, {reps} rep(s)\n")
    rates: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
    for rep in range(reps):
        for method in methods if rep % 2 == 0 else methods[::-1]:
            r = fresh(method, n, size, baseline)
            r["rate"] = n / r["seconds"]
            rates[method].append(r)
            print(
                f"  rep {rep + 1} {method:<23} {r['rate']:7.1f} jobs/s  driver CPU "
                f"{r['driver_cpu'] / n * 1000:5.2f} ms/job  brokers+shells CPU "
                f"{r['flux_cpu'] / n * 1000:6.2f} ms/job  turnover {_ms(r.get('turnover'))}"
                f" (at the head {_ms(r.get('turnover_head'))}, behind a waiting job "
                f"{_ms(r.get('turnover_behind'))} in {r.get('behind', 0):4.0%})  free->alloc "
                f"{_ms(r.get('alloc'))}  queued {_ms(r.get('lead'))} before free  (brokers "
                f"{r['broker_cpu'] / n * 1000:5.2f}, shells {r['shell_cpu'] / n * 1000:5.2f} "
                f"ms/job; load {os.getloadavg()[0]:.1f})"
                + (
                    f"  reactor: {r['wakeups'] / n:.2f} drains, {r['iterations'] / n:.2f} "
                    "iterations per job"
                    if "iterations" in r
                    else ""
                ),
                flush=True,
            )
    print(
        f"\n{'method':<23} {'best':>8} {'median':>8}  jobs/s; CPU per job of the best run;"
        " median turnover of all runs"
    )
    best = {m: max(rs, key=lambda r: r["rate"]) for m, rs in rates.items()}
    for m, r in best.items():
        median = statistics.median(x["rate"] for x in rates[m])
        turnovers = [x["turnover"] for x in rates[m] if x.get("turnover") is not None]
        turnover = statistics.median(turnovers) if turnovers else None
        print(
            f"{m:<23} {r['rate']:8.1f} {median:8.1f}  driver {r['driver_cpu'] / n * 1000:5.2f} ms"
            f"  brokers+shells {r['flux_cpu'] / n * 1000:6.2f} ms  turnover {_ms(turnover)}"
        )
    print(
        f"\n{'method':<23} CPU per job, median (lowest-highest) of all runs: brokers + job"
        " shells (= the brokers' own + the shells' and their tasks'), the driver"
    )
    for m, rs in rates.items():
        print(
            f"{m:<23} {_spread(rs, 'flux_cpu', n)} = {_spread(rs, 'broker_cpu', n)} + "
            f"{_spread(rs, 'shell_cpu', n)}; driver {_spread(rs, 'driver_cpu', n)}"
        )
    raw = [m for m in methods if m in RAW]
    if raw:
        medians = {m: statistics.median(x["rate"] for x in rates[m]) for m in methods}
        top = max(raw, key=lambda m: best[m]["rate"])
        middle = max(raw, key=lambda m: medians[m])
        print(
            f"\nratio to the best raw method: best to best ({top}, {best[top]['rate']:.1f} "
            f"jobs/s), median to median ({middle}, {medians[middle]:.1f} jobs/s):"
        )
        for m in methods:
            if m not in RAW:
                print(
                    f"  {m:<23} {best[m]['rate'] / best[top]['rate']:.2f} best"
                    f"  {medians[m] / medians[middle]:.2f} median"
                )


def _known(method: str) -> bool:
    name, _, policy = method.removesuffix(BASELINE).partition(POLICY)
    known = name in METHODS or WINDOW.match(name) or OURS.match(name)
    return bool(known) and (policy == "" or policy in SETTINGS)


def _spread(runs: list[dict[str, Any]], key: str, n: int) -> str:
    """The median (lowest-highest) of ``key`` per job over ``runs``, in ms."""
    values = [r[key] / n * 1000 for r in runs]
    return f"{statistics.median(values):5.2f} ({min(values):.2f}-{max(values):.2f}) ms"


def _ms(seconds: float | None) -> str:
    return "   -   " if seconds is None else f"{seconds * 1000:5.1f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--size", type=int, default=2, help="brokers per instance")
    parser.add_argument("--methods", default="raw-waitable,raw-journal,ensemble")
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    parser.add_argument("--profile", help="inside: cProfile (main thread CPU) to this file")
    parser.add_argument(
        "--baseline",
        help="a directory holding another matensemble package (e.g. `git archive main "
        "matensemble | tar -x -C DIR`): each ensemble method also runs with it, as "
        "METHOD@baseline, alternating with the current code",
    )
    args = parser.parse_args()
    if args.inner:
        inner(args.inner, args.tasks, args.profile)
        return
    if shutil.which("flux") is None:
        raise SystemExit("no `flux` command on PATH")
    methods = args.methods.split(",")
    if args.baseline:
        if not (Path(args.baseline) / "matensemble" / "__init__.py").is_file():
            raise SystemExit(f"--baseline {args.baseline}: no matensemble package in it")
        baseline = str(Path(args.baseline).resolve())
        methods = [x for m in methods for x in (m, m + BASELINE) if x == m or "ensemble" in m]
    else:
        baseline = None
    unknown = sorted(m for m in set(methods) if not _known(m))
    if unknown:
        raise SystemExit(
            f"unknown method(s) {unknown}; choose from {', '.join(METHODS)},"
            " raw-windowW[-ranked|-after|-held],"
            f" each with an optional +SETTING ({', '.join(SETTINGS)})"
        )
    outer(methods, args.tasks, args.reps, args.size, baseline)


if __name__ == "__main__":
    main()
