"""The Flux backend on a host that refuses write+execute memory (SELinux ``deny_execmem``).

``ffi.callback`` needs such memory for its closure; the bridge then runs its futures through
the bindings' compiled trampoline instead. The driver here runs in a process that set Linux's
``PR_SET_MDWE`` (memory-deny-write-execute, Linux 6.3+), which refuses such memory exactly as
those hosts do.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flux_instance import flux_python, flux_uri

__all__ = ["flux_python", "flux_uri"]

pytestmark = pytest.mark.flux

PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 1

DRIVER = f"""
import asyncio, ctypes, json, sys
import cffi
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0) != 0:
    sys.exit('no PR_SET_MDWE')
try:
    cffi.FFI().callback("void(void *)", lambda p: None)
    sys.exit("ffi.callback still got write+execute memory")
except MemoryError:
    pass
from matensemble import Ensemble, Task
from matensemble.backends.flux import FluxBackend
tasks = [Task(id=f"ok{{i}}", command=["sh", "-c", "echo out-$0", str(i)]) for i in range(20)]
tasks += [Task(id="fails", command=["false"]), Task(id="slow", command=["sleep", "30"], timeout=1)]
summary = asyncio.run(Ensemble(tasks, backend=FluxBackend(), run_dir=sys.argv[1]).run())
print(json.dumps(summary.counts))
"""


def _mdwe_supported() -> bool:
    """Whether this kernel has ``PR_SET_MDWE`` (asked in a child: it cannot be undone)."""
    probe = (
        "import ctypes, sys; "
        f"sys.exit(ctypes.CDLL(None).prctl({PR_SET_MDWE}, {PR_MDWE_REFUSE_EXEC_GAIN}, 0, 0, 0))"
    )
    return subprocess.run([sys.executable, "-c", probe], check=False).returncode == 0


def test_a_driver_without_write_execute_memory_runs_flux_tasks_through_the_bindings_callbacks(
    flux_uri: str, tmp_path: Path
) -> None:
    if not _mdwe_supported():
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+)")
    env = {**os.environ, "FLUX_URI": flux_uri, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run(
        [sys.executable, "-c", DRIVER, str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    counts = json.loads(run.stdout.splitlines()[-1])
    assert (counts["succeeded"], counts["failed"], counts["timed_out"]) == (20, 1, 1)
    outputs = sorted((tmp_path / "run" / "tasks").glob("ok*/stdout"))
    assert [p.read_text() for p in outputs] == [f"out-{p.parent.name[2:]}\n" for p in outputs]
    assert len(outputs) == 20
