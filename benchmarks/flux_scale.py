"""The Flux path at scale, emulated: raw Flux against the engine on a fake large allocation.

Each run starts a fresh one-broker Flux instance whose resources are *fake*: flux-core's
``[fake-resources]`` table (``flux start --conf=fake-resources.nnodes=N``, see
flux-config-fake-resources(5)) installs an R of N nodes x C cores, forced up and not checked
against the host. Every job carries ``system.exec.test.run_duration`` (the job-exec module's
test mode: it posts ``start``, waits that long and posts ``finish``, and no job shell or
process runs). What is measured is what the fake cannot take away: job ingest, the job
manager, the scheduler matching on an N-node graph, the event journal, and the driver.

    PATH=/opt/flux/bin:$PATH uv run python benchmarks/flux_scale.py \\
        --nodes 16,128,1024 --jobs 10000 --duration 1s --reps 2

Methods (``--methods``), each alone in its own fresh instance, alternating (the order
reverses each repetition):

- ``raw``: ``flux.job.submit_async(h, spec, waitable=True, novalidate=True)`` for every job,
  and ``wait_async`` for each as its id comes, all on the handle's reactor (the fastest raw
  method of ``flux_throughput.py``, whose synchronous ``get_id()`` on thousands of pending
  futures aborts in libev here: each future waited for keeps a reactor of its own);
- ``raw-ranked``: the same, each job constrained to a broker rank in turn (the rank
  constraint the engine's jobs carry, without the engine);
- ``ensemble``: ``Ensemble(tasks, backend=FluxBackend(attributes={"exec.test.run_duration":
  D})).run()``, start-up and close included;
- ``ensemble-off``, ``ensemble-ahead``, ``ensemble-depend``: the same with ``queue_ahead=False``
  (never: the default before ``"auto"``) / ``True`` / ``"depend"``;
- ``ensemble-kK`` (e.g. ``ensemble-k2``): the same with ``partitions=K`` (see docs/flux.md:
  a partition is a Flux job running a broker on its nodes, which fake nodes cannot run).

``--shapes mixed`` gives the jobs a mix of shapes instead of one core each (see ``SHAPES``).
Each line gives jobs/s (first submit to last result), the driver's CPU per job and its peak
RSS, the broker's CPU per job, how long the decode of the fake inventory took, what Flux's job
list says (how long submitting took, the median wait from submit to run), and for the engine
the time ``open()`` took and the reactor iterations per job; the summary of each size gives
the ratio of each method's best and median to raw's median.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from flux_throughput import (  # this script's directory is on sys.path
    MARK,
    broker_pids,
    flux_cpu_seconds,
    import_flux,
)

ENSEMBLE = re.compile(r"ensemble(-off|-ahead|-depend|-k(\d+))?$")

# --shapes mixed: (share of the jobs, ranks, cores per rank, nodes, exclusive); a node of
# C cores is taken whole by the last two.
SHAPES = {
    "single": [(1.0, 1, 1, None, False)],
    "mixed": [
        (0.70, 1, 1, None, False),
        (0.20, 1, 8, None, False),
        (0.08, 1, 0, 1, True),  # 0 cores per rank: the whole node
        (0.02, 4, 0, 4, True),
    ],
}


def shapes(name: str, n: int, cores: int) -> list[tuple[int, int, int | None, bool]]:
    """The shape (ranks, cores per rank, nodes, exclusive) of each of ``n`` jobs, interleaved."""
    table = SHAPES[name]
    out = []
    credit = [0.0] * len(table)
    for _ in range(n):
        for i, (share, *_rest) in enumerate(table):
            credit[i] += share
        i = max(range(len(table)), key=lambda j: credit[j])
        credit[i] -= 1
        _, ranks, per, nodes, exclusive = table[i]
        out.append((ranks, per or cores, nodes, exclusive))
    return out


def rss_mib() -> float:
    """This process's resident memory now, in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def raw_specs(
    flux: Any, jobs: list[tuple[int, int, int | None, bool]], duration: str, ranked: int = 0
) -> list[str]:
    """The raw method's jobspecs (made before the clock starts); ``ranked``: the number of
    nodes, over which the jobs are spread by a rank constraint each, in turn (what the
    engine's jobs carry, without the engine's accounting)."""
    templates = {}
    for shape in set(jobs):
        ranks, per, nodes, exclusive = shape
        spec = flux.job.JobspecV1.from_command(
            ["true"], num_tasks=ranks, cores_per_task=per, num_nodes=nodes, exclusive=exclusive
        )
        spec.setattr("system.exec.test.run_duration", duration)
        templates[shape] = spec
    if not ranked:
        dumped = {shape: spec.dumps() for shape, spec in templates.items()}
        return [dumped[shape] for shape in jobs]
    specs = []
    for i, shape in enumerate(jobs):
        width = shape[2] or 1
        first = min(i % ranked, ranked - width)
        ranks = f"{first}-{first + width - 1}" if width > 1 else str(first)
        templates[shape].setattr("system.constraints", {"ranks": [ranks]})
        specs.append(templates[shape].dumps())
    return specs


def raw(flux: Any, specs: list[str]) -> None:
    """Every job submitted pipelined, each waited for as its id comes."""
    h = flux.Flux()
    left, failed = [len(specs)], []

    def waited(future: Any) -> None:
        if not future.get_status().success:
            failed.append(future)
        left[0] -= 1
        if left[0] == 0:
            h.reactor_stop()

    def submitted(future: Any) -> None:
        flux.job.wait_async(h, future.get_id()).then(waited)

    for spec in specs:
        flux.job.submit_async(h, spec, waitable=True, novalidate=True).then(submitted)
    h.reactor_run()
    assert not failed, f"{len(failed)} jobs failed"


async def ensemble(
    jobs: list[tuple[int, int, int | None, bool]],
    duration: str,
    run_dir: Path,
    figures: dict[str, Any],
    ahead: bool | str | None = None,
    partitions: int = 1,
) -> None:
    from matensemble import Ensemble, Resources, Task
    from matensemble.backends.flux import FluxBackend

    tasks = [
        Task(
            id=f"t{i}",
            command=("true",),
            resources=Resources(ranks=r, cores_per_rank=c, nodes=nodes, exclusive=excl),
        )
        for i, (r, c, nodes, excl) in enumerate(jobs)
    ]
    # None: the backend's default (``"auto"``; a baseline before it knew none: ``False``).
    options = {} if ahead is None else {"queue_ahead": ahead}
    backend = FluxBackend(
        **options,
        partitions=partitions,
        attributes={"exec.test.run_duration": duration},
    )
    opening = backend.open

    async def timed_open(*args: Any) -> Any:
        t0 = time.perf_counter()
        nodes = await opening(*args)
        figures["open"] = time.perf_counter() - t0
        return nodes

    backend.open = timed_open  # type: ignore[method-assign]
    summary = await Ensemble(tasks, backend=backend, run_dir=run_dir).run()
    failed = [(t.id, t.resources, r.reason) for t in tasks if (r := summary.results[t.id]).reason]
    assert summary.counts["succeeded"] == len(jobs), (summary.counts, failed[:5])
    channels = [backend._parent] + [p.channel for p in backend._partitions]
    bridges = [c.bridge for c in channels if c is not None]
    figures["iterations"] = sum(b.iterations for b in bridges)


def inner(method: str, n: int, cores: int, shape: str, duration: str) -> None:
    """Run one method in the enclosing (fake) instance; print its figures as one JSON line."""
    flux = import_flux()
    import matensemble.backends.flux  # noqa: F401 - imported before the clock starts
    from matensemble import Ensemble  # noqa: F401
    from matensemble.backends.flux_inventory import read_inventory

    h = flux.Flux()
    status = h.rpc("sched.resource-status").get()
    t0 = time.perf_counter()
    nodes, _ = read_inventory(status, driver_rank=0)
    figures: dict[str, Any] = {"method": method, "n": n, "nodes": len(nodes)}
    figures["inventory"] = time.perf_counter() - t0
    jobs = shapes(shape, n, cores)
    brokers = broker_pids()
    rss0 = rss_mib()
    if method.startswith("raw"):
        specs = raw_specs(flux, jobs, duration, len(nodes) if method == "raw-ranked" else 0)
    with tempfile.TemporaryDirectory() as tmp:
        cpu0, (own0, shells0) = time.process_time(), flux_cpu_seconds(brokers)
        t0 = time.perf_counter()
        found = ENSEMBLE.match(method)
        if method in ("raw", "raw-ranked"):
            raw(flux, specs)
        elif found:
            modes: dict[str, bool | str] = {"-off": False, "-ahead": True, "-depend": "depend"}
            ahead = modes.get(found.group(1) or "")
            k = int(found.group(2) or 1)
            asyncio.run(ensemble(jobs, duration, Path(tmp) / "run", figures, ahead, k))
        else:
            raise SystemExit(f"unknown method {method}")
        seconds = time.perf_counter() - t0
        cpu, (own, shells) = time.process_time() - cpu0, flux_cpu_seconds(brokers)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    figures.update(
        seconds=seconds,
        driver_cpu=cpu,
        broker_cpu=own - own0 + shells - shells0,
        rss0=rss0,
        peak_rss=peak,
    )
    figures.update(flux_times(flux, h))
    print(MARK + json.dumps(figures), flush=True)


def flux_times(flux: Any, h: Any) -> dict[str, float]:
    """From Flux's own job list: how long submitting took (first to last ``submit``), the
    median wait from submit to run, and the span from the first submit to the last job's end."""
    attrs = ["t_submit", "t_run", "t_inactive"]
    jobs = flux.job.JobList(h, max_entries=0, attrs=attrs, filters=["inactive"]).jobs()
    submits = [j.t_submit for j in jobs]
    if not submits:
        return {}
    return {
        "submitting": max(submits) - min(submits),
        "wait": statistics.median(j.t_run - j.t_submit for j in jobs if j.t_run),
        "span": max(j.t_inactive for j in jobs) - min(submits),
    }


def fresh(method: str, args: argparse.Namespace, nodes: int) -> dict[str, Any]:
    """A fresh one-broker instance with ``nodes`` fake nodes; run one method in it."""
    command = [
        "flux",
        "start",
        f"--conf=fake-resources.nnodes={nodes}",
        f"--conf=fake-resources.cores-per-node={args.cores}",
    ]
    if args.sched != "fluxion":
        command.append(f"--conf=modules.alternatives.sched=sched-{args.sched}")
    command += [sys.executable, __file__, "--inner", method, "--jobs", str(args.jobs)]
    command += ["--cores", str(args.cores), "--shapes", args.shapes, "--duration", args.duration]
    done = subprocess.run(command, capture_output=True, text=True, timeout=3600, check=False)
    for line in done.stdout.splitlines():
        if line.startswith(MARK):
            return dict(json.loads(line[len(MARK) :]))
    tail = (done.stdout + done.stderr)[-3000:]
    return {"method": method, "failed": f"exit {done.returncode}: {tail}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", default="16,128,1024", help="sizes, comma-separated")
    parser.add_argument("--cores", type=int, default=56, help="cores per fake node")
    parser.add_argument("--jobs", type=int, default=10000)
    parser.add_argument("--duration", default="1s", help="each job's exec.test run_duration")
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="single")
    parser.add_argument("--sched", choices=("fluxion", "simple"), default="fluxion")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--methods", default="raw,ensemble,ensemble-depend")
    parser.add_argument("--inner", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.inner, args.jobs, args.cores, args.shapes, args.duration)
        return
    methods = args.methods.split(",")
    version = subprocess.run(["flux", "version"], capture_output=True, text=True).stdout
    print(version.strip())
    print(
        f"{args.jobs} jobs ({args.shapes}), exec.test run_duration {args.duration}, "
        f"{args.cores} cores per fake node, scheduler {args.sched}, {os.cpu_count()} CPUs\n"
    )
    for nodes in (int(x) for x in args.nodes.split(",")):
        runs: dict[str, list[dict[str, Any]]] = {m: [] for m in methods}
        for rep in range(args.reps):
            for method in methods if rep % 2 == 0 else methods[::-1]:
                r = fresh(method, args, nodes)
                runs[method].append(r)
                print(f"  {nodes:5d} nodes  rep {rep + 1}  {line(r, args.jobs)}", flush=True)
        summary(nodes, runs, args.jobs)


def line(r: dict[str, Any], n: int) -> str:
    if "failed" in r:
        return f"{r['method']:<16} FAILED {r['failed']}"
    text = (
        f"{r['method']:<16} {n / r['seconds']:7.1f} jobs/s  driver CPU "
        f"{r['driver_cpu'] / n * 1e3:5.2f} ms/job, peak RSS {r['peak_rss']:6.0f} MiB "
        f"({r['rss0']:.0f} before)  broker CPU {r['broker_cpu'] / n * 1e3:5.2f} ms/job  "
        f"inventory decode {r['inventory'] * 1e3:.1f} ms  load {os.getloadavg()[0]:.1f}"
        f"  Flux: submits over {r.get('submitting', 0):.2f} s, submit->run median "
        f"{r.get('wait', 0) * 1e3:.0f} ms, first submit->last end {r.get('span', 0):.2f} s"
    )
    if "open" in r:
        text += f"  open() {r['open'] * 1e3:.0f} ms, {r['iterations'] / n:.2f} iterations/job"
    return text


def summary(nodes: int, runs: dict[str, list[dict[str, Any]]], n: int) -> None:
    ok = {m: [r for r in rs if "failed" not in r] for m, rs in runs.items()}
    rates = {m: [n / r["seconds"] for r in rs] for m, rs in ok.items() if rs}
    raw_median = statistics.median(rates["raw"]) if "raw" in rates else None
    print(
        f"\n{nodes} nodes: method, jobs/s best / median, ratio to raw's median, medians of"
        " driver CPU, broker CPU per job and peak RSS"
    )
    for m, rs in ok.items():
        if not rs:
            print(f"  {m:<16} failed in every run")
            continue
        best, median = max(rates[m]), statistics.median(rates[m])
        ratio = f"{best / raw_median:.2f} / {median / raw_median:.2f}" if raw_median else "-"
        print(
            f"  {m:<16} {best:7.1f} / {median:7.1f}  ({ratio})  driver "
            f"{statistics.median(r['driver_cpu'] for r in rs) / n * 1e3:.2f} ms, broker "
            f"{statistics.median(r['broker_cpu'] for r in rs) / n * 1e3:.2f} ms, "
            f"{statistics.median(r['peak_rss'] for r in rs):.0f} MiB"
        )
    print()


if __name__ == "__main__":
    main()
