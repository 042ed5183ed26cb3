"""Where tasks run: one protocol (``base``), one module per backend."""

from __future__ import annotations

TYPE_CHECKING = False  # not from typing: a spawner helper process starts faster

if TYPE_CHECKING:
    from matensemble.backends.base import Backend, Launch, LaunchKey, Outcome
    from matensemble.backends.flux import FluxBackend
    from matensemble.backends.local import LocalBackend
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

# Each public name's module, imported on first use: the simulated backend works without the
# local backend's modules, and a spawner helper (``local_helper``) without the engine's.
_HOME = {
    "Backend": "base",
    "Launch": "base",
    "LaunchKey": "base",
    "Outcome": "base",
    "SimulatedBackend": "simulated",
    "LocalBackend": "local",
    "FluxBackend": "flux",
}


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(name)
    import importlib

    return getattr(importlib.import_module(f"matensemble.backends.{home}"), name)
