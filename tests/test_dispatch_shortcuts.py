"""The dispatcher's shortcuts change no decision: every task starts when and where it would if
each pass looked at every task it reaches one by one.

A pass ends early once every ``Resources`` shape that waits has failed to fit, and puts back runs
of queued tasks of such shapes in one sweep (one slice per run of one shape, unless a queued
task was cancelled or reprioritised since: then one by one). A walltime makes the pass look at
each task (any of them might be held back by the deadline), so a run with a walltime far in the
future is the plain walk; the schedules must be equal.
"""

from __future__ import annotations

import asyncio
import random
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matensemble import Ensemble, Resources, SimulatedBackend, Task, TaskResult, dispatch
from matensemble.model import Placement
from matensemble.node_drain import NodeDrain
from matensemble.record import Record
from matensemble.reservation_planner import ReservationPlanner
from matensemble.resources import ResourcePool
from matensemble.strategies import (
    FIFO,
    CompletionPolicy,
    EnsembleControl,
    GPUFirst,
    LongestFirst,
    Priority,
    SubmissionOrder,
)
from matensemble.strategies.backfill import Reservation

SHAPES = [
    Resources(),
    Resources(ranks=3),
    Resources(gpus_per_rank=1),
    Resources(ranks=8, nodes=1),
    Resources(ranks=2, cores_per_rank=2, gpus_per_rank=1, nodes=1),
    Resources(ranks=12),
]
ORDERS = [FIFO, Priority, LongestFirst, GPUFirst]


@st.composite
def crowds(draw: st.DrawFn, shapes: list[Resources] = SHAPES) -> list[Task]:
    """More tasks than fit at once, of a few shapes, with estimates that are off."""
    n = draw(st.integers(20, 120))
    tasks = []
    for i in range(n):
        estimate = draw(st.sampled_from([1.0, 2.0, 5.0, 9.0, 20.0]))
        tasks.append(
            Task(
                id=f"t{i}",
                command=("sim",),
                resources=draw(st.sampled_from(shapes)),
                estimate=estimate,
                priority=draw(st.integers(-2, 2)),
                after=(f"t{i - 1}",) if i and draw(st.integers(0, 9)) == 0 else (),
                tags={"sim_duration": str(estimate * draw(st.sampled_from([0.5, 1.0, 1.5])))},
            )
        )
    return tasks


class Steering(CompletionPolicy):
    """On some results, cancels a task and reprioritises another (queued ones among them):
    their older entries in the queue go stale, and a pass must step over them one by one."""

    def __init__(self, tasks: list[Task]) -> None:
        self.ids = [t.id for t in tasks]

    def on_result(self, result: TaskResult, ensemble: EnsembleControl) -> None:
        i = int(result.id[1:])
        n = len(self.ids)
        if i % 4 == 0:
            ensemble.cancel(self.ids[(7 * i + 3) % n])
        if i % 3 == 0:
            ensemble.reprioritise(self.ids[(3 * i + 1) % n], i % 5 - 2)


ONE_CORE = Resources()


def sim_task(
    name: str, seconds: float, res: Resources = ONE_CORE, estimate: float | None = None
) -> Task:
    """A simulated task that runs ``seconds``, estimated at ``estimate`` (default: exact)."""
    return Task(
        id=name,
        command=("sim",),
        resources=res,
        estimate=seconds if estimate is None else estimate,
        tags={"sim_duration": str(seconds)},
    )


def schedule(
    tasks: list[Task],
    order: type[SubmissionOrder],
    walltime: float | None,
    completion: CompletionPolicy | None = None,
    machine: tuple[int, ...] = (2, 8, 2),
) -> dict[str, object]:
    """Each task's state, start and placement after a run on a simulated ``machine`` (nodes,
    cores per node, GPUs per node)."""

    async def main() -> list[TaskResult]:
        with tempfile.TemporaryDirectory() as run_dir:
            ens = Ensemble(
                tasks,
                backend=SimulatedBackend(*machine),
                strategy=order(backfill=True),
                completion=completion or CompletionPolicy(),
                run_dir=run_dir,
                walltime=walltime,
                console_log=False,
            )
            await ens.run()
            return [ens.result(t.id) for t in tasks]

    return {r.id: (r.state, r.start_time, r.placement) for r in asyncio.run(main())}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=crowds(), order=st.sampled_from(ORDERS))
def test_every_task_starts_when_and_where_the_plain_walk_would_start_it(
    tasks: list[Task], order: type[SubmissionOrder]
) -> None:
    assert schedule(tasks, order, None) == schedule(tasks, order, 1e9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=crowds(), order=st.sampled_from(ORDERS), window=st.sampled_from([2, 5, 64]))
def test_tasks_cancelled_or_reprioritised_while_queued_change_nothing_else_about_the_schedule(
    tasks: list[Task], order: type[SubmissionOrder], window: int
) -> None:
    # A narrow window makes every task a pass puts back count: one stale task put back, or
    # one live task dropped, would change which tasks the pass reaches.
    saved = dispatch.BACKFILL_WINDOW
    dispatch.BACKFILL_WINDOW = window
    try:
        plain = schedule(tasks, order, 1e9, Steering(tasks))
        assert schedule(tasks, order, None, Steering(tasks)) == plain
    finally:
        dispatch.BACKFILL_WINDOW = saved


class CancelOnResult(CompletionPolicy):
    """Cancels ``victim`` when ``trigger`` ends."""

    def __init__(self, trigger: str, victim: str) -> None:
        self.trigger, self.victim = trigger, victim

    def on_result(self, result: TaskResult, ensemble: EnsembleControl) -> None:
        if result.id == self.trigger:
            ensemble.cancel(self.victim)


def test_a_cancelled_task_among_blocked_ones_does_not_count_against_the_backfill_window() -> None:
    """Two nodes are busy until t=100 but for two cores, one of which frees at t=1; four
    whole-node tasks wait, then a 2-core task that can backfill then. When the core frees, the
    third whole-node task is cancelled: with a window of 3, the pass puts back the three left
    and reaches the 2-core task only if the cancelled one is dropped, not put back."""

    node = Resources(ranks=8, nodes=1)
    tasks = [
        sim_task("a", 100.0, node),
        sim_task("c", 100.0, Resources(ranks=6)),
        sim_task("b", 1.0),
        *(sim_task(f"w{i}", 10.0, node) for i in range(1, 5)),
        sim_task("s", 1.0, Resources(ranks=2)),
    ]
    saved = dispatch.BACKFILL_WINDOW
    dispatch.BACKFILL_WINDOW = 3
    try:
        steered = schedule(tasks, FIFO, None, CancelOnResult("b", "w3"))
        plain = schedule(tasks, FIFO, 1e9, CancelOnResult("b", "w3"))
    finally:
        dispatch.BACKFILL_WINDOW = saved
    assert steered == plain
    assert steered["s"][1] == 1.0  # started when the core freed


class SubmitBatches(CompletionPolicy):
    """Every ``every`` results, submits a batch of ``size`` tasks with random priorities."""

    def __init__(self, seed: int, every: int, size: int, batches: int) -> None:
        self.rng = random.Random(seed)
        self.every, self.size, self.left = every, size, batches
        self.seen = 0
        self.added: list[list[Task]] = []  # per result, in order: what was submitted on it

    def on_result(self, result: TaskResult, ensemble: EnsembleControl) -> None:
        self.seen += 1
        batch: list[Task] = []
        if self.left and self.seen % self.every == 0:
            self.left -= 1
            batch = [_one_second(f"n{self.seen}-{k}", self.rng) for k in range(self.size)]
            ensemble.submit(batch)
        self.added.append(batch)


def _one_second(name: str, rng: random.Random) -> Task:
    return Task(
        id=name,
        command=("sim",),
        estimate=1.0,
        priority=rng.randrange(-5, 6),
        tags={"sim_duration": "1"},
    )


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10**6), every=st.integers(1, 40), size=st.sampled_from([3, 64, 150]))
def test_tasks_submitted_in_batches_large_and_small_start_in_strict_priority_order(
    seed: int, every: int, size: int
) -> None:
    """On one core, each task that starts is the best-ranked of those submitted so far that
    have not started: whether a batch went to the heap or was sorted into a run, and merged
    with what was left of the run before it."""
    rng = random.Random(seed)
    first = [_one_second(f"t{i}", rng) for i in range(100)]
    policy = SubmitBatches(seed, every, size, batches=3)

    async def main() -> list[TaskResult]:
        with tempfile.TemporaryDirectory() as run_dir:
            ens = Ensemble(
                first,
                backend=SimulatedBackend(1, 1),
                strategy=Priority(backfill=True),
                completion=policy,
                run_dir=run_dir,
                console_log=False,
            )
            await ens.run()
            return list(ens.summary().results.values())

    results = asyncio.run(main())
    started = [r.id for r in sorted(results, key=lambda r: r.start_time or 0.0)]
    ready = list(first)  # in submission order
    expected = []
    for k in range(len(results)):
        best = min(ready, key=lambda t: -t.priority)  # the first of the best: submission order
        ready.remove(best)
        expected.append(best.id)
        ready += policy.added[k]
    assert started == expected


def kept_and_built(
    tasks: list[Task], order: type[SubmissionOrder]
) -> tuple[dict[str, object], dict[str, object], int]:
    """The schedule where a blocked head keeps its reservation when it is the same as a new
    one, the schedule where it never does (built anew on each pass), and how often it did."""
    used_again = 0
    same_as_new = Reservation.same_as_new

    def counted(self: Reservation, drain: NodeDrain | None) -> bool:
        nonlocal used_again
        used = same_as_new(self, drain)
        used_again += used
        return used

    try:
        Reservation.same_as_new = counted  # type: ignore[method-assign]
        kept = schedule(tasks, order, None, Steering(tasks))
        Reservation.same_as_new = lambda self, drain: False  # type: ignore[method-assign]
        built = schedule(tasks, order, None, Steering(tasks))
    finally:
        Reservation.same_as_new = same_as_new  # type: ignore[method-assign]
    return kept, built, used_again


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=crowds(), order=st.sampled_from(ORDERS))
def test_a_whole_node_heads_reservation_used_again_gives_the_schedule_of_one_built_anew(
    tasks: list[Task], order: type[SubmissionOrder]
) -> None:
    # A blocked head of one empty node keeps its reservation across passes while the node
    # that empties first is the same (estimates are off, so the shadow time often passes
    # before the head starts, and other tasks start ahead of it).
    kept, built, _ = kept_and_built(tasks, order)
    assert kept == built


def test_a_crowd_of_whole_node_heads_uses_kept_reservations_and_keeps_the_schedule() -> None:
    rng = random.Random(3)
    tasks = [
        Task(
            id=f"t{i}",
            command=("sim",),
            resources=Resources(ranks=8, nodes=1) if i % 5 == 0 else Resources(),
            estimate=(estimate := float(rng.choice([2, 5, 9]))),
            tags={"sim_duration": str(estimate * rng.choice([0.5, 1.0, 1.5]))},
        )
        for i in range(300)
    ]
    kept, built, used_again = kept_and_built(tasks, FIFO)
    assert used_again > 0
    assert kept == built


@pytest.mark.parametrize(("behind", "failed", "plain_failed"), [(0, 0, 100), (10, 2, 101)])
def test_ends_that_free_less_than_a_node_try_no_allocation_for_a_line_of_whole_node_tasks(
    behind: int, failed: int, plain_failed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes of 16 cores full of 1-core tasks (the i-th ending at i + 1 s), then, under
    FIFO, a line of 70 whole-node tasks, longer than the backfill window, and ``behind``
    1-core tasks. Every task starts once, with one allocation that succeeds; what differs is
    how many allocations fail.

    The pass tries none that fails: it ends as soon as the machine is full (every task needs
    a core), so the first pass and each pass that starts a whole-node task stop there; and of
    the 32 ends, the 30 that free a core but not a node do not try to place the head again
    (nor read the line behind it). With tasks of another shape behind the line, a pass must
    read the line up to the window to know that they are out of its reach: the first end on
    each node after the head changed does (the pass before stopped on a full machine
    without reading it), the 14 others on its node do not: ``failed`` = 2.

    The plain walk (a walltime: every pass looks at every entry) fails once in the first
    pass (the head, then the machine is full), once in each of the 30 passes that cannot
    place the head, once after each of the 2 whole-node starts the emptied nodes allow, and
    once after each of the next 67 whole-node starts (the next head is a whole-node task
    that does not fit): 100. With 1-core tasks behind, once more after the 68th and last
    whole-node start (the next head is a 1-core task and the machine is full): 101.
    The schedule is the plain walk's."""

    tasks = [sim_task(f"t{i}", i + 1.0) for i in range(32)]
    tasks += [sim_task(f"t{i}", 100.0, Resources(ranks=16, nodes=1)) for i in range(32, 102)]
    tasks += [sim_task(f"t{i}", 1.0) for i in range(102, 102 + behind)]
    tried = 0
    allocate = ResourcePool.allocate

    def counted(self: ResourcePool, res: Resources) -> Placement | None:
        nonlocal tried
        tried += 1
        return allocate(self, res)

    monkeypatch.setattr(ResourcePool, "allocate", counted)
    fast = schedule(tasks, FIFO, None, machine=(2, 16))
    fast_tried, tried = tried, 0
    plain = schedule(tasks, FIFO, 1e9, machine=(2, 16))  # a walltime: every pass looks at all
    assert fast == plain
    assert fast_tried - len(tasks) == failed
    assert tried - len(tasks) == plain_failed


def _planning_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every dispatcher made from here on hands each start and end to its planner at once."""
    init = dispatch.Dispatcher.__init__

    def eager(self: dispatch.Dispatcher, *args: object) -> None:
        init(self, *args)  # type: ignore[arg-type]
        self._planning = True

    monkeypatch.setattr(dispatch.Dispatcher, "__init__", eager)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tasks=crowds(), order=st.sampled_from(ORDERS))
def test_a_planner_that_takes_in_the_running_tasks_when_a_head_first_blocks_plans_as_one_that_followed_every_start(  # noqa: E501
    tasks: list[Task], order: type[SubmissionOrder]
) -> None:
    late = schedule(tasks, order, None)
    with pytest.MonkeyPatch.context() as monkeypatch:
        _planning_from_the_start(monkeypatch)
        assert schedule(tasks, order, None) == late


@pytest.mark.parametrize(("wide", "fed"), [(False, 0), (True, 31 + 32)])
def test_the_planner_follows_the_running_tasks_only_once_a_head_blocks_under_backfill(
    wide: bool, fed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two nodes of 16 cores full of 1-core tasks (the i-th ending at i + 1 s), then, under
    FIFO with backfill, (``wide``) a whole-node task, and 31 more 1-core tasks. Without the
    wide task no head ever blocks (each pass ends when the machine is full): the planner is
    told of no start. With it, the pass after the first end finds the wide head blocked: from
    then on the planner follows the running tasks: the 31 then running, handed to it at once,
    and the 32 that start later. The schedule is the same as with a planner told of every
    start."""

    tasks = [sim_task(f"t{i}", i + 1.0) for i in range(32)]
    if wide:
        tasks.append(sim_task("wide", 1.0, Resources(ranks=16, nodes=1)))
    tasks += [sim_task(f"u{i}", 1.0) for i in range(31)]
    told = 0
    running = ReservationPlanner.running

    def counted(self: ReservationPlanner, rec: Record, now: float) -> None:
        nonlocal told
        told += 1
        running(self, rec, now)

    monkeypatch.setattr(ReservationPlanner, "running", counted)
    late = schedule(tasks, FIFO, None, machine=(2, 16))
    assert told == fed
    told = 0
    _planning_from_the_start(monkeypatch)
    assert schedule(tasks, FIFO, None, machine=(2, 16)) == late
    assert told == len(tasks)


def test_the_dispatchers_counts_tell_a_run_where_everything_fits_from_one_with_a_blocked_head() -> (
    None
):
    """The scale benchmark reads them to say which regime a case ran in."""

    def counts(tasks: list[Task]) -> tuple[int, int, int, int]:
        backend = SimulatedBackend(1, 4)
        with tempfile.TemporaryDirectory() as run_dir:
            ensemble = Ensemble(tasks, backend=backend, strategy=FIFO(), run_dir=run_dir)
            summary = asyncio.run(ensemble.run())
        assert summary.counts["succeeded"] == len(tasks)
        c = ensemble._dispatch.counts
        return c.passes, c.blocked, c.planned, backend.most_running

    passes, blocked, planned, most = counts([sim_task(f"s{i}", 5.0) for i in range(4)])
    assert (blocked, planned, most) == (0, 0, 4) and passes >= 1
    # Three short tasks run; the whole-node head waits for them, and a fourth short one,
    # queued behind it, may not pass it: ending after the head's reserved start, it would
    # delay it. A reservation is planned for the head.
    tasks = [sim_task(f"s{i}", 5.0) for i in range(3)]
    tasks += [sim_task("w", 5.0, Resources(ranks=4, nodes=1)), sim_task("late", 50.0)]
    passes, blocked, planned, most = counts(tasks)
    assert blocked >= 1 and planned >= 1 and most == 3
    assert passes >= blocked
