"""Which running job a launch queued ahead depends on (``queue_ahead="depend"``).

``DependencyChains`` is plain bookkeeping over the jobs a channel submitted; here it is fed
real launches and jobs, without a broker (the broker side is in test_flux_queue_ahead.py).
"""

from __future__ import annotations

from pathlib import Path

from matensemble.backends.base import Launch
from matensemble.backends.flux_chains import WAIT, DependencyChains
from matensemble.backends.flux_job import FluxJob
from matensemble.model import Resources, Slot, Task
from matensemble.resources import NodeSpec

NODES = [NodeSpec("a", (0, 1)), NodeSpec("b", (0, 1))]


def launch(task_id: str, *slots: Slot, cores: int = 1, estimate: float | None = None) -> Launch:
    task = Task(
        id=task_id,
        command=("true",),
        resources=Resources(cores_per_rank=cores),
        estimate=estimate,
    )
    return Launch(task=task, attempt=1, placement=slots, tasks_dir=Path("/tmp"), run_id="r")


def submitted(chains: DependencyChains, job_launch: Launch, jobid: int | None) -> FluxJob:
    after = chains.predecessor(job_launch)
    assert after is not WAIT
    job = FluxJob(job_launch)
    job.jobid = jobid
    chains.add(job, after)
    return job


def parked(chains: DependencyChains, job_launch: Launch) -> FluxJob:
    assert chains.predecessor(job_launch) is WAIT
    job = FluxJob(job_launch)
    chains.park(job)
    return job


def turns(chains: DependencyChains, next_id: int) -> list[tuple[str, FluxJob | None]]:
    """Submit every parked launch whose turn came (as the channel does): (task id, the job
    it depends on), in the order they go."""
    gone = []
    while (due := chains.next_due()) is not None:
        job, after = due
        job.jobid = next_id
        next_id += 1
        chains.add(job, after)
        gone.append((job.launch.task.id, after))
    return gone


def chains_with_two_running_on_a() -> tuple[DependencyChains, FluxJob, FluxJob]:
    chains = DependencyChains()
    chains.add_nodes(NODES)
    first = submitted(chains, launch("t1", Slot("a", (0,))), 101)
    second = submitted(chains, launch("t2", Slot("a", (1,))), 102)
    return chains, first, second


def test_a_launch_that_fits_beside_the_running_jobs_depends_on_none() -> None:
    chains = DependencyChains()
    chains.add_nodes(NODES)
    submitted(chains, launch("t1", Slot("a", (0,))), 101)
    assert chains.predecessor(launch("t2", Slot("a", (1,)))) is None
    assert chains.predecessor(launch("t3", Slot("b", (0,)))) is None


def test_a_launch_behind_a_full_node_depends_on_its_oldest_job_nobody_waits_for() -> None:
    chains, first, second = chains_with_two_running_on_a()
    queued = launch("t3", Slot("a", (0,)))
    assert chains.predecessor(queued) is first
    submitted(chains, queued, 103)
    assert chains.predecessor(launch("t4", Slot("a", (1,)))) is second  # first is awaited


def test_a_job_whose_id_is_not_known_yet_is_not_depended_on() -> None:
    chains = DependencyChains()
    chains.add_nodes(NODES)
    first = submitted(chains, launch("t1", Slot("a", (0,))), None)  # its submit is unanswered
    second = submitted(chains, launch("t2", Slot("a", (1,))), 102)
    assert chains.predecessor(launch("t3", Slot("a", (0,)))) is second
    chains.add(FluxJob(launch("t3", Slot("a", (0,)))), second)
    assert chains.predecessor(launch("t4", Slot("a", (1,)))) is WAIT  # nothing to wait for yet
    first.jobid = 101
    chains.known(first)
    assert chains.predecessor(launch("t4", Slot("a", (1,)))) is first


def test_launches_over_two_nodes_with_gpus_or_of_another_size_wait_for_room() -> None:
    chains, first, _ = chains_with_two_running_on_a()
    both = submitted(chains, launch("t3", Slot("b", (0, 1)), cores=2), 103)
    assert chains.predecessor(launch("t4", Slot("a", (0,)), Slot("b", (0,)))) is WAIT
    wide = launch("t5", Slot("a", (0, 1)), cores=2)
    assert chains.predecessor(wide) is WAIT  # the jobs on a hold one core each
    assert chains.predecessor(launch("t6", Slot("b", (0, 1)), cores=2)) is both  # same size
    chains.ended(first)
    assert chains.predecessor(launch("t7", Slot("a", (0,)), Slot("b", (0,)))) is WAIT  # b full
    chains.ended(both)
    assert chains.predecessor(launch("t8", Slot("a", (0,)), Slot("b", (0,)))) is None


def test_a_gpu_launch_waits_for_a_free_gpu_not_for_a_job() -> None:
    chains = DependencyChains()
    chains.add_nodes([NodeSpec("g", (0, 1, 2, 3), ("0",))])
    gpu_job = submitted(chains, launch("g1", Slot("g", (0,), ("0",))), 101)
    assert chains.predecessor(launch("c1", Slot("g", (1,)))) is None  # cores are free
    assert chains.predecessor(launch("g2", Slot("g", (1,), ("0",)))) is WAIT
    chains.ended(gpu_job)
    assert chains.predecessor(launch("g3", Slot("g", (1,), ("0",)))) is None


def test_parked_launches_go_in_their_order_when_ids_are_known_and_jobs_end() -> None:
    chains = DependencyChains()
    chains.add_nodes(NODES)
    woken: list[int] = []
    chains.wake = lambda: woken.append(1)
    first = submitted(chains, launch("t1", Slot("a", (0,))), None)
    second = submitted(chains, launch("t2", Slot("a", (1,))), None)
    wide = parked(chains, launch("wide", Slot("a", (0, 1)), cores=2))
    narrow = parked(chains, launch("narrow", Slot("a", (0,))))
    beside = parked(chains, launch("beside", Slot("a", (1,)), Slot("b", (0,))))
    assert chains.predecessor(launch("b1", Slot("b", (1,)))) is None  # it fits: no waiting
    assert turns(chains, 200) == [] and not woken
    first.jobid = 101
    chains.known(first)
    assert woken == [1]
    assert turns(chains, 200) == []  # "wide" is first on a and needs both cores: all wait
    chains.ended(first)
    assert turns(chains, 200) == []  # one core is free: not enough for "wide"
    second.jobid = 102
    chains.known(second)
    assert turns(chains, 200) == []
    chains.ended(second)
    assert turns(chains, 200) == [("wide", None)]  # room; "narrow" waits for a known id
    chains.known(wide)
    assert turns(chains, 300) == []  # "narrow" cannot wait for a job of two cores
    filler = submitted(chains, launch("b2", Slot("b", (0, 1)), cores=2), 301)
    assert chains.predecessor(launch("b3", Slot("b", (1,)))) is WAIT  # behind "beside" on b
    chains.ended(filler)
    chains.ended(wide)
    assert turns(chains, 300) == [("narrow", None), ("beside", None)]
    assert (narrow.jobid, beside.jobid) == (300, 301)
    assert chains.predecessor(launch("b4", Slot("b", (1,)))) is None


def test_a_parked_launch_taken_out_lets_the_one_behind_it_go() -> None:
    chains, _, _ = chains_with_two_running_on_a()
    behind_first = submitted(chains, launch("t3", Slot("a", (0,))), 103)
    submitted(chains, launch("t4", Slot("a", (1,))), 104)
    wide = parked(chains, launch("wide", Slot("a", (0, 1)), cores=2))
    after = parked(chains, launch("after", Slot("a", (0,))))
    assert turns(chains, 500) == []
    assert chains.unpark(wide) and not chains.unpark(wide)
    assert turns(chains, 500) == [("after", behind_first)]  # the oldest no one waits for
    assert after.jobid == 500


def test_an_ended_job_frees_its_cores_and_its_place_in_the_chain() -> None:
    chains, first, second = chains_with_two_running_on_a()
    chains.ended(first)
    assert chains.predecessor(launch("t3", Slot("a", (0,)))) is None  # room again
    submitted(chains, launch("t3", Slot("a", (0,))), 103)
    assert chains.predecessor(launch("t4", Slot("a", (1,)))) is second


def test_a_refused_or_cancelled_waiting_job_leaves_its_job_free_to_be_waited_for() -> None:
    chains, first, _ = chains_with_two_running_on_a()
    refused = submitted(chains, launch("t3", Slot("a", (0,))), None)  # waits for first
    assert chains._after[id(refused)] is first
    chains.ended(refused)  # its submit was refused: it held nothing and waits for nothing
    assert chains.predecessor(launch("t4", Slot("a", (0,)))) is first


def test_with_estimates_a_launch_waits_for_the_job_expected_to_end_first() -> None:
    chains = DependencyChains()
    chains.add_nodes(NODES)
    long = submitted(chains, launch("long", Slot("a", (0,)), estimate=100.0), 101)
    short = submitted(chains, launch("short", Slot("a", (1,)), estimate=10.0), 102)
    long.t_start = short.t_start = 1000.0  # the older ends at 1100, the younger at 1010
    assert chains.predecessor(launch("t3", Slot("a", (0,)), estimate=50.0)) is short
    unknown = submitted(chains, launch("unknown", Slot("b", (0,))), 103)  # no estimate
    known = submitted(chains, launch("known", Slot("b", (1,)), estimate=500.0), 104)
    unknown.t_start = known.t_start = 1000.0
    assert chains.predecessor(launch("t4", Slot("b", (0,)))) is known  # an end is known


def test_a_waiting_job_is_expected_to_end_an_estimate_after_the_job_it_waits_for() -> None:
    chains = DependencyChains()
    chains.add_nodes([NodeSpec("a", (0, 1, 2))])
    slow = submitted(chains, launch("slow", Slot("a", (0,)), estimate=100.0), 101)
    fast = submitted(chains, launch("fast", Slot("a", (1,)), estimate=10.0), 102)
    middle = submitted(chains, launch("middle", Slot("a", (2,)), estimate=40.0), 103)
    for job in (slow, fast, middle):
        job.t_start = 1000.0
    queued = submitted(chains, launch("next", Slot("a", (0,)), estimate=20.0), 104)
    assert chains._after[id(queued)] is fast  # fast ends first (1010)
    # ``queued`` (not started) is expected to end at 1010 + 20 = 1030, before ``middle``
    # (1040) and ``slow`` (1100): once nothing waits for it, it is the one to wait for.
    chains.ended(fast)
    assert chains.predecessor(launch("after", Slot("a", (1,)), estimate=5.0)) is queued


def test_a_job_that_ends_with_nobody_waiting_strands_the_one_behind_a_longer_job() -> None:
    chains, long, short = chains_with_two_running_on_a()
    queued = launch("t3", Slot("a", (0,)))
    assert chains.predecessor(queued) is long
    waiting = submitted(chains, queued, 103)
    assert chains.stranded(short) is waiting  # short frees a core; waiting would wait for long
    waiting.t_start = 5.0  # it started after all
    assert chains.stranded(short) is None


def test_nothing_is_stranded_behind_a_job_that_has_a_dependent_or_ended() -> None:
    chains, long, short = chains_with_two_running_on_a()
    behind_long = submitted(chains, launch("t3", Slot("a", (0,))), 103)
    behind_short = submitted(chains, launch("t4", Slot("a", (1,))), 104)
    assert behind_long.jobid and behind_short.jobid
    assert chains.stranded(short) is None  # behind_short takes its cores
    long.t_end = short.t_end = 9.0  # both ended: the two behind them are on their way
    chains.ended(short)
    assert chains.stranded(behind_short) is None
    wide = submitted(chains, launch("t5", Slot("b", (0, 1)), cores=2), 105)
    assert chains.stranded(wide) is None  # no one waits on its node


def test_a_launch_on_free_cores_goes_past_a_larger_one_parked_there() -> None:
    """The engine placed it on a core left free beside a running job, which the larger parked
    launch cannot use yet: it goes at once, and the larger one waits for both to end."""
    chains = DependencyChains()
    chains.add_nodes(NODES)
    running = submitted(chains, launch("x", Slot("a", (0,))), 101)
    wide = parked(chains, launch("wide", Slot("a", (0, 1)), cores=2))
    beside = submitted(chains, launch("z", Slot("a", (1,))), 102)
    chains.ended(running)
    assert turns(chains, 200) == []
    chains.ended(beside)
    assert turns(chains, 200) == [("wide", None)] and wide.jobid == 200
