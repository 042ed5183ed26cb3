"""Results reach every reader in one order, so a reader (the function layer's watcher) can go
on where it stopped instead of reading the whole run again for each awaited call."""

from __future__ import annotations

from pathlib import Path

from matensemble import Ensemble, WarmLocalBackend


async def test_completed_from_start_k_yields_the_results_after_the_first_k(run_dir: Path) -> None:
    async with Ensemble(backend=WarmLocalBackend(cores=1), run_dir=run_dir) as ens:
        for i in range(4):
            assert await ens.call(int, str(i)) == i
        everything = [result.id async for result in ens.completed()]
        later = [result.id async for result in ens.completed(start=2)]
        assert len(everything) == 4
        assert later == everything[2:]
        assert [result.id async for result in ens.completed(start=4)] == []


async def test_calls_awaited_one_by_one_after_a_backlog_each_get_their_own_value(
    run_dir: Path,
) -> None:
    async with Ensemble(backend=WarmLocalBackend(cores=2), run_dir=run_dir) as ens:
        backlog = [ens.call(int, str(i)) for i in range(20)]
        assert [await ref for ref in reversed(backlog)] == list(range(19, -1, -1))
        for i in range(5):  # each await starts a watcher after the results already read
            assert await ens.call(int, str(100 + i)) == 100 + i
        assert await ens.call(sum, backlog) == sum(range(20))
