"""Ensemble files: TOML or JSON decoded and validated with msgspec, sweeps expanded into tasks.

A file has an optional ``[ensemble]`` table (run settings), an optional ``[defaults]`` table (any
task field but ``id``/``command``/``after``; ``resources``, ``env`` and ``tags`` are merged key by
key), plain ``[[task]]`` entries and ``[[sweep]]`` entries whose ``parameters`` (lists, single
values, ``{start, stop, step}`` ranges or ``{linspace = [lo, hi, n]}``) are expanded with
``mode = "product"`` or ``"zip"`` into one task per point, tagged with its parameter values. A
sweep's id, argv elements, ``after``, ``cwd`` and ``env``/``tags`` values are ``str.format``
templates over its parameters, ``{index}`` (the point's number) and ``{spec_dir}`` (the file's
absolute directory; the only name plain tasks may use). Literal braces are written ``{{``/``}}``.

A ``command`` given as one string is split with ``shlex.split``; it is *not* run through a shell.
Commands run in the task's ``cwd``: by default the task's own directory in the run directory, so
relative paths in commands are not relative to the file; use ``{spec_dir}`` or a ``cwd`` (relative
``cwd`` values are resolved against the file's directory). ``after`` entries name a task id, a
sweep's ``name`` (all its tasks), or a glob pattern over the file's ids (never the task itself).

Validation is complete before anything is returned: an invalid file raises ``SpecError`` whose
message starts with the file's path and names the field path or task id. This module never runs
anything.

This module reads the file (a regular file of bounded size) and returns its ``EnsembleSpec``; the
steps live beside it: ``spec_schema`` (what a file may contain), ``spec_decoding`` (decoding, with
messages that name the entry and suggest the field), ``sweeps`` (defaults merged, sweeps expanded,
templates filled in) and ``spec_prerequisites`` (``after`` resolved, cycles refused).
"""

from __future__ import annotations

import os
import re
import stat
from typing import Literal

import msgspec
from msgspec import Struct

from matensemble.errors import SpecError
from matensemble.limits import MAX_FILE_BYTES, MAX_TASKS
from matensemble.model import Task
from matensemble.spec_decoding import decode_document, entry_order
from matensemble.spec_schema import Completion, Strategy
from matensemble.sweeps import SweepExpander

__all__ = ["EnsembleSpec", "load_ensemble", "parse_ensemble"]


class EnsembleSpec(Struct, frozen=True, kw_only=True):
    """An ensemble file, expanded: its tasks in file order and the run settings it asks for.

    Settings the file leaves out are ``None``; command-line options override the others.
    ``run_dir``, when given, is absolute (a relative one is resolved against the file's directory).
    """

    name: str
    tasks: tuple[Task, ...]
    source: str = ""
    strategy: Strategy | None = None
    backfill: bool | None = None
    completion: Completion | None = None
    run_dir: str | None = None
    cores: int | None = None
    gpus: int | None = None


_NOT_REGULAR = [
    (stat.S_ISDIR, "a directory, not a file"),
    (stat.S_ISFIFO, "a FIFO (named pipe), not a regular file: reading would wait for a writer"),
    (stat.S_ISCHR, "a character device, not a regular file"),
    (stat.S_ISBLK, "a block device, not a regular file"),
    (stat.S_ISSOCK, "a socket, not a regular file"),
]


def load_ensemble(path: str | os.PathLike[str], *, max_tasks: int | None = None) -> EnsembleSpec:
    """Read, validate and expand the ensemble file at ``path`` (``.toml`` or ``.json``).

    ``max_tasks`` is the most tasks the file may expand to; by default the file's
    ``[ensemble] max_tasks``, else ``MATENSEMBLE_MAX_TASKS``, else 1,000,000 (see
    ``matensemble.limits``). The file must be a regular file of at most
    ``MATENSEMBLE_MAX_FILE_BYTES`` (128 MiB) bytes.

    Raises:
        SpecError: the file cannot be read, is no regular file, is too large, has another
            suffix, is invalid, or expands to more tasks than allowed.
    """
    source = os.fspath(path)
    suffix = os.path.splitext(source)[1].lower()
    if suffix not in (".toml", ".json"):
        raise SpecError(f"{source}: unknown ensemble file type {suffix!r}; use .toml or .json")
    data = _read_regular_file(source)
    format: Literal["toml", "json"] = "toml" if suffix == ".toml" else "json"
    return parse_ensemble(data, source=source, format=format, max_tasks=max_tasks)


def _read_regular_file(source: str) -> bytes:
    """The bytes of a regular file of bounded size; anything else is refused before reading.

    Opened without blocking, so that a FIFO (which would wait for a writer forever) or a device
    can be told apart by ``fstat`` on the open descriptor, with no window for a swap in between.
    """
    limit = MAX_FILE_BYTES.value()
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise SpecError(f"{source}: cannot read ensemble file: {e.strerror or e}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = next((k for test, k in _NOT_REGULAR if test(info.st_mode)), "no regular file")
            raise SpecError(f"{source}: cannot read ensemble file: it is {kind}")
        data = b""
        if info.st_size <= limit:
            with open(fd, "rb", closefd=False) as f:
                # read(n) allocates n bytes first: ask for the size fstat gave, and more only
                # from a file that grows while it is read.
                data = f.read(info.st_size + 1)
                if len(data) > info.st_size:
                    data += f.read(limit + 1 - len(data))
    finally:
        os.close(fd)
    size = max(info.st_size, len(data))  # the file may have grown since fstat
    if size > limit:
        raise SpecError(
            f"{source}: the file has {size:,} bytes, {MAX_FILE_BYTES.explain(size, limit)}"
        )
    return data


def parse_ensemble(
    data: bytes,
    *,
    source: str,
    format: Literal["toml", "json"],
    max_tasks: int | None = None,
) -> EnsembleSpec:
    """Validate and expand an ensemble document; ``source`` is its path, used in messages and
    as the base of ``{spec_dir}`` and relative ``cwd``/``run_dir`` values. ``max_tasks`` as
    for ``load_ensemble``.

    Raises:
        SpecError: the document is invalid; the message starts with ``source``.
    """
    try:
        return _parse(data, source, format, max_tasks)
    except RecursionError:  # from the decoders; expansion itself never recurses
        raise SpecError(
            f"{source}: the document is nested too deeply to read (an ensemble file needs a few "
            "levels of tables and lists, not thousands)"
        ) from None


def _parse(
    data: bytes, source: str, format: Literal["toml", "json"], max_tasks: int | None
) -> EnsembleSpec:
    data = data.removeprefix(b"\xef\xbb\xbf")  # the byte-order mark some editors write
    doc = decode_document(data, source, format)
    spec_dir = os.path.dirname(os.path.abspath(source))
    settings = msgspec.structs.asdict(doc.ensemble)
    from_file = settings.pop("max_tasks")
    if max_tasks is not None:
        limit = (max_tasks, f"more than the limit of max_tasks={max_tasks:,} given")
    elif from_file is not None:
        limit = (from_file, f"more than the file's own limit, max_tasks = {from_file:,}")
    else:
        limit = (MAX_TASKS.value(), "")
    expander = SweepExpander(source, spec_dir, doc.defaults)
    tasks = expander.expand(doc, entry_order(data, doc, format), limit)
    if settings["name"] is None:  # the file's stem, made safe for a run id and a directory
        stem = os.path.splitext(os.path.basename(source))[0]
        settings["name"] = re.sub(r"[^A-Za-z0-9._+=,@:~-]", "_", stem).lstrip(".-")[:100]
        settings["name"] = settings["name"] or "ensemble"
    if settings["run_dir"] is not None:
        settings["run_dir"] = os.path.normpath(os.path.join(spec_dir, settings["run_dir"]))
    return EnsembleSpec(tasks=tasks, source=source, **settings)
