"""Where Flux spends its CPU per job, by part of the instance, for flux_throughput.py methods.

CPU time per job moves with the other work on a shared machine; the *share* of it each part
of the instance takes moves less. This runs each method alone in its own fresh
``flux start --test-size=SIZE`` under ``perf record`` (CPU-clock samples of every process of
the instance, so it works without hardware counters), alternating the methods, and prints the
sampled milliseconds per job of the job shells (with their tasks), Fluxion, the KVS and content
store, and the other broker threads:

    PATH=/opt/flux/bin:$PATH uv run python benchmarks/flux_cpu_profile.py --reps 3 \\
        --methods raw-novalidate,raw-ours,raw-ours-norank

The figures cover the instance's whole life (its start, the benchmark's eventlog reading), so
they are above the rusage figures of flux_throughput.py; compare methods with each other.
Needs ``perf`` (Linux perf_events) and ``flux`` on PATH.
"""

from __future__ import annotations

import argparse
import collections
import subprocess
import sys
import tempfile
from pathlib import Path

HZ = 1999
GROUPS = (
    ("job shells", ("flux-shell", "true")),
    ("Fluxion", ("sched-fluxion",)),
    ("KVS + content", ("kvs", "content")),
)
HERE = Path(__file__).resolve().parent


def group_of(comm: str) -> str | None:
    """The part of the instance a thread name belongs to (None: the driver, rc scripts)."""
    for name, prefixes in GROUPS:
        if comm.startswith(prefixes):
            return name
    if comm.startswith("python") or comm in ("flux", "bash", "flux-broker"):
        return None  # the driver, the instance's rc scripts, flux start
    return "other broker threads"


def profile(method: str, n: int, size: int, out: Path) -> dict[str, float]:
    """Run one method under perf; sampled ms per job by part."""
    command = ["flux", "start", f"--test-size={size}", sys.executable]
    command += [str(HERE / "flux_throughput.py"), "--inner", method, "--tasks", str(n)]
    perf = ["perf", "record", "-q", "-F", str(HZ), "-o", str(out), "--", *command]
    subprocess.run(perf, capture_output=True, check=True, timeout=1800)
    report = ["perf", "report", "-i", str(out), "--no-children", "--sort", "comm", "-q"]
    report += ["-g", "none", "-F", "sample,comm"]
    text = subprocess.run(report, capture_output=True, text=True, check=True).stdout
    samples: dict[str, float] = collections.defaultdict(float)
    for line in text.splitlines():
        fields = line.split(None, 1)
        if len(fields) == 2 and fields[0].isdigit():
            part = group_of(fields[1].strip())
            if part is not None:
                samples[part] += int(fields[0]) * 1000 / HZ / n
    return samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--size", type=int, default=2, help="brokers per instance")
    parser.add_argument("--methods", default="raw-novalidate,raw-ours")
    args = parser.parse_args()
    methods = args.methods.split(",")
    parts = [name for name, _ in GROUPS] + ["other broker threads"]
    runs: dict[str, list[dict[str, float]]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for method in methods if rep % 2 == 0 else methods[::-1]:
                found = profile(method, args.tasks, args.size, Path(tmp, "perf.data"))
                runs[method].append(found)
                figures = "  ".join(f"{p} {found.get(p, 0):5.2f}" for p in parts)
                print(f"  rep {rep + 1} {method:<24} {figures} ms/job", flush=True)
    print(
        f"\n{'method':<24} " + "  ".join(f"{p:>22}" for p in parts) + "   (lowest-highest, ms/job)"
    )
    for method, found in runs.items():
        cells = []
        for p in parts:
            values = [r.get(p, 0.0) for r in found]
            cells.append(f"{min(values):.2f}-{max(values):.2f}".rjust(22))
        print(f"{method:<24} " + "  ".join(cells))


if __name__ == "__main__":
    main()
