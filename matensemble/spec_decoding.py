"""An ensemble document decoded into ``spec_schema``'s structs, with messages to act on.

msgspec's own message names the field path; this module adds the entry's id, the parameter's
name, a did-you-mean for a misspelt or borrowed key (``ntasks`` means ``ranks``), the line and
column of a syntax error, and refuses what a decoder would silently accept (a JSON key given
twice). It also reads back the order of the file's ``[[task]]``/``[[sweep]]`` entries.
"""

from __future__ import annotations

import difflib
import itertools
import json
import re
from typing import Any, Literal, get_args

import msgspec
from msgspec import Struct

from matensemble.errors import SpecError
from matensemble.spec_schema import (
    Completion,
    EnsembleFile,
    Mode,
    Parameter,
    ParameterRange,
    ResourcesFields,
    Settings,
    Strategy,
    SweepEntry,
    TaskEntry,
    TaskFields,
    Text,
    short,
)

__all__ = ["decode_document", "entry_order"]

# For "did you mean": the struct at an error path's last key, the choices of a Literal field.
_STRUCT_AT: dict[str, type[Struct]] = {
    **{"$": EnsembleFile, "ensemble": Settings, "defaults": TaskFields, "task": TaskEntry},
    **{"sweep": SweepEntry, "resources": ResourcesFields, "parameters": ParameterRange},
}
_CHOICES = {"strategy": Strategy, "completion": Completion, "mode": Mode}
# Names people reach for from other tools, and the field each one means here.
_ALIASES = {
    **{"ntasks": "ranks", "np": "ranks", "tasks": "ranks", "procs": "ranks"},
    **{"cores": "cores_per_rank", "cpus": "cores_per_rank", "cpus_per_rank": "cores_per_rank"},
    **{"cores_per_task": "cores_per_rank", "gpus": "gpus_per_rank"},
    **{"gpus_per_task": "gpus_per_rank", "walltime": "timeout", "time_limit": "timeout"},
    **{"retry": "retries", "max_retries": "retries"},
    **{"depends": "after", "depends_on": "after", "deps": "after", "requires": "after"},
    **{"needs": "after", "environment": "env", "workdir": "cwd", "working_dir": "cwd"},
    **{"dir": "cwd", "directory": "cwd", "cmd": "command", "argv": "command", "args": "command"},
    **{"params": "parameters", "labels": "tags", "runtime": "estimate"},
}
_HEADER = re.compile(rb"^[ \t]*\[\[[ \t]*(task|sweep)[ \t]*\]\]", re.MULTILINE)


def decode_document(data: bytes, source: str, format: Literal["toml", "json"]) -> EnsembleFile:
    """The document ``data`` (the file ``source``) decoded and checked against the schema.

    Raises:
        SpecError: the document is empty, not UTF-8, not valid TOML/JSON, repeats a JSON key, or
            does not fit the schema; the message starts with ``source``.
    """
    if not data.strip():
        raise SpecError(
            f"{source}: the file is empty: it defines no tasks (add a [[task]] or a [[sweep]])"
        )
    decode = msgspec.toml.decode if format == "toml" else msgspec.json.decode
    try:
        doc = decode(data, type=EnsembleFile)
    except msgspec.ValidationError as e:
        raise SpecError(f"{source}: {_explain(str(e), data, decode)}") from None
    except msgspec.DecodeError as e:
        raise SpecError(f"{source}: invalid {format.upper()}: {_with_line(str(e), data)}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{source}: {_not_utf8(data)}") from None
    if format == "json":
        _refuse_duplicate_keys(data, source)
    return doc


def _explain(message: str, data: bytes, decode: Any) -> str:
    """Add the entry's id, the parameter's name and a did-you-mean to a msgspec message."""
    found = re.search(r"at `(\$[^`]*)`", message)
    path = found[1] if found else "$"
    key = re.sub(r"\[[^\]]*\]", "", path).rsplit(".", 1)[-1]
    notes = []
    entry = re.match(r"\$\.(task|sweep)\[(\d+)\]|\$\.(defaults)", path)
    if entry:
        try:
            doc = decode(data)
            raw = doc["defaults"] if entry[3] else doc[entry[1]][int(entry[2])]
            if not entry[3]:
                notes.append(f"{entry[1]} {short(raw.get('name') or raw['id'])}")
            if ".parameters[...]" in path:
                bad = [k for k, v in raw["parameters"].items() if not _converts(v, Parameter)]
                notes += [f"parameter {k!r}" for k in bad[:1]]
            for table in ("env", "tags"):
                if f".{table}[...]" in path:
                    bad = [k for k, v in raw[table].items() if not _converts(v, Text)]
                    notes += [f"{table}[{k!r}] must be a string or a number" for k in bad[:1]]
        except (LookupError, TypeError, AttributeError, msgspec.MsgspecError):
            pass
    unknown = re.search(r"unknown field `([^`]*)`", message)
    if unknown and key == "defaults" and unknown[1] in ("id", "command", "after"):
        notes.append(f"[defaults] cannot set {unknown[1]!r}; set it in each [[task]] or [[sweep]]")
    elif unknown and key in _STRUCT_AT:
        notes += [f"did you mean {c!r}?" for c in _suggest(unknown[1], _STRUCT_AT[key])]
    if path == "$.ensemble.name" and "regex" in message:
        notes.append(
            "the name starts run ids and directory names: use letters, digits and ._+=,@:~- "
            "(at most 100, the first a letter, digit or _)"
        )
    if message.startswith("Invalid enum value") and key in _CHOICES:
        notes.append(f"choose one of: {', '.join(get_args(_CHOICES[key]))}")
    return f"{message} ({'; '.join(notes)})" if notes else message


def _suggest(name: str, struct: type[Struct]) -> list[str]:
    """The field an unknown key probably meant: a known alias, a near spelling, or a prefix."""
    fields = struct.__struct_fields__
    alias = _ALIASES.get(name.lower())
    if alias in fields:
        return [alias]
    close = difflib.get_close_matches(name.lower(), fields, n=1)
    return close or [f for f in fields if f.startswith(name.lower())][:1]


def _converts(value: object, type_: Any) -> bool:
    try:
        msgspec.convert(value, type_)
    except msgspec.ValidationError:
        return False
    return True


def _with_line(message: str, data: bytes) -> str:
    byte = re.search(r"\(byte (\d+)\)", message)
    if byte:
        offset = int(byte[1])
        line = data.count(b"\n", 0, offset) + 1
        column = offset - data.rfind(b"\n", 0, offset)
        message += f" (at line {line}, column {column})"
    elif "truncated" in message:
        lines = data.count(b"\n") + (not data.endswith(b"\n"))
        message += f" (the document is unfinished at the end of the file, line {lines})"
    return message


def _not_utf8(data: bytes) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        return _with_line(
            f"the file is not UTF-8 text: byte {data[e.start]:#04x} (byte {e.start})", data
        )
    return "the file is not UTF-8 text"


def _refuse_duplicate_keys(data: bytes, source: str) -> None:
    """JSON allows a key twice in one object and keeps the last: refuse that, naming the path.

    (TOML forbids it in its grammar.) Only objects that repeat a key are remembered, so this
    costs one plain ``json.loads``.
    """
    repeated: dict[int, str] = {}  # id(object) -> the first key it repeats

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            for key, _ in items:
                if key in seen:
                    repeated[id(obj)] = key
                    break
                seen.add(key)
        return obj

    try:
        root = json.loads(data, object_pairs_hook=pairs)
    except (ValueError, RecursionError):  # msgspec read it; nothing more to learn here
        return
    if not repeated:
        return
    stack: list[tuple[str, Any]] = [("$", root)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, dict):
            if id(node) in repeated:
                key = repeated[id(node)]
                raise SpecError(
                    f"{source}: key {key!r} is given twice in the object at `{path}` (JSON "
                    "would silently keep only the last one)"
                )
            stack.extend((f"{path}.{k}", v) for k, v in node.items())
        elif isinstance(node, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(node))


def entry_order(data: bytes, doc: EnsembleFile, format: str) -> list[tuple[str, int]]:
    """The order of ``[[task]]``/``[[sweep]]`` entries in the file.

    TOML collects each array of tables into one list, so the interleaving is read back from the
    headers; in JSON (and TOML with inline arrays) the ``task`` and ``sweep`` keys keep their order.
    """
    kinds = [m[1].decode() for m in _HEADER.finditer(data)] if format == "toml" else []
    if kinds.count("task") != len(doc.task) or kinds.count("sweep") != len(doc.sweep):
        top = (
            msgspec.json.decode(data, type=dict[str, msgspec.Raw])
            if format == "json"
            else msgspec.toml.decode(data)
        )
        kinds = [
            k for key in top if key in ("task", "sweep") for k in [key] * len(getattr(doc, key))
        ]
    counters = {"task": itertools.count(), "sweep": itertools.count()}
    return [(kind, next(counters[kind])) for kind in kinds]
