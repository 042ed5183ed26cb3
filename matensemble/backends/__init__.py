"""Where tasks run: one protocol (``base``), one module per backend."""

from __future__ import annotations

from matensemble.backends.base import Backend, Launch, LaunchKey, Outcome
from matensemble.backends.simulated import SimulatedBackend

__all__ = [
    "Backend",
    "FluxBackend",
    "Launch",
    "LaunchKey",
    "LocalBackend",
    "Outcome",
    "SimulatedBackend",
]


def __getattr__(name: str) -> object:
    # Imported lazily so that the simulated backend works without the local backend's modules.
    if name == "LocalBackend":
        from matensemble.backends.local import LocalBackend

        return LocalBackend
    if name == "FluxBackend":
        from matensemble.backends.flux import FluxBackend

        return FluxBackend
    raise AttributeError(name)
