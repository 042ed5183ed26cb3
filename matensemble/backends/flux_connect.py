"""Finding Flux: its Python bindings, the instance to connect to, and when the allocation ends.

What can go wrong here is the user's setup, not a job: the errors say what to install or where
to run the driver.
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from matensemble.errors import BackendUnavailable

__all__ = ["allocation_end", "connect"]

_INSTALL_HINT = (
    "the Flux Python bindings cannot be imported ({error}). Install them with "
    "`pip install 'matensemble[flux]'` (flux-python, matching your flux-core), or put "
    "flux-core's own Python directory on PYTHONPATH, e.g. "
    "`export PYTHONPATH=\"$(flux python -c 'import flux, os; "
    "print(os.path.dirname(os.path.dirname(flux.__file__)))')\":$PYTHONPATH`"
)
_NO_INSTANCE_HINT = (
    "there is no Flux instance to connect to ({error}). Run the driver inside one: "
    "`flux start python driver.py` on a workstation, `flux alloc -N2` or `flux batch -N2 "
    "script.sh` on a cluster, or pass FluxBackend(uri=...) (see `flux uri --help`)"
)


def connect(uri: str | None) -> tuple[Any, Any]:
    """Import the bindings and open a handle to ``uri`` (default: the enclosing instance).

    Returns the imported ``flux`` package and the handle.

    Raises:
        BackendUnavailable: the bindings are missing, or there is no instance to reach.
    """
    try:
        import flux
        import flux.constants
        import flux.job
    except ImportError as exc:
        raise BackendUnavailable(_INSTALL_HINT.format(error=exc)) from None
    try:
        handle = flux.Flux(uri) if uri else flux.Flux()
    except OSError as exc:
        error = str(exc.strerror or exc)
        if uri is None and "FLUX_URI" not in os.environ:
            error = f"FLUX_URI is not set; {error}"
        raise BackendUnavailable(_NO_INSTANCE_HINT.format(error=error)) from None
    return flux, handle


def allocation_end(flux: Any, handle: Any) -> float | None:
    """The epoch time the enclosing job or instance must end by, or ``None`` if unlimited."""
    try:
        left = float(flux.job.timeleft(handle))
    except (OSError, AttributeError):  # not inside a job (e.g. a plain `flux start`)
        return None
    return time.time() + left if math.isfinite(left) else None
