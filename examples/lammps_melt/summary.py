"""Summarise the melt runs: the last thermo line of each sibling task's log.lammps.

Runs as a MatEnsemble task: $MATENSEMBLE_TASK_DIR is <run-dir>/tasks/summary, so the melt runs
are its siblings. Prints a table and writes summary.json into its own directory.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def last_thermo(log: Path) -> dict[str, float]:
    """The last row of the thermo table (columns Step Temp PotEng TotEng Press)."""
    lines = log.read_text().splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["Step", "Temp"])
    names = lines[header].split()
    rows = []
    for line in lines[header + 1 :]:
        fields = line.split()
        if len(fields) != len(names) or not fields[0].isdigit():
            break
        rows.append(dict(zip(names, map(float, fields), strict=True)))
    return rows[-1]


def main() -> None:
    here = Path(os.environ.get("MATENSEMBLE_TASK_DIR", "."))
    results = {}
    for log in sorted(here.parent.glob("melt-*/log.lammps")):
        results[log.parent.name] = last_thermo(log)
    print(f"{'run':16s} {'T_final':>8s} {'PotEng':>9s} {'TotEng':>9s}")
    for name, row in results.items():
        print(f"{name:16s} {row['Temp']:8.4f} {row['PotEng']:9.4f} {row['TotEng']:9.4f}")
    (here / "summary.json").write_text(json.dumps(results, indent=2))
    if not results:
        raise SystemExit("no melt logs found next to this task")


if __name__ == "__main__":
    main()
