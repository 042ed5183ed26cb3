"""A call target that imports nothing itself, to see what the worker imported around it."""

from __future__ import annotations

import sys


def loaded_modules() -> list[str]:
    """The modules the worker had imported when it called this function."""
    return sorted(sys.modules)
