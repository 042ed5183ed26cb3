"""Per-call overhead of Python functions as tasks on the local backend, against raw spawning.

    python benchmarks/function_overhead.py [--calls 200] [--fan 1000] [--arrays 20]

In one run, on this machine's cores:
- ``xargs -P <cores>`` spawning ``python -c pass`` N times: the best any new-interpreter-per-call
  method can do;
- N no-op ``ens.call`` calls (cold: a new interpreter per call, ``python -m matensemble.worker``);
- a fan-out/fan-in: ``--fan`` calls whose values one call sums (results along edges);
- the result throughput for 1 MB numpy arrays (``--arrays`` calls, each returns 1 MB).
Figures are calls per second and the ratio to xargs. Warm workers are not implemented yet.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from matensemble import Ensemble, LocalBackend


def noop() -> None:
    return None


def one_megabyte(seed: int) -> np.ndarray:
    return np.full(131072, float(seed))  # 131072 float64 = 1 MiB


def xargs_python(n: int, cores: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        f"seq {n} | xargs -P {cores} -I{{}} {sys.executable} -c pass",
        shell=True,
        check=True,
    )
    return time.perf_counter() - t0


async def cold_calls(n: int, cores: int, root: Path) -> float:
    async with Ensemble(backend=LocalBackend(cores=cores), run_dir=root / "cold") as ens:
        t0 = time.perf_counter()
        refs = [ens.call(noop) for _ in range(n)]
        for ref in refs:
            await ref
        return time.perf_counter() - t0


async def fan_out_in(n: int, cores: int, root: Path) -> tuple[float, float]:
    async with Ensemble(backend=LocalBackend(cores=cores), run_dir=root / "fan") as ens:
        t0 = time.perf_counter()
        parts = [ens.call(int, i) for i in range(n)]
        total = ens.call(sum, parts)
        value = await total
        assert value == n * (n - 1) // 2, value
        return time.perf_counter() - t0, value


async def arrays(n: int, cores: int, root: Path) -> float:
    async with Ensemble(backend=LocalBackend(cores=cores), run_dir=root / "arrays") as ens:
        t0 = time.perf_counter()
        refs = [ens.call(one_megabyte, i) for i in range(n)]
        for i, ref in enumerate(refs):
            assert (await ref)[0] == i
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--fan", type=int, default=1000)
    parser.add_argument("--arrays", type=int, default=20)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    print(f"{cores} cores, python {sys.version.split()[0]}")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        root = Path(d)
        raw = xargs_python(args.calls, cores)
        cold = asyncio.run(cold_calls(args.calls, cores, root))
        print(f"xargs -P{cores} python -c pass: {args.calls / raw:8.1f} calls/s")
        print(
            f"ens.call no-op (cold):         {args.calls / cold:8.1f} calls/s "
            f"(xargs/cold = {cold / raw:.2f}x)"
        )
        fan, _ = asyncio.run(fan_out_in(args.fan, cores, root))
        print(f"fan-out/fan-in {args.fan} calls:  {fan:8.2f} s ({args.fan / fan:.1f} calls/s)")
        mb = asyncio.run(arrays(args.arrays, cores, root))
        print(f"1 MB numpy results:           {args.arrays / mb:8.1f} MB/s ({args.arrays} calls)")


if __name__ == "__main__":
    main()
