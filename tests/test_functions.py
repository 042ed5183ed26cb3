"""Python functions as tasks: values along edges, failures, decorators, safety of result files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import numpy as np
import pytest
from call_targets import Point, a_lock, add, echo, environment, fail, sleep, total

from matensemble import Ensemble, Resources, Task, TaskFailed, TaskState, task
from matensemble.backends.local import LocalBackend
from matensemble.errors import MatEnsembleError, ResultUnavailable, SerialisationError, TaskRejected
from matensemble.journal import replay

MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(Path(sys.executable).parent))


def local() -> LocalBackend:
    return LocalBackend(cores=2, kill_grace=1.0)


async def test_values_round_trip_as_json_or_pickle(run_dir: Path) -> None:
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        plain = ens.call(echo, {"a": [1, 2.5, None, True, "x"]})
        array = ens.call(add, np.arange(4.0), np.ones(4))
        point = ens.call(echo, Point(1.5, ("t", 2)))
        big = ens.call(echo, 2**80)
        assert await plain == {"a": [1, 2.5, None, True, "x"]}
        np.testing.assert_array_equal(await array, np.arange(4.0) + 1)
        assert await point == Point(1.5, ("t", 2))
        assert await big == 2**80
    files = {p.name for p in (run_dir / "tasks" / plain.id).iterdir()}
    assert {"args.json", "result.json"} <= files  # plain data stays readable
    assert (run_dir / "tasks" / array.id / "result.pkl").exists()


async def test_ids_come_from_the_function_name_and_a_counter_unless_given(run_dir: Path) -> None:
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        first, second = ens.call(add, 1), ens.call(add, 2)
        named = ens.call(add, 3, id="three")
        assert (first.id, second.id, named.id) == ("add-1", "add-2", "three")
        assert await named == 3
        assert ens.result("three") is not None
        assert ens.state("three") is TaskState.SUCCEEDED
        assert named.state is TaskState.SUCCEEDED


async def test_a_ref_says_when_its_call_is_done_and_gives_the_task_result(run_dir: Path) -> None:
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        ref = ens.call(sleep, 0.3)
        assert not ref.done()
        assert ref.task_result is None
        assert await ref == 0.3
        assert ref.done()
        result = ref.task_result
        assert result is not None
        assert result == ens.result(ref.id)
        assert (result.id, result.state) == (ref.id, TaskState.SUCCEEDED)
        assert result.placement  # where it ran
        assert result.runtime is not None and result.runtime >= 0.3


async def test_refs_nested_in_containers_become_edges_and_arrive_as_values(run_dir: Path) -> None:
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        parts = [ens.call(add, i, 10) for i in range(3)]
        nested = ens.call(
            echo, {"list": [parts[0]], "tuple": (parts[1],), "point": Point(0.0, parts[2])}
        )
        summed = ens.call(total, parts)
        value = await nested
        assert value == {"list": [10], "tuple": (11,), "point": Point(0.0, 12)}
        assert await summed == 33.0
        for ref in (nested, summed):
            start = ens.result(ref.id).start_time  # type: ignore[union-attr]
            for part in parts:
                assert ens.result(part.id).end_time <= start  # type: ignore[union-attr,operator]
    added = replay(run_dir).tasks
    assert set(added[nested.id].after) == {p.id for p in parts}
    assert set(added[summed.id].after) == {p.id for p in parts}


async def test_a_failing_call_raises_with_the_remote_traceback_and_skips_dependents(
    run_dir: Path,
) -> None:
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        broken = ens.call(fail, "no convergence")
        after = ens.call(add, broken, 1)
        with pytest.raises(TaskFailed) as info:
            await broken
        assert info.value.remote_type == "ValueError"
        assert info.value.remote_message == "no convergence"
        assert "in fail" in (info.value.remote_traceback or "")
        assert info.value.result.state is TaskState.FAILED
        assert "no convergence" in str(info.value)
        with pytest.raises(TaskFailed) as skipped:
            await after.result()
        assert skipped.value.result.state is TaskState.SKIPPED
        assert "'fail-1'" in str(skipped.value)  # names the prerequisite that failed


async def test_a_call_past_its_timeout_is_killed_and_raises(run_dir: Path) -> None:
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        slow = ens.call(sleep, 30, timeout=0.5)
        with pytest.raises(TaskFailed) as info:
            await slow
        assert info.value.result.state is TaskState.TIMED_OUT


async def test_awaiting_a_cancelled_call_raises(run_dir: Path) -> None:
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        blocker = ens.call(sleep, 30)
        waiting = ens.call(add, blocker, 1)
        ens.cancel(blocker.id)
        with pytest.raises(TaskFailed) as info:
            await blocker
        assert info.value.result.state is TaskState.CANCELLED
        with pytest.raises(TaskFailed):
            await waiting


async def test_decorated_functions_submit_to_their_ensemble(run_dir: Path) -> None:
    @task
    def plain_task(x: int) -> int:
        return x * 2

    @task(timeout=60)
    def square(x: int, timeout: int = 0) -> int:  # a parameter named like an option
        return x * x + timeout

    with pytest.raises(MatEnsembleError, match="inside `async with Ensemble"):
        plain_task(1)
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:

        @ens.function(resources=Resources(cores_per_rank=2))
        def pinned() -> int:
            return len(os.sched_getaffinity(0))

        assert await plain_task(21) == 42
        assert await square(3, timeout=1) == 10
        assert await pinned() == 2
    with pytest.raises(MatEnsembleError):
        plain_task(1)


async def test_as_completed_yields_refs_in_the_order_their_calls_finish(run_dir: Path) -> None:
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        slow, fast = ens.call(sleep, 1.5), ens.call(sleep, 0.1)
        order = [ref.id async for ref in ens.as_completed([slow, fast])]
        assert order == [fast.id, slow.id]
        stream = ens.as_completed([ens.call(add, 1)])
        seen = []
        async for ref in stream:  # a steering loop adds calls while it iterates
            seen.append(await ref)
            if len(seen) < 3:
                stream.add(ens.call(add, seen[-1], 1))
        assert seen == [1, 2, 3]


async def test_command_tasks_and_calls_depend_on_each_other(run_dir: Path) -> None:
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        ens.submit(Task(id="make", command=["sh", "-c", "echo 7 > ../value.txt"]))
        read = ens.call(lambda: int((run_dir / "tasks" / "value.txt").read_text()), after=["make"])
        assert await read == 7
        ens.submit(Task(id="check", command=["true"], after=[read.id]))
    assert ens.result("check").ok  # type: ignore[union-attr]


async def test_unpicklable_arguments_and_results_name_the_task_and_the_path(
    run_dir: Path,
) -> None:
    import threading

    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        with pytest.raises(SerialisationError) as info:
            ens.call(echo, [1, {"lock": threading.Lock()}], id="locked")
        assert info.value.task_id == "locked"
        assert info.value.path == "args[0][1]['lock']"
        assert "'locked'" in str(info.value)
        with pytest.raises(TaskFailed) as failed:
            await ens.call(a_lock)
        assert "result['lock'] cannot be serialised" in str(failed.value)


async def test_the_users_pythonpath_and_the_drivers_path_reach_the_worker(
    run_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path / "extra"), *sys.path[:1]]))
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        seen = await ens.call(environment)
    assert seen["PYTHONPATH"] == os.environ["PYTHONPATH"]  # kept, not overwritten
    assert str(tmp_path / "extra") in seen["sys_path"]
    assert os.path.abspath(sys.path[0]) in seen["sys_path"]


def test_closures_and_lambdas_from_a_main_script_travel_by_value(tmp_path: Path) -> None:
    script = tmp_path / "steer.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            from matensemble import Ensemble
            from matensemble.backends.local import LocalBackend

            def scale(factor):
                def times(x):
                    return x * factor
                return times

            def shifted(x):  # a __main__ function
                return x + OFFSET

            OFFSET = 100

            async def main():
                async with Ensemble(backend=LocalBackend(cores=2), run_dir=sys.argv[1]) as ens:
                    a = ens.call(scale(3), 5)
                    b = ens.call(lambda v: v - 1, a)
                    c = ens.call(shifted, b)
                    print(await a, await b, await c)

            asyncio.run(main())
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["15", "14", "114"]


async def test_a_result_reached_through_a_link_outside_the_run_directory_is_refused(
    run_dir: Path, tmp_path: Path
) -> None:
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        ref = ens.call(echo, "mine", id="value")
        assert await ref == "mine"
        other = ens.call(echo, "other", id="other")
        assert await other == "other"
    # Someone replaces the result by a link to a file elsewhere (which could be any pickle).
    outside = tmp_path / "elsewhere.json"
    outside.write_bytes(msgspec.json.encode("forged"))
    result = run_dir / "tasks" / "value" / "result.json"
    result.unlink()
    result.symlink_to(outside)
    # ... and a whole task directory by a link.
    shutil.move(run_dir / "tasks" / "other", tmp_path / "other")
    (run_dir / "tasks" / "other").symlink_to(tmp_path / "other")
    async with Ensemble(backend=local(), resume=run_dir) as ens:
        with pytest.raises(ResultUnavailable, match="refusing"):
            await ens.call(echo, "mine", id="value")
        with pytest.raises(ResultUnavailable, match="is a link"):
            await ens.call(echo, "other", id="other")


async def test_an_id_reused_for_other_arguments_is_rejected_and_the_same_call_is_shared(
    run_dir: Path,
) -> None:
    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        first = ens.call(add, 1, 2, id="sum")
        assert ens.call(add, 1, 2, id="sum") is first
        with pytest.raises(TaskRejected, match="recorded for another call"):
            ens.call(add, 1, 3, id="sum")
        assert await first == 3


@pytest.mark.mpi
@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
async def test_an_mpi_function_on_two_ranks_returns_rank_zeros_value(run_dir: Path) -> None:
    from call_targets import mpi_fail_on_rank_one, mpi_rank_value

    async with Ensemble(backend=local(), run_dir=run_dir) as ens:
        value = await ens.call(mpi_rank_value, resources=Resources(ranks=2, mpi=True))
        assert value == {"rank": 0, "size": 2, "sum": 3}
        with pytest.raises(TaskFailed) as info:
            await ens.call(mpi_fail_on_rank_one, resources=Resources(ranks=2, mpi=True), timeout=60)
        assert info.value.result.state is TaskState.FAILED
        assert info.value.remote_rank == 1
        assert info.value.remote_message == "rank one gives up"
        assert "mpi_fail_on_rank_one" in (info.value.remote_traceback or "")


def test_an_ensemble_file_sweeps_a_python_function_with_templated_arguments(
    tmp_path: Path,
) -> None:
    (tmp_path / "physics.py").write_text(
        "def energy(T, scale=1.0, label=''):\n"
        "    return {'T': T, 'E': scale * T * T, 'label': label}\n"
    )
    (tmp_path / "ensemble.toml").write_text(
        textwrap.dedent(
            """
            [[sweep]]
            id = "energy-{T}"
            function = "physics:energy"
            args = ["{T}"]
            kwargs = { scale = 2.0, label = "T={T}" }
            parameters = { T = [1, 2.5] }

            [[task]]
            id = "report"
            command = ["cat", "../energy-2.5/result.json"]
            after = ["energy-1", "energy-2.5"]
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, "-m", "matensemble", "run", "ensemble.toml", "--run-dir", "run"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tasks = tmp_path / "run" / "tasks"
    assert msgspec.json.decode((tasks / "energy-1" / "result.json").read_bytes()) == {
        "T": 1,
        "E": 2.0,
        "label": "T=1",
    }
    assert (tasks / "report" / "stdout").read_text() == '{"T":2.5,"E":12.5,"label":"T=2.5"}'


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ('function = "physics"', 'function must look like "package.module:name"'),
        ('function = "a:b"\ncommand = "true"', "either command or function, not both"),
        ('command = "true"\nargs = [1]', "args and kwargs need a function"),
        ('function = "a:b"\nargs = ["{nope}"]', "cannot fill in a template in args/kwargs"),
    ],
)
def test_bad_function_entries_in_an_ensemble_file_are_named(entry: str, message: str) -> None:
    from matensemble.errors import SpecError
    from matensemble.spec import parse_ensemble

    data = f'[[task]]\nid = "t"\n{entry}\n'.encode()
    with pytest.raises(SpecError, match=r"x\.toml: \$\.task\[0\]") as info:
        parse_ensemble(data, source="x.toml", format="toml")
    assert message in str(info.value)


async def test_under_the_simulated_backend_a_call_is_scheduled_but_has_no_value(
    run_dir: Path,
) -> None:
    from matensemble import SimulatedBackend

    async with Ensemble(backend=SimulatedBackend(1, 2), run_dir=run_dir) as ens:
        ref = ens.call(add, 1, 2)
        with pytest.raises(ResultUnavailable, match="the simulated backend does not run calls"):
            await ref
        assert ref.state is TaskState.SUCCEEDED
