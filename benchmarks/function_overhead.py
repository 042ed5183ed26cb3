"""Per-call overhead of Python functions as tasks on the local backend, against raw spawning
and against Parsl and Dask.

    uv run --extra test --with parsl --with distributed \
        python benchmarks/function_overhead.py [--calls 200] [--reps 3] [--fan 1000] [--arrays 20]

In one run, on this machine's cores (2 workers everywhere on a 2-core machine):
- ``xargs -P <cores>`` spawning ``python -c pass`` N times: the best any new-interpreter-per-call
  method can do;
- N no-op ``ens.call`` calls (``int()``, importable by name), cold (a new interpreter per call,
  ``python -m matensemble.worker``) and warm (``WarmLocalBackend``); and cold with a no-op
  defined in ``__main__`` (pickled by value, so the worker also imports cloudpickle);
- N no-op calls through Parsl's HighThroughputExecutor (``python_app``) and Dask's
  ``LocalCluster`` (worker processes), when they are installed (skipped otherwise);
- a fan-out/fan-in: ``--fan`` calls whose values one call sums (results along edges), warm;
- the result throughput for 1 MB numpy arrays (``--arrays`` calls, each returns 1 MB), warm.
Figures are calls per second and ratios. The raw spawning and the cold calls alternate
``--reps`` times (the median and the best of each, the ratio of the medians), as other load on
the machine comes and goes; beside them the CPU time per call (this process and its children:
driver, workers, xargs and its pythons), which such load moves much less. The load average is
printed before and after.

The package is byte-compiled first (``compileall``), as an installed wheel is: with
``PYTHONDONTWRITEBYTECODE`` set and no ``__pycache__``, every cold worker would compile the
package's modules from source, a cost no installed copy pays.
"""

from __future__ import annotations

import argparse
import asyncio
import compileall
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import matensemble
from matensemble import Ensemble, LocalBackend, WarmLocalBackend


def noop() -> None:
    return None


def one_megabyte(seed: int) -> np.ndarray:
    return np.full(131072, float(seed))  # 131072 float64 = 1 MiB


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (the workers, xargs' pythons): a
    figure that other load on the machine moves much less than the wall-clock time."""
    own, children = (
        resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def xargs_python(n: int, cores: int) -> float:
    t0 = time.perf_counter()
    subprocess.run(
        f"seq {n} | xargs -P {cores} -I{{}} {sys.executable} -c pass",
        shell=True,
        check=True,
    )
    return time.perf_counter() - t0


async def calls(
    n: int, cores: int, root: Path, warm: bool, fn: Any = int, args: tuple[Any, ...] = ()
) -> float:
    """``n`` calls of ``fn``: by default ``int()``, a no-op importable by name (by reference);
    ``noop`` from ``__main__`` travels by value (the worker then imports cloudpickle);
    ``divmod(7, 2)`` returns a tuple, which is pickled."""
    backend = WarmLocalBackend(cores=cores) if warm else LocalBackend(cores=cores)
    async with Ensemble(backend=backend, run_dir=root / f"calls-{warm}-{fn.__name__}") as ens:
        t0 = time.perf_counter()
        refs = [ens.call(fn, *args) for _ in range(n)]
        for ref in refs:
            await ref
        return time.perf_counter() - t0


async def fan_out_in(n: int, cores: int, root: Path) -> tuple[float, float]:
    async with Ensemble(backend=WarmLocalBackend(cores=cores), run_dir=root / "fan") as ens:
        t0 = time.perf_counter()
        parts = [ens.call(int, i) for i in range(n)]
        total = ens.call(sum, parts)
        value = await total
        assert value == n * (n - 1) // 2, value
        return time.perf_counter() - t0, value


async def arrays(n: int, cores: int, root: Path) -> float:
    async with Ensemble(backend=WarmLocalBackend(cores=cores), run_dir=root / "arrays") as ens:
        t0 = time.perf_counter()
        refs = [ens.call(one_megabyte, i) for i in range(n)]
        for i, ref in enumerate(refs):
            assert (await ref)[0] == i
        return time.perf_counter() - t0


def parsl_calls(n: int, workers: int, root: Path) -> float | None:
    try:
        import parsl
        from parsl.config import Config
        from parsl.executors import HighThroughputExecutor
        from parsl.providers import LocalProvider
    except ImportError:
        return None
    executor = HighThroughputExecutor(
        label="htex",
        max_workers_per_node=workers,
        provider=LocalProvider(init_blocks=1, max_blocks=1),
    )
    dfk = parsl.load(Config(executors=[executor], run_dir=str(root / "parsl")))
    app = parsl.python_app(noop)
    try:
        app().result()  # the workers are up
        t0 = time.perf_counter()
        for future in [app() for _ in range(n)]:
            future.result()
        return time.perf_counter() - t0
    finally:
        dfk.cleanup()


def dask_calls(n: int, workers: int) -> float | None:
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        return None
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster,
        Client(cluster) as client,
    ):
        client.submit(noop, pure=False).result()  # the workers are up
        t0 = time.perf_counter()
        client.gather(client.map(lambda _: noop(), range(n), pure=False))
        return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--fan", type=int, default=1000)
    parser.add_argument("--arrays", type=int, default=20)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    compileall.compile_dir(Path(matensemble.__file__).parent, quiet=1)
    print(f"{cores} cores, python {sys.version.split()[0]}, load average {os.getloadavg()}")
    with tempfile.TemporaryDirectory(dir="/dev/shm" if os.path.isdir("/dev/shm") else None) as d:
        root = Path(d)
        n = args.calls
        cold_methods: dict[str, Callable[[Path], float]] = {
            f"xargs -P{cores} python -c pass": lambda _: xargs_python(n, cores),
            "ens.call no-op, cold": lambda d: asyncio.run(calls(n, cores, d, warm=False)),
            "  same, function from __main__": lambda d: asyncio.run(
                calls(n, cores, d, warm=False, fn=noop)
            ),
            "  same, divmod(7, 2) (pickled)": lambda d: asyncio.run(
                calls(n, cores, d, False, divmod, (7, 2))
            ),
        }
        times: dict[str, list[float]] = {name: [] for name in cold_methods}
        cpu: dict[str, float] = dict.fromkeys(cold_methods, 0.0)
        for rep in range(args.reps):
            for name, method in cold_methods.items():
                before = cpu_seconds()
                times[name].append(method(root / f"{rep}-{len(times[name])}-{name[-3:]}"))
                cpu[name] += cpu_seconds() - before
        raw_name = next(iter(cold_methods))
        raw, raw_cpu = statistics.median(times[raw_name]), cpu[raw_name]
        print(f"{'':32} {'calls/s':>8} {'best':>8} {'x xargs':>8} {'CPU ms/call':>12} {'x':>6}")
        for name in cold_methods:
            took = statistics.median(times[name])
            per_call = cpu[name] / args.reps / n * 1000
            print(
                f"{name:32} {n / took:8.1f} {n / min(times[name]):8.1f} {took / raw:8.2f} "
                f"{per_call:12.2f} {cpu[name] / raw_cpu:6.2f}"
            )
        warm = asyncio.run(calls(n, cores, root, warm=True))
        parsl_t = parsl_calls(n, cores, root)
        dask_t = dask_calls(n, cores)
        print(f"ens.call no-op, warm:         {n / warm:8.1f} calls/s")
        for name, took in (("Parsl HTEX", parsl_t), ("Dask LocalCluster", dask_t)):
            if took is None:
                print(f"{name}: not installed (uv run --with parsl --with distributed ...)")
            else:
                print(f"{name + ':':30}{n / took:8.1f} calls/s (warm/{name} {took / warm:.2f}x)")
        fan, _ = asyncio.run(fan_out_in(args.fan, cores, root))
        print(f"fan-out/fan-in {args.fan} calls:  {fan:8.2f} s ({args.fan / fan:.1f} calls/s)")
        mb = asyncio.run(arrays(args.arrays, cores, root))
        print(f"1 MB numpy results:           {args.arrays / mb:8.1f} MB/s ({args.arrays} calls)")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
