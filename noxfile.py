"""Developer sessions: ``nox -s tests lint typecheck bench docs``."""

from __future__ import annotations

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
    """ruff: lint and format check."""
    session.install("ruff")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


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
