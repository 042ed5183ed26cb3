"""A call's result is synced to disk before the call is reported finished, unless the run was
made with ``Ensemble(durable=False)``, which syncs nothing (journal and results alike)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from matensemble import Ensemble, LocalBackend

# Loaded by every interpreter started with this folder on PYTHONPATH (the call's worker too):
# it records the path of every file the process syncs, so the test sees the worker's syncs.
_SYNC_RECORDER = """
import os

_fsync = os.fsync


def _recording_fsync(fd):
    log = os.environ.get("SYNC_LOG")
    if log:
        with open(log, "a") as file:
            file.write(os.readlink(f"/proc/self/fd/{fd}") + "\\n")
    return _fsync(fd)


os.fsync = _recording_fsync
"""


def _synced_by_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool) -> list[str]:
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(_SYNC_RECORDER)
    log = tmp_path / f"synced-{durable}.log"
    monkeypatch.setenv("PYTHONPATH", str(hooks))
    monkeypatch.setenv("SYNC_LOG", str(log))
    run_dir = tmp_path / f"run-{durable}"

    async def run() -> int:
        async with Ensemble(backend=LocalBackend(cores=1), run_dir=run_dir, durable=durable) as ens:
            return await ens.call(int, "41") + 1

    assert asyncio.run(run()) == 42
    return log.read_text().split() if log.exists() else []


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_durable_run_syncs_the_result_file_and_its_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = _synced_by_worker(tmp_path, monkeypatch, durable=True)
    task_dir = tmp_path / "run-True" / "tasks" / "int-1"
    assert any(Path(p).name.startswith(".result.json.") for p in synced)  # the data, then
    assert str(task_dir) in synced  # the rename


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd")
def test_a_run_made_with_durable_false_writes_results_without_syncing_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced = _synced_by_worker(tmp_path, monkeypatch, durable=False)
    assert not [p for p in synced if "tasks" in p]
    assert (tmp_path / "run-False" / "tasks" / "int-1" / "result.json").read_text() == "41"
