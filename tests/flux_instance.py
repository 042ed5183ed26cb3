"""A private Flux instance for tests: ``flux start --test-size=2``, found on PATH only.

Import the fixtures into a test module (``from flux_instance import flux_uri``). They skip
cleanly when no ``flux`` command is on ``PATH`` (CI prepends ``/opt/flux/bin`` when a build is
there) or when its Python bindings cannot be imported by this interpreter.

The instance's initial program prints its URI and then waits for standard input to close, so
the instance ends when the fixture closes that pipe, and also when the test process dies.
"""

from __future__ import annotations

import importlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from matensemble.backends.flux_job import TAKEN_BACK

__all__ = [
    "active_jobs",
    "broker_cores",
    "flux_python",
    "flux_uri",
    "running_instance",
    "start_instance",
    "stop_instance",
]

FLUX = shutil.which("flux")


def _bindings_on_path() -> str | None:
    """Put flux-core's Python directory on ``sys.path``; return why not, or ``None``."""
    if FLUX is None:
        return "no `flux` command on PATH"
    try:
        importlib.import_module("flux.job")
        return None
    except ImportError:
        pass
    out = subprocess.run([FLUX, "env"], capture_output=True, text=True, check=False).stdout
    found = re.search(r'^export PYTHONPATH="([^"]*)"', out, re.MULTILINE)
    for entry in found.group(1).split(":") if found else []:
        # Appended, not put first: sys.path[0] stays the test's own directory, which code
        # under test may pass on to its subprocesses (function workers import from there).
        if entry and entry not in sys.path:
            sys.path.append(entry)
    try:
        importlib.import_module("flux.job")
    except ImportError as exc:
        return f"the Flux Python bindings of {FLUX} cannot be imported here: {exc}"
    return None


@pytest.fixture(scope="session")
def flux_python() -> None:
    """The Flux bindings are importable (no instance needed), or the test is skipped."""
    why = _bindings_on_path()
    if why is not None:
        pytest.skip(why)


def start_instance(
    size: int = 2, statedir: Path | None = None, conf: Sequence[str] = ()
) -> tuple[subprocess.Popen[str], str]:
    """Start ``flux start --test-size=SIZE``; return the process and the instance's URI.

    A test that SIGKILLs the rank-0 broker passes a ``statedir`` of its own: by default the
    broker keeps its content store in ``/var/tmp/flux-XXXXXX``, which only a clean exit removes.
    ``conf``: configuration settings, ``KEY=VALUE`` each (``flux start --conf``), e.g.
    ``fake-resources.nnodes=64`` for an instance whose resources are fake.
    """
    assert FLUX is not None
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 - lives as long as the instance
    options = [f"-Sstatedir={statedir}"] if statedir is not None else []
    options += [f"--conf={setting}" for setting in conf]
    proc = subprocess.Popen(
        [FLUX, "start", f"--test-size={size}", *options, "sh", "-c", 'echo "$FLUX_URI"; exec cat'],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert proc.stdout is not None
    uri = proc.stdout.readline().strip()
    if not uri:
        proc.wait(timeout=30)
        log.seek(0)
        pytest.fail(f"`flux start --test-size={size}` did not start: {log.read()[-2000:]}")
    return proc, uri


def stop_instance(proc: subprocess.Popen[str]) -> None:
    """End the instance: close the initial program's input, then wait for the brokers."""
    if proc.stdin is not None and not proc.stdin.closed:
        proc.stdin.close()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextmanager
def running_instance(size: int = 2, conf: Sequence[str] = ()) -> Iterator[str]:
    """The URI of a private ``flux start --test-size=SIZE``, ended when the block is left."""
    proc, uri = start_instance(size, conf=conf)
    try:
        yield uri
    finally:
        stop_instance(proc)


@pytest.fixture(scope="session")
def flux_uri(flux_python: None) -> Iterator[str]:
    """URI of a private two-broker instance shared by the session's Flux tests."""
    with running_instance(2) as uri:
        yield uri


def active_jobs(uri: str, name: str | None = None) -> list[int]:
    """Ids of pending or running jobs in the instance (optionally only those named ``name``)."""
    import flux
    import flux.job

    handle = flux.Flux(uri)
    jobs = flux.job.JobList(handle, filters=["pending", "running"], max_entries=0).jobs()
    return [int(job.id) for job in jobs if name is None or job.name == name]


def broker_cores(uri: str) -> list[int]:
    """How many cores each broker of the instance at ``uri`` has, rank by rank.

    Every broker of a ``--test-size`` instance has all the cores this process may run on: 2
    each on the 2-core machine these tests were written on, 1 under ``taskset -c 0``, 16 on a
    16-core runner. A test that fills the instance asks here how many tasks that takes.
    """
    import flux

    from matensemble.backends.flux_inventory import read_inventory

    status = flux.Flux(uri).rpc("sched.resource-status").get()
    return [len(node.cores) for node in read_inventory(status, driver_rank=0)[0]]


def eventlog(uri: str, job_id: str) -> list[dict[str, Any]]:
    """The events of a job, from its eventlog in the KVS."""
    import flux
    import flux.job

    text = flux.job.job_kvs_lookup(flux.Flux(uri), int(job_id), keys=["eventlog"])["eventlog"]
    return [json.loads(line) for line in str(text).splitlines()]


def taken_back(uri: str, job_id: str) -> bool:
    """Whether the job was cancelled as taken back (``flux_takeback``); asserts that it was
    then never allocated or started."""
    events = eventlog(uri, job_id)
    if TAKEN_BACK not in [e.get("context", {}).get("note") for e in events]:
        return False
    names = [e["name"] for e in events]
    assert "start" not in names and "alloc" not in names, names
    return True
