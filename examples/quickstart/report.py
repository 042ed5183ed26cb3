"""Summarise the quickstart sweep: one row per temperature, averaged over seeds.

Runs as the ensemble's last task. MATENSEMBLE_TASK_DIR is this task's own directory,
``<run-dir>/tasks/report``; the sweep's results are in its siblings, ``<run-dir>/tasks/*/``.
Prints a table and writes summary.json next to it.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path


def main() -> int:
    task_dir = Path(os.environ.get("MATENSEMBLE_TASK_DIR", os.getcwd()))
    by_temperature: dict[float, list[dict[str, float]]] = defaultdict(list)
    for path in sorted(task_dir.parent.glob("*/result.json")):
        result = json.loads(path.read_text())
        by_temperature[result["temperature"]].append(result)
    if not by_temperature:
        print(f"no results found in {task_dir.parent}/*/result.json", file=sys.stderr)
        return 1

    rows = []
    print(f"{'T':>6} {'runs':>4} {'energy':>9} {'|m|':>7} {'± |m|':>7}")
    for temperature, results in sorted(by_temperature.items()):
        m = [r["magnetisation"] for r in results]
        row = {
            "temperature": temperature,
            "runs": len(results),
            "energy": statistics.fmean(r["energy"] for r in results),
            "magnetisation": statistics.fmean(m),
            "magnetisation_stdev": statistics.stdev(m) if len(m) > 1 else 0.0,
        }
        rows.append(row)
        print(
            f"{temperature:6.3f} {len(results):4d} {row['energy']:9.4f} "
            f"{row['magnetisation']:7.4f} {row['magnetisation_stdev']:7.4f}"
        )
    # |m| falls fastest near the critical temperature (exactly 2.269 for the infinite lattice).
    drops = [
        (a["magnetisation"] - b["magnetisation"], (a["temperature"] + b["temperature"]) / 2)
        for a, b in itertools.pairwise(rows)
    ]
    if drops:
        print(f"steepest drop of |m| near T = {max(drops)[1]:.3f} (Onsager: 2.269)")
    (task_dir / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
