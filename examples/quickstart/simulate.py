"""A small 2D Ising-model Monte Carlo run: one point of the quickstart sweep.

Metropolis sampling on an L x L periodic lattice at temperature T (units of J/k_B), standard
library only. Writes result.json (energy and |magnetisation| per spin) into the current
directory, which MatEnsemble makes the task's own directory.

    python3 simulate.py --temperature 2.25 --seed 1
    python3 simulate.py --selftest
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time


def energy(spins: list[list[int]]) -> float:
    """Energy per spin, counting each bond once (right and down neighbours)."""
    n = len(spins)
    total = sum(
        -s * (row[(j + 1) % n] + spins[(i + 1) % n][j])
        for i, row in enumerate(spins)
        for j, s in enumerate(row)
    )
    return total / n**2


def simulate(temperature: float, seed: int, size: int, sweeps: int) -> dict[str, float]:
    rng = random.Random(seed)
    spins = [[1] * size for _ in range(size)]  # ordered start: equilibrates fast at low T
    # Acceptance probabilities for the only positive energy changes, dE = 4 and 8.
    accept = {4: math.exp(-4 / temperature), 8: math.exp(-8 / temperature)}
    energies, magnetisations = [], []
    for sweep in range(sweeps):
        for _ in range(size * size):
            i, j = rng.randrange(size), rng.randrange(size)
            s = spins[i][j]
            neighbours = (
                spins[(i + 1) % size][j]
                + spins[i - 1][j]
                + spins[i][(j + 1) % size]
                + spins[i][j - 1]
            )
            d_e = 2 * s * neighbours
            if d_e <= 0 or rng.random() < accept[d_e]:
                spins[i][j] = -s
        if sweep >= sweeps // 4:  # discard the first quarter as equilibration
            energies.append(energy(spins))
            magnetisations.append(abs(sum(map(sum, spins))) / size**2)
    return {
        "energy": sum(energies) / len(energies),
        "magnetisation": sum(magnetisations) / len(magnetisations),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temperature", type=float, default=2.25)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--size", type=int, default=24)
    parser.add_argument("--sweeps", type=int, default=800)
    parser.add_argument("--selftest", action="store_true", help="check the model, then exit")
    args = parser.parse_args()
    if args.selftest:
        ground = energy([[1] * 8 for _ in range(8)])
        cold = simulate(0.5, seed=0, size=8, sweeps=40)
        ok = ground == -2.0 and cold["magnetisation"] > 0.99
        print(f"ground-state energy {ground}, |m| at T=0.5: {cold['magnetisation']:.3f}")
        print("selftest", "passed" if ok else "FAILED")
        return 0 if ok else 1
    start = time.perf_counter()
    result = simulate(args.temperature, args.seed, args.size, args.sweeps)
    result |= {"temperature": args.temperature, "seed": args.seed, "size": args.size}
    result["seconds"] = round(time.perf_counter() - start, 3)
    with open("result.json", "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
