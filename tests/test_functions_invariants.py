"""Property test: random graphs mixing Python calls and commands keep the invariants, and every
call gets exactly the values of its prerequisites (real processes, warm and cold workers)."""

from __future__ import annotations

import asyncio
import tempfile

import pytest
from call_targets import node_value
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matensemble import Ensemble, Task, TaskFailed, TaskRef, TaskState, WarmLocalBackend

from conftest import InvariantChecker


@st.composite
def graphs(draw: st.DrawFn) -> list[tuple[bool, list[int], bool, bool]]:
    """Nodes: (is a call, prerequisites among earlier nodes, fails, warm)."""
    n = draw(st.integers(2, 7))
    return [
        (
            draw(st.booleans()),
            sorted(draw(st.sets(st.integers(0, i - 1), max_size=3))) if i else [],
            draw(st.integers(0, 5)) == 0,
            draw(st.booleans()),
        )
        for i in range(n)
    ]


async def run_graph(nodes: list[tuple[bool, list[int], bool, bool]]) -> None:
    checker = InvariantChecker(cores_per_node=2, gpus_per_node=0)
    ids: list[str] = []
    refs: dict[int, TaskRef] = {}
    run_dir = tempfile.mkdtemp(prefix="me-func-prop-")
    async with Ensemble(
        backend=WarmLocalBackend(cores=2), run_dir=run_dir, observers=[checker]
    ) as ens:
        for i, (is_call, deps, fails, warm) in enumerate(nodes):
            commands = [ids[d] for d in deps if d not in refs]
            if is_call:
                upstream = [refs[d] for d in deps if d in refs]
                refs[i] = ens.call(node_value, i, upstream, fails, after=commands, warm=warm)
                ids.append(refs[i].id)
            else:
                ids.append(f"cmd-{i}")
                after = [ids[d] for d in deps]  # a command waits for calls by their ids
                ens.submit(Task(id=ids[-1], command=["false" if fails else "true"], after=after))
        expected: dict[int, tuple[TaskState, int | None]] = {}
        for i, (is_call, deps, fails, _) in enumerate(nodes):
            if any(expected[d][0] is not TaskState.SUCCEEDED for d in deps):
                expected[i] = (TaskState.SKIPPED, None)
            elif fails:
                expected[i] = (TaskState.FAILED, None)
            else:
                value = i + sum(expected[d][1] or 0 for d in deps if d in refs)
                expected[i] = (TaskState.SUCCEEDED, value if is_call else None)
        for i, ref in refs.items():
            state, value = expected[i]
            if state is TaskState.SUCCEEDED:
                assert await ref == value
            else:
                with pytest.raises(TaskFailed) as error:
                    await ref
                assert error.value.result.state is state
    for i, task_id in enumerate(ids):
        assert checker.final[task_id] is expected[i][0], (task_id, nodes)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nodes=graphs())
def test_random_graphs_of_calls_and_commands_keep_the_invariants_and_the_values(
    nodes: list[tuple[bool, list[int], bool, bool]],
) -> None:
    asyncio.run(run_graph(nodes))
