"""Checks of a task's fields, each raising ``SpecError`` that names the task and the field.

``Task.__post_init__`` runs them, so a task built in Python and one read from a file are refused
with the same words.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Mapping, Sequence

from matensemble.errors import SpecError

__all__ = [
    "MAX_ID_LENGTH",
    "as_tuple",
    "check_positive",
    "check_strings",
    "check_utf8",
    "validate_task_id",
]

MAX_ID_LENGTH = 200
_ID_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._+=,@%:~-]*")


def validate_task_id(task_id: object) -> str:
    """Return ``task_id`` if it is safe as a directory name, else raise ``SpecError``.

    Ids become ``<run-dir>/tasks/<id>/``, so they must not contain path separators, must not be
    ``.``/``..``, must be printable ASCII without spaces, and at most 200 characters long.
    """
    if not isinstance(task_id, str):
        raise SpecError(f"task id must be a string, got {type(task_id).__name__}", field="id")
    if not task_id:
        raise SpecError("task id must not be empty", field="id")
    if len(task_id) > MAX_ID_LENGTH:
        raise SpecError(
            f"task id {task_id[:40]!r}... is {len(task_id)} characters long (at most "
            f"{MAX_ID_LENGTH})",
            field="id",
        )
    if ".." in task_id:
        raise SpecError(f"task id {task_id!r} must not contain '..'", field="id")
    if not _ID_RE.fullmatch(task_id):
        bad = next((c for i, c in enumerate(task_id) if not _ID_RE.fullmatch(task_id[: i + 1])), "")
        raise SpecError(
            f"task id {task_id!r} has a character not allowed in ids: {bad!r} (use letters, "
            "digits and ._+=,@%:~- ; the first character must be a letter, digit or _)",
            field="id",
        )
    return task_id


def check_positive(
    task_id: str, name: str, value: float | None, *, allow_zero: bool = False
) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise SpecError(
            f"task {task_id!r}: {name} must be a finite number of seconds, got {value!r}",
            field=name,
        )
    if value < 0 or (value == 0 and not allow_zero):
        raise SpecError(
            f"task {task_id!r}: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}",
            field=name,
        )


def as_tuple(task_id: str, name: str, value: object, what: str) -> tuple[str, ...]:
    """A Python caller's sequence of strings as a tuple; a lone string is refused, not split."""
    if isinstance(value, tuple):
        items: tuple[object, ...] = value
    elif isinstance(value, str):
        hint = shlex.split(value) if name == "command" and _splits(value) else [value]
        raise SpecError(
            f"task {task_id!r}: {name} must be a list of {what}, not a string (did you mean "
            f"{name}={hint!r}?)",
            field=name,
        )
    elif isinstance(value, Iterable) and not isinstance(value, bytes | bytearray | Mapping):
        items = tuple(value)
    else:
        raise SpecError(
            f"task {task_id!r}: {name} must be a list of {what}, got {type(value).__name__}",
            field=name,
        )
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise SpecError(
                f"task {task_id!r}: {name}[{i}] must be a string, got {type(item).__name__}",
                field=f"{name}[{i}]",
            )
        if "\0" in item:  # the OS would refuse it only at launch, long after the submit
            raise SpecError(
                f"task {task_id!r}: {name}[{i}] contains a NUL character ({item!r})",
                field=f"{name}[{i}]",
            )
    return items  # type: ignore[return-value]  # every item was checked to be a str


def _splits(text: str) -> bool:
    try:
        shlex.split(text)
    except ValueError:
        return False
    return True


def check_utf8(
    task_id: str,
    command: Sequence[str],
    env: Mapping[str, str],
    tags: Mapping[str, str],
    cwd: str | None,
) -> None:
    """Every string must be valid Unicode text, or the journal could not record the task.

    Lone surrogates (what ``os.fsdecode`` makes of bytes that are not UTF-8) are refused here,
    where the message can still name the field.
    """
    fields: list[tuple[str, str]] = [(f"command[{i}]", a) for i, a in enumerate(command)]
    for name, mapping in (("env", env), ("tags", tags)):
        fields += [(f"{name}[{k!r}]", k + v) for k, v in mapping.items()]
    if cwd is not None:
        fields.append(("cwd", cwd))
    for field, text in fields:
        if text.isascii():
            continue
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            raise SpecError(
                f"task {task_id!r}: {field} is not valid Unicode text ({text!r}); bytes that are "
                "not UTF-8 cannot be recorded in the journal",
                field=field,
            ) from None


def check_strings(task_id: str, name: str, value: object) -> None:
    """``env`` and ``tags``: a dict of strings to strings, without NULs in keys or values."""
    if not isinstance(value, dict):
        raise SpecError(
            f"task {task_id!r}: {name} must be a dict of strings to strings, got "
            f"{type(value).__name__}",
            field=name,
        )
    for key, item in value.items():
        if not isinstance(key, str):
            raise SpecError(
                f"task {task_id!r}: {name} keys must be strings, got {type(key).__name__} {key!r}",
                field=name,
            )
        if "\0" in key:
            raise SpecError(
                f"task {task_id!r}: {name} key {key!r} contains a NUL character",
                field=f"{name}[{key!r}]",
            )
        if not isinstance(item, str):
            hint = " (convert numbers with str())" if isinstance(item, int | float) else ""
            raise SpecError(
                f"task {task_id!r}: {name}[{key!r}] must be a string, got "
                f"{type(item).__name__}{hint}",
                field=f"{name}[{key!r}]",
            )
        if "\0" in item:
            raise SpecError(
                f"task {task_id!r}: {name}[{key!r}] contains a NUL character",
                field=f"{name}[{key!r}]",
            )
