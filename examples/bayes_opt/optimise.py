"""Asynchronous Bayesian optimisation over LAMMPS with Optuna's ask/tell and ``ens.call``.

    pip install 'matensemble[mpi,examples]'
    python examples/bayes_opt/optimise.py --trials 20 --parallel 2 --ranks 1,2 --out bo-out

Goal: the initial temperature T and density of a Lennard-Jones fcc lattice such that, after 250
NVE steps, the melt sits at temperature ``--target`` with zero pressure. Each trial runs LAMMPS
(the function ``melt.melt``) on 1 or 2 MPI ranks (``--ranks`` cycles through the list). Up to
``--parallel`` trials run at once; the moment one finishes, its result goes to the optimiser and
a new proposal takes the freed slots (no batch barrier). The script writes ``trials.json`` and
``trace.png`` (objective per trial with the best so far; trials over time per core).
Runs unchanged under Flux: pass ``backend=FluxBackend()`` to the ``Ensemble``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path
from typing import Any

import optuna
from melt import melt

from matensemble import Ensemble, Resources, TaskFailed, TaskRef


def objective(state: dict[str, float], target: float) -> float:
    return (state["temp"] - target) ** 2 + 0.1 * state["press"] ** 2


async def optimise(args: argparse.Namespace) -> list[dict[str, Any]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=args.seed))
    ranks = [int(r) for r in args.ranks.split(",")]
    trials: dict[str, tuple[optuna.Trial, int]] = {}
    records: list[dict[str, Any]] = []

    async with Ensemble(run_dir=args.out / "run") as ens:

        def propose() -> TaskRef:
            trial = study.ask()
            T = trial.suggest_float("T", 0.5, 4.0)
            density = trial.suggest_float("density", 0.6, 1.1)
            n = ranks[trial.number % len(ranks)]
            ref = ens.call(
                melt,
                T,
                density,
                resources=Resources(ranks=n, mpi=True),
                timeout=300,
                id=f"trial-{trial.number}",
            )
            trials[ref.id] = (trial, n)
            return ref

        running = ens.as_completed([propose() for _ in range(min(args.parallel, args.trials))])
        asked = len(running)
        async for ref in running:
            trial, n = trials[ref.id]
            result = ens.result(ref.id)
            assert result is not None
            try:
                state = await ref
            except TaskFailed as error:
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
                print(f"{ref.id} failed: {error}")
                state, value = None, None
            else:
                value = objective(state, args.target)
                study.tell(trial, value)
            if asked < args.trials:  # refill the freed slots at once
                running.add(propose())
                asked += 1
            records.append(
                {
                    "id": ref.id,
                    "trial": trial.number,
                    "params": trial.params,
                    "ranks": n,
                    "state": state,
                    "objective": value,
                    "start": result.start_time,
                    "end": result.end_time,
                    "cores": [c for slot in result.placement for c in slot.cores],
                }
            )
    best = study.best_trial
    print(f"best: trial {best.number} {best.params} objective {best.value:.4g}")
    return records


def plot(records: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = sorted((r for r in records if r["objective"] is not None), key=lambda r: r["trial"])
    t0 = min(r["start"] for r in records)
    fig, (trace, slots) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["trial"] for r in done]
    ys = [r["objective"] for r in done]
    best = [min(ys[: i + 1]) for i in range(len(ys))]
    trace.semilogy(xs, ys, "o", label="trial")
    trace.semilogy(xs, best, "-", label="best so far")
    trace.set_xlabel("trial")
    trace.set_ylabel("objective")
    trace.legend()
    colours = plt.get_cmap("tab20")
    for r in records:
        for core in r["cores"]:
            slots.barh(
                core,
                r["end"] - r["start"],
                left=r["start"] - t0,
                color=colours(r["trial"] % 20),
                edgecolor="black",
            )
            slots.text(r["start"] - t0, core, f" {r['trial']}", va="center", fontsize=7)
    slots.set_yticks(sorted({c for r in records for c in r["cores"]}))
    slots.set_xlabel("seconds since the first start")
    slots.set_ylabel("core")
    slots.set_title("trials over time per slot")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--ranks", default="1,2", help="MPI ranks per trial, cycled")
    parser.add_argument("--target", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bo-out"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    records = asyncio.run(optimise(args))
    (args.out / "trials.json").write_text(json.dumps(records, indent=1))
    plot(records, args.out / "trace.png")
    print(f"wrote {args.out / 'trials.json'} and {args.out / 'trace.png'}")


if __name__ == "__main__":
    main()
