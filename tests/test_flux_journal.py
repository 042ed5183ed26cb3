"""The events-journal stream (``flux_journal``): a stream that ends on its own fails our work.

The channel learns every job's end from one streaming RPC. If Flux ends that stream while the
backend is not closing, no launch in flight could ever be reported: each one is reported
failed at once with a reason that names the cause, and its job is cancelled.
"""

from __future__ import annotations

import time
from pathlib import Path

import anyio
import pytest

from matensemble import Task
from matensemble.backends.flux import FluxBackend
from matensemble.model import TaskState

from backend_harness import opened
from flux_instance import active_jobs, flux_python, flux_uri

__all__ = ["flux_python", "flux_uri"]

pytestmark = pytest.mark.flux


async def test_a_journal_that_ends_on_its_own_fails_the_launches_in_flight_and_cancels_them(
    flux_uri: str, tmp_path: Path
) -> None:
    backend = FluxBackend(flux_uri)
    async with opened(backend, tmp_path) as harness:
        launch = harness.start(Task(id="long", command=("sleep", "60")))
        with anyio.fail_after(20):
            while not active_jobs(flux_uri):  # noqa: ASYNC110 (the broker's state)
                await anyio.sleep(0.05)
        channel = backend._parent
        assert channel is not None
        t0 = time.monotonic()
        await channel.end_journal()  # as if Flux ended it: the backend is not closing
        out = await harness.outcome(launch, within=10)
        assert out.state is TaskState.FAILED
        assert out.reason is not None and "Flux stopped sending job events" in out.reason
        assert time.monotonic() - t0 < 10  # not after the task's 60 s
        with anyio.fail_after(20):
            while active_jobs(flux_uri):  # noqa: ASYNC110 (cancelled before the backend closes)
                await anyio.sleep(0.1)


def job_states(uri: str, name: str) -> list[str]:
    """The states of the instance's jobs named ``name``, ended ones included."""
    import flux
    import flux.job

    filters = ["pending", "running", "inactive"]
    jobs = flux.job.JobList(flux.Flux(uri), filters=filters, max_entries=0).jobs()
    return [str(job.state) for job in jobs if job.name == name]


async def test_a_job_whose_launch_failed_before_its_submit_was_answered_is_cancelled(
    flux_uri: str, tmp_path: Path
) -> None:
    backend = FluxBackend(flux_uri)
    async with opened(backend, tmp_path) as harness:
        launch = harness.start(Task(id="failed-unanswered", command=("sleep", "60")))
        channel = backend._parent
        assert channel is not None
        channel.fail("a test broke the channel")  # before the loop could read the answer
        out = await harness.outcome(launch, within=10)
        assert out.state is TaskState.FAILED and out.job_id is None
        # The job reaches Flux all the same; it must end, before the backend closes.
        with anyio.fail_after(20):
            while (states := job_states(flux_uri, "failed-unanswered")) != ["INACTIVE"]:  # noqa: ASYNC110
                await anyio.sleep(0.1)
        assert states == ["INACTIVE"]
