"""A full file system mid-run: a clean stop with exit code 4, then ``resume`` once space is free.

The run directory lives on a real, tiny tmpfs, which the test fills up from outside while a task
runs. Mounting needs root (CAP_SYS_ADMIN); without it the test is skipped with the reason.
There is no honest stand-in: RLIMIT_FSIZE raises SIGXFSZ/EFBIG, not ENOSPC.
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from matensemble.journal import replay
from matensemble.model import TaskState

from conftest import start_matensemble

ENSEMBLE = """
[[task]]
id = "first"
command = ["true"]

[[task]]
id = "hold"
after = ["first"]
command = ["sh", "-c", "echo holding; until [ -f {gate} ]; do sleep 0.05; done"]

[[sweep]]
id = "rest-{{n}}"
after = ["hold"]
command = ["true"]
parameters = {{ n = {{ start = 0, stop = 10 }} }}
"""


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs mounted for this test only."""
    where = tmp_path / "fs"
    where.mkdir()
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("needs the mount and umount commands to make a small file system")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(where)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {proc.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system is full; return it."""
    filler = directory / "filler"
    with filler.open("wb", buffering=0) as f:
        for chunk in (b"\0" * 65536, b"\0"):  # big pieces, then the last few bytes
            with pytest.raises(OSError) as full:
                while True:
                    f.write(chunk)
            assert full.value.errno == errno.ENOSPC
    return filler


def wait_for(path: Path, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size > 0):  # test side: nothing to wait on
        assert time.monotonic() < end, f"{path} never appeared"
        time.sleep(0.02)


def test_a_full_disk_mid_run_stops_cleanly_with_exit_4_and_resume_continues(
    tmp_path: Path, small_fs: Path
) -> None:
    gate = tmp_path / "gate"
    spec = tmp_path / "e.toml"
    spec.write_text(ENSEMBLE.format(gate=gate))
    run = small_fs / "run"
    proc = start_matensemble("run", spec, "--run-dir", run, cwd=tmp_path)
    wait_for(run / "tasks" / "hold" / "stdout")  # `hold` runs: the journal is open
    filler = fill(small_fs)
    gate.touch()  # `hold` ends now; its result cannot be written
    out, err = proc.communicate(timeout=120)

    assert proc.returncode == 4, out + err
    assert "No space left on device" in err and f"matensemble resume {run}" in err
    assert f"{run}/" in err  # the file that could not be written is named
    assert "Traceback" not in err
    assert not list(run.rglob("*.tmp"))
    past = replay(run)  # the journal ends on a whole event
    assert len(past.tasks) == 12 and len(past.finished) < 12  # stopped before the end

    filler.unlink()
    proc = start_matensemble("resume", run, cwd=tmp_path)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    finished = replay(run).finished
    assert len(finished) == 12
    assert {r.state for r in finished.values()} == {TaskState.SUCCEEDED}
