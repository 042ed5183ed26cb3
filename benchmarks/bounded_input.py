"""What an ensemble file costs to load, per task: the figures behind ``matensemble.limits``.

    python benchmarks/bounded_input.py [--sizes 10000 100000 1000000] [--repeat 1]

For each size N, in a fresh interpreter (so one size's garbage does not count against the
next):

1. ``load_ensemble`` of a file holding one ``[[sweep]]`` of N points (two parameters, a three-
   element command with templates, as in ``docs/ensemble-files.md``): the wall time, the resident
   memory the expanded tasks keep (RSS after minus RSS before, per task) and the peak during the
   load (the process's maximum RSS minus RSS before, per task).
2. The best raw method for the same content, in the same interpreter: a list of N argv tuples
   built with ``itertools.product`` (no ids, tags, validation or dependency checks), so the
   ratio says what the validated ``Task`` objects cost over the bare strings.
3. The refusal of a sweep of 10^12 points (a typo's size): the time to say no, and the memory
   it takes (none: the size is computed from the parameter definitions).

RSS is read from ``/proc/self/statm`` (Linux). Figures vary with load; compare ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """\
[[sweep]]
name = "grid"
id = "p-{{a}}-{{b}}"
command = ["sim", "--a", "{{a}}", "--b", "{{b}}"]
parameters = {{ a = {{ stop = {a} }}, b = {{ linspace = [0.0, 1.0, {b}] }} }}
"""


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def measure_one(n: int, kind: str) -> dict[str, float]:
    """Runs in the child: load (or build raw) N tasks once and report the costs."""
    import itertools

    from matensemble.spec import load_ensemble

    b = 100
    a = n // b
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sweep.toml"
        path.write_text(SWEEP.format(a=a, b=b))
        before = rss()
        t0 = time.perf_counter()
        if kind == "load":
            held: object = load_ensemble(path).tasks
            count = len(held)  # type: ignore[arg-type]
        else:
            values = [float(f"{i / (b - 1):.12g}") for i in range(b)]
            held = [
                ("sim", "--a", str(x), "--b", str(y))
                for x, y in itertools.product(range(a), values)
            ]
            count = len(held)  # type: ignore[arg-type]
        elapsed = time.perf_counter() - t0
        after = rss()
    assert count == a * b
    return {
        "tasks": count,
        "seconds": elapsed,
        "kept_per_task": (after - before) / count,
        "peak_per_task": (peak_rss() - before) / count,
    }


def refusal() -> dict[str, float]:
    from matensemble.errors import SpecError
    from matensemble.spec import parse_ensemble

    text = SWEEP.format(a=1_000_000, b=1_000_000).encode()
    before = rss()
    t0 = time.perf_counter()
    try:
        parse_ensemble(text, source="typo.toml", format="toml")
    except SpecError as e:
        message = str(e)
    else:
        raise AssertionError("a 10^12-point sweep was accepted")
    return {
        "seconds": time.perf_counter() - t0,
        "extra_peak_bytes": max(0, peak_rss() - before),
        "refused": "1,000,000,000,000 points" in message,
    }


def child(args: list[str]) -> dict[str, float]:
    cmd = [sys.executable, __file__, "--child", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = json.loads(out)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=1, help="runs per size; the best is shown")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n = args.child
        figures = refusal() if kind == "refuse" else measure_one(int(n), kind)
        print(json.dumps(figures))
        return

    print(
        f"{'tasks':>9} {'load s':>8} {'us/task':>8} {'kept B/task':>12} {'peak B/task':>12}"
        f" {'raw s':>7} {'raw B/task':>11} {'time x raw':>10} {'mem x raw':>9}"
    )
    for n in args.sizes:
        load = min(
            (child(["load", str(n)]) for _ in range(args.repeat)), key=lambda r: r["seconds"]
        )
        raw = min((child(["raw", str(n)]) for _ in range(args.repeat)), key=lambda r: r["seconds"])
        print(
            f"{load['tasks']:>9,.0f} {load['seconds']:>8.2f} {load['seconds'] / n * 1e6:>8.1f}"
            f" {load['kept_per_task']:>12,.0f} {load['peak_per_task']:>12,.0f}"
            f" {raw['seconds']:>7.2f} {raw['kept_per_task']:>11,.0f}"
            f" {load['seconds'] / raw['seconds']:>10.1f} "
            f"{load['kept_per_task'] / max(raw['kept_per_task'], 1):>9.1f}"
        )
    no = child(["refuse", "0"])
    print(
        f"a sweep of 10^12 points refused in {no['seconds'] * 1e3:.1f} ms, "
        f"{no['extra_peak_bytes'] / 2**20:.1f} MiB more peak memory (refused: {no['refused']})"
    )
    limit = 1_000_000
    print(
        f"at the default ceiling of {limit:,} tasks per file the kept memory is about "
        f"{math.ceil(limit * load['kept_per_task'] / 2**20):,} MiB (from the last size measured)"
    )


if __name__ == "__main__":
    main()
