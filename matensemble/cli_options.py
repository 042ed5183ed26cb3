"""The ``matensemble`` command line's options, and the backend they ask for.

Kept apart from the commands (``cli``) so that the docs' tests can parse every command line the
pages show without running anything.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from matensemble import __version__
from matensemble.backends.base import Backend
from matensemble.errors import MatEnsembleError
from matensemble.limits import MAX_CORES_PER_NODE, MAX_GPUS_PER_NODE
from matensemble.spec import EnsembleSpec

__all__ = ["backend_from_options", "build_parser", "walltime"]


def build_parser() -> argparse.ArgumentParser:
    """The ``matensemble`` command line; ``args.command`` names the subcommand."""
    parser = argparse.ArgumentParser(
        prog="matensemble", description="Run ensembles of HPC tasks, event-driven."
    )
    parser.add_argument("--version", action="version", version=f"matensemble {__version__}")
    sub = parser.add_subparsers(required=True, metavar="COMMAND", dest="command")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--backend",
        choices=["local", "flux", "simulated"],
        default="local",
        help="local: this machine (default); flux: the enclosing Flux instance; simulated: a "
        "virtual machine of --cores cores on a virtual clock",
    )
    common.add_argument("--flux-uri", help="the Flux instance to use (default: FLUX_URI)")
    common.add_argument(
        "--reserve-driver-cores",
        type=int,
        default=0,
        help="flux: keep this many cores of the driver's node free for the driver",
    )
    common.add_argument(
        "--flux-partitions",
        type=int,
        default=1,
        help="flux: run the tasks in this many child Flux instances, each with its own "
        "scheduler (default 1: in the enclosing instance)",
    )
    ahead = common.add_mutually_exclusive_group()
    ahead.add_argument(
        "--queue-ahead",
        action="store_const",
        const=True,
        default="auto",  # the backends' own default: queue ahead for short tasks only
        help="local and flux: launch each core's (flux: each slot's) next task behind the "
        "running one, started the moment that one ends, whatever the tasks take (the default "
        "does this while they run under 0.5 s on average)",
    )
    ahead.add_argument(
        "--queue-ahead-depend",
        dest="queue_ahead",
        action="store_const",
        const="depend",
        help="flux: as --queue-ahead, each queued job also depending on the running job it "
        "waits for (flux's default does this while the tasks run under 0.5 s on average and "
        "Flux starts them on time)",
    )
    ahead.add_argument(
        "--no-queue-ahead",
        dest="queue_ahead",
        action="store_const",
        const=False,
        help="local and flux: never queue ahead, not even for short tasks",
    )
    common.add_argument(
        "--local-spawners",
        choices=["threads", "processes"],
        help="local: who starts the tasks: a helper process per core (default; per group of "
        "cores: --local-cores-per-helper), or worker threads of the driver",
    )
    common.add_argument(
        "--local-cores-per-helper",
        type=int,
        metavar="K",
        help="local: a helper process per K cores (default: 1 up to 128 cores, then as many "
        "as keep the helpers at most 128); not with --local-spawners threads",
    )
    common.add_argument(
        "--cores",
        type=int,
        help="local: use at most this many cores; simulated: the size of its one node",
    )
    common.add_argument(
        "--gpus",
        help="local: GPUs to use, a count or a comma-separated list of ids; simulated: a count",
    )
    common.add_argument(
        "--strategy",
        choices=["fifo", "priority", "longest-first", "gpu-first"],
        help="submission order (default: the file's, else fifo)",
    )
    common.add_argument(
        "--no-backfill", action="store_true", help="strict order: a task that does not fit blocks"
    )
    common.add_argument("--completion", choices=["adaptive", "waves"], help="completion handling")
    common.add_argument(
        "--walltime",
        type=walltime,
        help="stop by then, [[HH:]MM:]SS from the start: tasks whose estimate would end later "
        "are not started, running ones are cancelled at the end; resume continues",
    )
    common.add_argument("--no-progress", action="store_true", help="no live progress display")

    run = sub.add_parser("run", parents=[common], help="run an ensemble file (TOML or JSON)")
    run.add_argument("file", type=Path, help="ensemble file (.toml or .json)")
    run.add_argument("--run-dir", type=Path, help="where the run's files go (default runs/<id>)")

    resume = sub.add_parser(
        "resume",
        parents=[common],
        help="continue a run that was stopped or crashed (succeeded tasks are not run again)",
    )
    resume.add_argument("run_dir", type=Path, help="the run directory to continue")
    resume.add_argument(
        "--file",
        type=Path,
        help="the ensemble file; its tasks must match the journal's (checked), new ones need "
        "--add-new",
    )
    resume.add_argument("--add-new", action="store_true", help="add the file's new tasks")
    resume.add_argument(
        "--allow-backend-change",
        action="store_true",
        help="resume on another kind of backend than the run's (results of a simulated "
        "session never count on a real backend: those tasks run again)",
    )

    status = sub.add_parser("status", help="show the state of a run (also while it runs)")
    status.add_argument("run_dir", type=Path)
    status.add_argument("--json", action="store_true", help="print status.json as it is")

    report = sub.add_parser(
        "report",
        help="draw a run: timeline, utilisation, state counts, failures (PNG and HTML)",
        description="Write report.png and report.html (one offline file) from the run's "
        "journal; also while the run is going, and for a crashed run. The PNG needs "
        "matplotlib: pip install 'matensemble[report]'.",
    )
    report.add_argument("run_dir", type=Path, help="the run directory (holds journal.jsonl)")
    report.add_argument("-o", "--output", type=Path, help="where to write (default RUN_DIR/report)")
    report.add_argument("--no-png", action="store_true", help="the HTML report only")
    return parser


def walltime(text: str) -> float:
    """Seconds from ``SS``, ``MM:SS`` or ``HH:MM:SS`` (fractions allowed in the seconds)."""
    try:
        parts = [float(p) for p in text.split(":")]
    except ValueError:
        parts = []
    if not 1 <= len(parts) <= 3 or not all(0 <= p < math.inf for p in parts):  # nan, inf
        raise argparse.ArgumentTypeError(f"{text!r} is not a walltime like 3600, 59:30 or 11:50:00")
    seconds = 0.0
    for part in parts:
        seconds = seconds * 60 + part
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the walltime must be more than zero")
    return seconds


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _refuse_options_of_other_backends(args: argparse.Namespace) -> None:
    """An option for a backend that has no such setting is a mistake, not a no-op: refused,
    naming the option and the backend, before anything runs."""
    backend = args.backend

    def refuse(option: str, takes: str, hint: str = "") -> None:
        raise MatEnsembleError(f"{option} applies to {takes} only, not --backend {backend}{hint}")

    if args.local_spawners is not None and backend != "local":
        refuse("--local-spawners", "the local backend")
    if args.local_cores_per_helper is not None:
        if backend != "local":
            refuse("--local-cores-per-helper", "the local backend")
        if args.local_spawners == "threads":
            raise MatEnsembleError(
                "--local-cores-per-helper applies to helper processes, not --local-spawners threads"
            )
        if args.local_cores_per_helper < 1:
            raise MatEnsembleError(
                f"--local-cores-per-helper must be at least 1, got {args.local_cores_per_helper}"
            )
    if args.queue_ahead == "depend" and backend != "flux":
        refuse(
            "--queue-ahead-depend",
            "the flux backend",
            "; give --queue-ahead" if backend == "local" else "",
        )
    if args.queue_ahead in (True, False) and backend not in ("local", "flux"):
        option = "--queue-ahead" if args.queue_ahead else "--no-queue-ahead"
        refuse(option, "the local and flux backends")
    if backend == "flux":  # Flux runs the tasks on its instance's resources, not on a count
        for option, given in (("--cores", args.cores is not None), ("--gpus", args.gpus)):
            if given:
                refuse(
                    option,
                    "the local and simulated backends",
                    ": Flux runs the tasks on the resources of its instance (size it with "
                    "flux alloc or flux batch; --reserve-driver-cores keeps cores for the driver)",
                )
    else:  # forgotten `--backend flux`: the run must not go local instead
        for option, given in (
            ("--flux-uri", args.flux_uri is not None),
            ("--reserve-driver-cores", args.reserve_driver_cores != 0),
            ("--flux-partitions", args.flux_partitions != 1),
        ):
            if given:
                refuse(option, "the flux backend")


def backend_from_options(args: argparse.Namespace, spec: EnsembleSpec) -> Backend:
    """The backend the options ask for (else the file's ``[ensemble]`` settings).

    Raises ``MatEnsembleError`` naming the option, or the file's field, for a count below one,
    more cores than this process may use, a malformed GPU list such as ``a,,b`` or ``-1``, or an
    option of another backend (``--local-spawners`` with ``--backend flux``) or of other spawners
    (``--local-cores-per-helper`` without ``--local-spawners processes``). The launch options
    (``--queue-ahead``, ``--local-spawners``, ``--local-cores-per-helper``) keep the backend's
    kind (``name``), so a resume takes them without ``--allow-backend-change``.
    """
    _refuse_options_of_other_backends(args)
    cores: int | None = args.cores
    cores_from = "--cores"
    if cores is None:
        cores, cores_from = spec.cores, f"{spec.source}: $.ensemble.cores"
    if cores is not None and cores < 1:
        raise MatEnsembleError(f"{cores_from} must be at least 1, got {cores}")
    gpus: int | list[str] | None = spec.gpus
    gpus_from = f"{spec.source}: $.ensemble.gpus"
    if args.gpus is not None:
        text, gpus_from = args.gpus.strip(), "--gpus"
        hint = "give a count (e.g. 2) or distinct ids separated by commas (e.g. 0,1)"
        if text.isascii() and text.isdigit():
            gpus = int(text)
        else:
            ids = [g.strip() for g in text.split(",")]
            if not all(ids):
                raise MatEnsembleError(f"--gpus {args.gpus!r} has an empty id; {hint}")
            if any(g.startswith("-") for g in ids):
                raise MatEnsembleError(f"--gpus {args.gpus!r}: a count cannot be negative; {hint}")
            if len(ids) == 1 and _is_number(text):  # 1e8, 2.0: a count, not one GPU's id
                raise MatEnsembleError(f"--gpus {args.gpus!r} is not a whole count; {hint}")
            if len(set(ids)) != len(ids):
                raise MatEnsembleError(f"--gpus {args.gpus!r} repeats an id; {hint}")
            gpus = ids
    if args.backend == "flux":
        from matensemble.backends.flux import FluxBackend

        if args.reserve_driver_cores < 0:
            raise MatEnsembleError("--reserve-driver-cores must be >= 0")
        if args.flux_partitions < 1:
            raise MatEnsembleError(f"--flux-partitions must be >= 1: {args.flux_partitions}")
        if args.flux_partitions > 1 and args.reserve_driver_cores:
            raise MatEnsembleError("--reserve-driver-cores cannot be combined with partitions")
        return FluxBackend(
            uri=args.flux_uri,
            reserve_driver_cores=args.reserve_driver_cores,
            partitions=args.flux_partitions,
            queue_ahead=args.queue_ahead,
        )
    # Bounded before any backend builds one id per core or GPU (a typo must not eat the node).
    MAX_GPUS_PER_NODE.check(gpus if isinstance(gpus, int) else len(gpus or []), gpus_from)
    if args.backend == "simulated":
        from matensemble.backends.simulated import SimulatedBackend

        MAX_CORES_PER_NODE.check(cores or 8, cores_from)
        return SimulatedBackend(1, cores or 8, gpus if isinstance(gpus, int) else len(gpus or []))
    from matensemble.backends.local import LocalBackend

    try:
        return LocalBackend(
            cores=cores,
            gpus=gpus,
            queue_ahead=args.queue_ahead,
            spawners=args.local_spawners or "processes",
            cores_per_helper=args.local_cores_per_helper,
        )
    except (ValueError, TypeError) as exc:
        raise MatEnsembleError(
            f"{gpus_from if 'gpus' in str(exc) else cores_from}: {exc}"
        ) from None
