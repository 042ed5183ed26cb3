"""Python calls from an ensemble file: ``function = "package.module:name"``, ``args``, ``kwargs``.

Such a task runs the worker (``python -m matensemble.worker``) with ``--inline '<json>'``: the
call travels in the command itself (plain data, so the journal records it), and the worker
writes the result into the task's directory (``result.json`` or ``result.pkl``) as for
``ens.call``. Strings in
``args``/``kwargs`` are filled in from the sweep's parameters like ``command`` is; a string that
is exactly one placeholder (``"{T}"``) becomes the parameter's value with its type (a number
stays a number).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Mapping
from typing import Any

import msgspec

from matensemble.functions.worker import WORKER_ARGV

__all__ = ["InlineCall", "check_function_name", "fill", "inline_command"]

_NAME = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
_ONE_PLACEHOLDER = re.compile(r"\{([A-Za-z_]\w*)\}")


class InlineCall(msgspec.Struct, frozen=True, kw_only=True):
    """The call an ensemble-file task makes (the JSON after ``--inline``)."""

    function: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    sys_path: list[str] = []
    mpi: bool = False


def check_function_name(name: object) -> str | None:
    """Why ``name`` is not a ``"package.module:name"`` reference, or ``None`` if it is one."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        return f'function must look like "package.module:name", got {name!r}'
    return None


def fill(value: Any, context: Mapping[str, Any]) -> Any:
    """``value`` with every string's ``{placeholders}`` filled in from ``context``.

    Raises what ``str.format_map`` raises for an unknown placeholder or a bad template.
    """
    if isinstance(value, str):
        whole = _ONE_PLACEHOLDER.fullmatch(value)
        if whole is not None and whole.group(1) in context:
            return context[whole.group(1)]
        return value.format_map(context)
    if isinstance(value, list):
        return [fill(item, context) for item in value]
    if isinstance(value, dict):
        return {key: fill(item, context) for key, item in value.items()}
    return value


def inline_command(call: InlineCall) -> tuple[str, ...]:
    return (
        sys.executable,
        *WORKER_ARGV,
        "--inline",
        msgspec.json.encode(call).decode(),
    )
