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
"""

from __future__ import annotations

import difflib
import fnmatch
import itertools
import json
import math
import os
import re
import shlex
import stat
import string
from collections.abc import Iterable
from typing import Annotated, Any, Literal, NoReturn, cast, get_args

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from matensemble.errors import SpecError
from matensemble.functions.file_calls import InlineCall, check_function_name, fill, inline_command
from matensemble.limits import MAX_FILE_BYTES, MAX_TASKS
from matensemble.model import Resources, Task

__all__ = ["EnsembleSpec", "load_ensemble", "parse_ensemble"]

Strategy = Literal["fifo", "priority", "longest-first", "gpu-first"]
Completion = Literal["adaptive", "waves"]


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


# --- What the file may contain. UNSET marks "not given", so defaults can be merged. ---

_Scalar = str | int | float | bool
_Text = str | int | float  # env and tags values; numbers become strings
_Argv = str | Annotated[list[str], Meta(min_length=1)]
_Mode = Literal["product", "zip"]


class _Settings(Struct, kw_only=True, forbid_unknown_fields=True):
    # The name starts the run id, a directory name and a strftime pattern: no '/', no '%'.
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._+=,@:~-]{0,99}$")] | None = None
    strategy: Strategy | None = None
    backfill: bool | None = None
    completion: Completion | None = None
    run_dir: Annotated[str, Meta(min_length=1)] | None = None
    cores: Annotated[int, Meta(ge=1)] | None = None
    gpus: Annotated[int, Meta(ge=0)] | None = None
    max_tasks: Annotated[int, Meta(ge=1)] | None = None


class _ResourcesFields(Struct, kw_only=True, forbid_unknown_fields=True):
    ranks: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    cores_per_rank: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    gpus_per_rank: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    nodes: Annotated[int, Meta(ge=1)] | UnsetType | None = UNSET
    exclusive: bool | UnsetType = UNSET
    mpi: bool | UnsetType = UNSET


class _TaskFields(Struct, kw_only=True, forbid_unknown_fields=True):
    resources: _ResourcesFields | UnsetType = UNSET
    env: dict[str, _Text] | UnsetType = UNSET
    inherit_env: bool | UnsetType = UNSET
    cwd: str | UnsetType = UNSET
    timeout: Annotated[float, Meta(gt=0)] | UnsetType | None = UNSET
    retries: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    priority: int | UnsetType = UNSET
    estimate: Annotated[float, Meta(ge=0)] | UnsetType | None = UNSET
    tags: dict[str, _Text] | UnsetType = UNSET


class _TaskEntry(_TaskFields, kw_only=True, forbid_unknown_fields=True):
    id: str
    command: _Argv | UnsetType = UNSET
    after: str | list[str] = []
    function: str | UnsetType = UNSET  # a Python call instead of a command (functions.file_calls)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}


class _Range(Struct, kw_only=True, forbid_unknown_fields=True):
    start: int | None = None
    stop: int | None = None
    step: int | None = None
    linspace: tuple[float, float, Annotated[int, Meta(ge=1)]] | None = None


_Param = list[_Scalar] | _Range | _Scalar


class _SweepEntry(_TaskEntry, kw_only=True, forbid_unknown_fields=True):
    parameters: dict[str, _Param]
    name: str | None = None
    mode: _Mode = "product"


class _File(Struct, kw_only=True, forbid_unknown_fields=True):
    ensemble: _Settings = msgspec.field(default_factory=_Settings)
    defaults: _TaskFields = msgspec.field(default_factory=_TaskFields)
    task: list[_TaskEntry] = []
    sweep: list[_SweepEntry] = []


# For "did you mean": the struct at an error path's last key, the choices of a Literal field.
_STRUCT_AT: dict[str, type[Struct]] = {
    **{"$": _File, "ensemble": _Settings, "defaults": _TaskFields, "task": _TaskEntry},
    **{"sweep": _SweepEntry, "resources": _ResourcesFields, "parameters": _Range},
}
_CHOICES = {"strategy": Strategy, "completion": Completion, "mode": _Mode}
_RESERVED = frozenset({"index", "spec_dir"})
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
_NOT_REGULAR = [
    (stat.S_ISDIR, "a directory, not a file"),
    (stat.S_ISFIFO, "a FIFO (named pipe), not a regular file: reading would wait for a writer"),
    (stat.S_ISCHR, "a character device, not a regular file"),
    (stat.S_ISBLK, "a block device, not a regular file"),
    (stat.S_ISSOCK, "a socket, not a regular file"),
]
_HEADER = re.compile(rb"^[ \t]*\[\[[ \t]*(task|sweep)[ \t]*\]\]", re.MULTILINE)
_FORMATTER = string.Formatter()


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
    if not data.strip():
        raise SpecError(
            f"{source}: the file is empty: it defines no tasks (add a [[task]] or a [[sweep]])"
        )
    decode = msgspec.toml.decode if format == "toml" else msgspec.json.decode
    try:
        doc = decode(data, type=_File)
    except msgspec.ValidationError as e:
        raise SpecError(f"{source}: {_explain(str(e), data, decode)}") from None
    except msgspec.DecodeError as e:
        raise SpecError(f"{source}: invalid {format.upper()}: {_with_line(str(e), data)}") from None
    except UnicodeDecodeError:
        raise SpecError(f"{source}: {_not_utf8(data)}") from None
    if format == "json":
        _refuse_duplicate_keys(data, source)
    spec_dir = os.path.dirname(os.path.abspath(source))
    settings = msgspec.structs.asdict(doc.ensemble)
    from_file = settings.pop("max_tasks")
    if max_tasks is not None:
        limit = (max_tasks, f"more than the limit of max_tasks={max_tasks:,} given")
    elif from_file is not None:
        limit = (from_file, f"more than the file's own limit, max_tasks = {from_file:,}")
    else:
        limit = (MAX_TASKS.value(), "")
    expander = _Expander(source, spec_dir, doc.defaults)
    tasks = expander.expand(doc, _entry_order(data, doc, format), limit)
    if settings["name"] is None:  # the file's stem, made safe for a run id and a directory
        stem = os.path.splitext(os.path.basename(source))[0]
        settings["name"] = re.sub(r"[^A-Za-z0-9._+=,@:~-]", "_", stem).lstrip(".-")[:100]
        settings["name"] = settings["name"] or "ensemble"
    if settings["run_dir"] is not None:
        settings["run_dir"] = os.path.normpath(os.path.join(spec_dir, settings["run_dir"]))
    return EnsembleSpec(tasks=tasks, source=source, **settings)


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
                notes.append(f"{entry[1]} {_short(raw.get('name') or raw['id'])}")
            if ".parameters[...]" in path:
                bad = [k for k, v in raw["parameters"].items() if not _converts(v, _Param)]
                notes += [f"parameter {k!r}" for k in bad[:1]]
            for table in ("env", "tags"):
                if f".{table}[...]" in path:
                    bad = [k for k, v in raw[table].items() if not _converts(v, _Text)]
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


def _short(value: object) -> str:
    """``repr`` of a name for a message, cut short: an id may be 1,000 characters of junk."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}... ({len(str(value))} characters)"


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


def _entry_order(data: bytes, doc: _File, format: str) -> list[tuple[str, int]]:
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


def _where(kind: str, k: int, entry: _TaskEntry) -> str:
    """An entry's place for messages: ``$.sweep[2] (sweep 'melt')``."""
    if isinstance(entry, _SweepEntry):
        return f"$.{kind}[{k}] (sweep {_short(entry.name or entry.id)})"
    return f"$.{kind}[{k}] (task {_short(entry.id)})"


def _few_values(template: str) -> bool:
    """Does the template name at most one parameter, and not ``{index}``?"""
    fields = [f for _, f, _, _ in _FORMATTER.parse(template) if f is not None]
    names = {re.split(r"[.\[!:]", f, maxsplit=1)[0] for f in fields} - {"spec_dir"}
    return len(names) <= 1 and "index" not in names


def _values(spec: _Param) -> list[Any]:
    """A parameter's values; its definition was checked by ``_Expander.length``."""
    if isinstance(spec, list):
        return spec
    if not isinstance(spec, _Range):
        return [spec]
    if spec.linspace is not None:
        lo, hi, n = spec.linspace
        # Round to 12 significant digits so ids read 0.3, not 0.30000000000000004.
        return [float(f"{lo + (hi - lo) * i / max(n - 1, 1):.12g}") for i in range(n)]
    assert spec.stop is not None
    return list(range(spec.start or 0, spec.stop, spec.step or 1))


class _Expander:
    """Turns decoded entries into tasks: merge defaults, expand sweeps, resolve ``after``."""

    def __init__(self, source: str, spec_dir: str, defaults: _TaskFields) -> None:
        self.source = source
        self.spec_dir = spec_dir
        self.defaults = defaults
        # In file order: tasks built at once, and None where a task waits for its ``after`` to
        # be resolved (which needs every id); its draft is in ``drafts``. A task is built as
        # soon as it can be, so that a big sweep does not hold its keyword dicts until the end.
        self.tasks: list[Task | None] = []
        self.drafts: list[tuple[int, str, str, list[str], dict[str, Any]]] = []
        self.where: dict[str, str] = {}  # id -> where it is defined
        self.sweeps: dict[str, list[str]] = {}  # sweep name -> its ids

    def fail(self, where: str, message: str) -> NoReturn:
        raise SpecError(f"{self.source}: {where}{': ' if where else ''}{message}") from None

    def invalid(self, where: str, task_id: str | None, error: SpecError) -> NoReturn:
        """Re-raise a ``Task`` or ``Resources`` error at its place (``$.task[2].timeout``)."""
        message = str(error)
        if task_id is not None:
            message = message.removeprefix(f"task {task_id!r}: ")
        if error.field and " point " not in where:  # a sweep point has no path of its own
            head, _, rest = where.partition(" ")
            where = f"{head}.{error.field}{' ' if rest else ''}{rest}"
        self.fail(where, message)

    def expand(
        self, doc: _File, order: list[tuple[str, int]], limit: tuple[int, str]
    ) -> tuple[Task, ...]:
        self.count(doc, *limit)
        for kind, k in order:
            self.add(k, doc.task[k] if kind == "task" else doc.sweep[k])
        if not self.tasks:
            self.fail("", "the file defines no tasks (add a [[task]] or a [[sweep]])")
        return self.resolve()

    def count(self, doc: _File, limit: int, explained: str) -> None:
        """Refuse a file that would expand to more than ``limit`` tasks, before expanding any.

        ``explained`` says where the limit came from; empty for the default or the variable.

        Each sweep's size is the product (or, zipped, the common length) of its parameters'
        lengths, computed from the definitions: a range's length is arithmetic, a linspace's is
        its ``n``. So a sweep over two ranges of a million values each costs nothing to refuse.
        """
        sizes = [(self.points(_where("sweep", k, s), s), k) for k, s in enumerate(doc.sweep)]
        total = len(doc.task) + sum(n for n, _ in sizes)
        if total <= limit:
            return
        biggest, k = max(sizes, default=(0, 0))
        where = _where("sweep", k, doc.sweep[k]) if sizes else ""
        what = f"the sweep has {biggest:,} points, and " if sizes else ""
        also = f" or with max_tasks = {total} in the file's [ensemble] table"
        self.fail(
            where,
            f"{what}the file would expand to {total:,} tasks: "
            f"{explained or MAX_TASKS.explain(total, limit, also=also)}",
        )

    def points(self, where: str, sweep: _SweepEntry) -> int:
        """The number of points of a sweep, from its parameters' definitions alone."""
        if not sweep.parameters:
            self.fail(where, "parameters is empty; a sweep needs at least one parameter")
        for name in sweep.parameters:
            if not name.isidentifier() or name in _RESERVED:
                self.fail(where, f"parameter name {name!r} is not an identifier or is reserved")
        lengths = {n: self.length(where, n, v) for n, v in sweep.parameters.items()}
        if sweep.mode == "zip" and len(set(lengths.values())) > 1:
            listed = ", ".join(f"{n}: {length}" for n, length in lengths.items())
            self.fail(where, f"mode 'zip' needs equally long parameter lists ({listed})")
        for name, length in lengths.items():
            if not length:
                self.fail(where, f"the sweep has no points: parameter {name!r} is empty")
        return next(iter(lengths.values())) if sweep.mode == "zip" else math.prod(lengths.values())

    def length(self, where: str, name: str, spec: Any) -> int:
        """How many values a parameter has, without making them."""
        if isinstance(spec, list):
            return len(spec)
        if not isinstance(spec, _Range):
            return 1
        if spec.linspace is not None:
            if (spec.start, spec.stop, spec.step) != (None, None, None):
                self.fail(where, f"parameter {name!r}: give either linspace or start/stop/step")
            return spec.linspace[2]
        if spec.stop is None or spec.step == 0:
            self.fail(where, f"parameter {name!r}: a range needs a 'stop' and a step other than 0")
        start, step = spec.start or 0, spec.step or 1
        # ceil((stop - start) / step) in integers; len(range) overflows past sys.maxsize.
        return max(0, -((start - spec.stop) // step))

    def add(self, k: int, entry: _TaskEntry) -> None:
        """Add a plain task, or every point of a sweep (a plain task is a sweep of one point)."""
        sweep = entry if isinstance(entry, _SweepEntry) else None
        names: list[str] = []
        columns: list[list[Any]] = []
        allowed, hint = {"spec_dir"}, "only {spec_dir} is defined outside a [[sweep]]"
        where = _where("task", k, entry)
        if sweep is not None:
            where = _where("sweep", k, sweep)
            names, columns = self.columns(where, sweep)
            allowed, hint = (
                {*names, *_RESERVED},
                f"parameters: {', '.join(names)}; also index, spec_dir",
            )
        fields = self.merge(where, entry)
        call = self.function_call(where, entry, fields["resources"].mpi)
        command = [] if call is not None else self.argv(where, entry.command)
        after = [entry.after] if isinstance(entry.after, str) else entry.after
        env, tags, cwd = fields["env"], fields["tags"], fields.get("cwd")
        texts = [("id", entry.id), *(("cwd", c) for c in [cwd] if c is not None)]
        texts += [(f"command[{i}]", a) for i, a in enumerate(command)]
        texts += [(f"after[{i}]", a) for i, a in enumerate(after)]
        texts += [
            (f"{n}[{k!r}]", v) for n, d in (("env", env), ("tags", tags)) for k, v in d.items()
        ]
        for name, text in texts:
            if "\0" in text:  # NULs would split the joined template below
                self.fail(where.replace(" ", f".{name} ", 1), "contains a NUL character")
        self.check(
            where, [entry.id, *command, *after, *env.values(), *tags.values(), cwd], allowed, hint
        )
        group = None
        if sweep is not None and sweep.name is not None:
            if sweep.name in self.sweeps:
                self.fail(where, f"another sweep is already named {sweep.name!r}")
            group = self.sweeps[sweep.name] = []
        points: Iterable[tuple[Any, ...]] = (
            zip(*columns, strict=True)
            if sweep is not None and sweep.mode == "zip"
            else itertools.product(*columns)
        )
        # All of a task's templates are filled in by one format_map call, split at NULs (which
        # no argv element, variable or path may contain): this keeps 100,000 points fast.
        tag_keys = [*names, *tags]
        templates = [entry.id, *command, *after, *env.values(), *[f"{{{n}}}" for n in names]]
        templates += [*tags.values(), cwd or ""]
        joined = "\0".join(templates)
        ends = list(itertools.accumulate([1, len(command), len(after), len(env), len(tag_keys)]))
        # Parts that take few distinct values (a constant, one parameter but not {index}) are
        # shared between tasks rather than held once per point: a third of a task's memory.
        shared = [i for i, t in enumerate(templates) if i and _few_values(t)]
        canonical: dict[str, str] = {}
        shared_cwd = _few_values(templates[-1])
        ctx: dict[str, Any] = {"spec_dir": self.spec_dir}
        for index, point in enumerate(points):
            ctx.update(zip(names, point, strict=True))
            ctx["index"] = index
            try:
                parts = joined.format_map(ctx).split("\0")
            except (ValueError, LookupError, AttributeError, TypeError) as e:
                at = f"{where} point {index}" if sweep else where
                self.fail(at, f"cannot fill in a template: {e}")
            if len(parts) != len(templates):
                at = f"{where} point {index}" if sweep else where
                self.fail(at, "a filled-in template contains a NUL character")
            for i in shared:
                parts[i] = canonical.setdefault(parts[i], parts[i])
            kw = dict(fields, command=tuple(parts[ends[0] : ends[1]]))
            if call is not None:
                at = f"{where} point {index}" if sweep else where
                kw["command"] = self.fill_call(call, ctx, at)
            kw["env"] = dict(zip(env, parts[ends[2] : ends[3]], strict=True))
            kw["tags"] = dict(zip(tag_keys, parts[ends[3] : ends[4]], strict=True))
            if cwd is not None:
                path = os.path.normpath(os.path.join(self.spec_dir, parts[-1]))
                kw["cwd"] = canonical.setdefault(path, path) if shared_cwd else path
            task_id, deps = parts[0], parts[ends[1] : ends[2]]
            self.add_draft(
                task_id, f"$.sweep[{k}] point {index}" if sweep else f"$.task[{k}]", deps, kw
            )
            if group is not None:
                group.append(task_id)

    def columns(self, where: str, sweep: _SweepEntry) -> tuple[list[str], list[list[Any]]]:
        """The parameter names and, for each, its list of values (``points`` checked them)."""
        names = list(sweep.parameters)
        columns = [_values(spec) for spec in sweep.parameters.values()]
        for name, column in zip(names, columns, strict=True):
            bad = next((v for v in column if isinstance(v, str) and "\0" in v), None)
            if bad is not None:
                self.fail(where, f"parameter {name!r}: value {bad!r} contains a NUL character")
        return names, columns

    def merge(self, where: str, entry: _TaskFields) -> dict[str, Any]:
        """The entry's fields over ``[defaults]``; resources, env and tags merge key by key."""
        fields: dict[str, Any] = {"resources": {}, "env": {}, "tags": {}}
        for part in (self.defaults, entry):
            for name in _TaskFields.__struct_fields__:
                value = getattr(part, name)
                if value is UNSET:
                    continue
                if name == "resources":
                    given = msgspec.structs.asdict(value).items()
                    fields[name].update((k, v) for k, v in given if v is not UNSET)
                elif name in ("env", "tags"):
                    fields[name].update((k, str(v)) for k, v in value.items())
                else:
                    fields[name] = value
        try:
            fields["resources"] = Resources(**fields["resources"])
        except SpecError as e:
            self.invalid(where, None, e)
        return fields

    def function_call(self, where: str, entry: _TaskEntry, mpi: bool) -> InlineCall | None:
        """The Python call of a ``function = "module:name"`` entry (``None`` for a command)."""
        if entry.function is UNSET:
            if entry.args or entry.kwargs:
                self.fail(where, "args and kwargs need a function (for a command, use command)")
            if entry.command is UNSET:
                self.fail(where, "Object missing required field `command` (or `function`)")
            return None
        if entry.command is not UNSET:
            self.fail(where, "give either command or function, not both")
        why = check_function_name(entry.function)
        if why is not None:
            self.fail(where.replace(" ", ".function ", 1), why)
        return InlineCall(
            function=entry.function,
            args=entry.args,
            kwargs=entry.kwargs,
            sys_path=[self.spec_dir],
            mpi=mpi,
        )

    def fill_call(self, call: InlineCall, ctx: dict[str, Any], where: str) -> tuple[str, ...]:
        try:
            args, kwargs = fill(call.args, ctx), fill(call.kwargs, ctx)
        except (ValueError, LookupError, AttributeError, TypeError) as e:
            self.fail(where, f"cannot fill in a template in args/kwargs: {e}")
        return inline_command(msgspec.structs.replace(call, args=args, kwargs=kwargs))

    def argv(self, where: str, command: str | list[str] | UnsetType) -> list[str]:
        assert command is not UNSET
        if isinstance(command, list):
            return command
        at = where.replace(" ", ".command ", 1)
        try:
            argv = shlex.split(command)
        except ValueError as e:
            self.fail(at, f"command {command!r} cannot be split: {e}")
        return argv or self.fail(at, "command must not be empty")

    def check(self, where: str, templates: list[str | None], allowed: set[str], hint: str) -> None:
        """Reject unknown template names once per entry, not once per sweep point."""
        for template in filter(None, templates):
            try:
                fields = [f for _, f, _, _ in _FORMATTER.parse(template) if f is not None]
            except ValueError as e:
                self.fail(
                    where, f"bad template {template!r}: {e} (literal braces are {{{{ and }}}})"
                )
            for field in fields:
                name = re.split(r"[.\[!:]", field, maxsplit=1)[0]
                if name not in allowed:
                    close = difflib.get_close_matches(name, sorted(allowed), n=1)
                    maybe = f"; did you mean {close[0]!r}?" if close else ""
                    self.fail(
                        where,
                        f"{template!r} uses {{{name}}}, which is not defined ({hint}; literal "
                        f"braces are {{{{ and }}}}){maybe}",
                    )

    def add_draft(self, task_id: str, where: str, after: list[str], kw: dict[str, Any]) -> None:
        first = self.where.get(task_id)
        if first is not None:
            same = first.split(" ")[0] == where.split(" ")[0]
            hint = " (the id template must use every parameter that varies, or {index})"
            self.fail(
                "",
                f"duplicate task id {task_id!r} at {where}; first defined at {first}"
                f"{hint if same else ''}",
            )
        self.where[task_id] = where
        if after:
            self.drafts.append((len(self.tasks), task_id, where, after, kw))
            self.tasks.append(None)
        else:
            self.tasks.append(self.build(task_id, where, (), kw))

    def build(self, task_id: str, where: str, after: tuple[str, ...], kw: dict[str, Any]) -> Task:
        try:
            return Task(id=task_id, after=after, **kw)
        except SpecError as e:
            self.invalid(f"{where} (task {_short(task_id)})", task_id, e)

    def resolve(self) -> tuple[Task, ...]:
        for name in self.sweeps:
            if name in self.where:
                self.fail("", f"sweep name {name!r} is also a task id ({self.where[name]})")
        cache: dict[str, list[str]] = {}
        tasks = self.tasks
        for position, task_id, where, refs, kw in self.drafts:
            deps: dict[str, None] = {}
            for ref in refs:
                matched = cache.get(ref)
                if matched is None:
                    matched = cache[ref] = self.lookup(ref)
                if (
                    ref not in self.where and ref not in self.sweeps
                ):  # a glob: never the task itself
                    matched = [m for m in matched if m != task_id]
                if not matched:
                    self.fail(f"{where} (task {_short(task_id)})", self.unknown(ref))
                deps.update(dict.fromkeys(matched))
            tasks[position] = self.build(task_id, where, tuple(deps), kw)
        built = cast(list[Task], tasks)  # every None was a draft, and is a Task now
        if self.drafts:  # without any prerequisite there can be no cycle
            self.drafts.clear()
            self.check_acyclic(built)
        return tuple(built)

    def check_acyclic(self, tasks: list[Task]) -> None:
        """Refuse a cycle of prerequisites here, naming its places, before any run starts."""
        index = {t.id: i for i, t in enumerate(tasks)}
        waiting = [len(t.after) for t in tasks]  # ``after`` has no repeats by now
        dependents: list[list[int]] = [[] for _ in tasks]
        for i, task in enumerate(tasks):
            for dep in task.after:
                dependents[index[dep]].append(i)
        queue = [i for i, n in enumerate(waiting) if n == 0]
        while queue:
            for j in dependents[queue.pop()]:
                waiting[j] -= 1
                if waiting[j] == 0:
                    queue.append(j)
        stuck = {i for i, n in enumerate(waiting) if n > 0}
        if not stuck:
            return
        # Every stuck task waits on a stuck task: walk back until one repeats.
        node = min(stuck)
        seen: dict[int, int] = {}
        path: list[int] = []
        while node not in seen:
            seen[node] = len(path)
            path.append(node)
            node = next(index[d] for d in tasks[node].after if index[d] in stuck)
        cycle = [*path[seen[node] :], node]
        steps = " -> ".join(f"{tasks[i].id!r} ({self.where[tasks[i].id]})" for i in cycle[:-1])
        self.fail(
            "",
            f"prerequisites form a cycle: {steps} -> {tasks[cycle[-1]].id!r}; no task of it could "
            "ever start (remove one of these 'after' entries)",
        )

    def lookup(self, ref: str) -> list[str]:
        if ref in self.where:
            return [ref]
        if ref in self.sweeps:
            return self.sweeps[ref]
        return fnmatch.filter(self.where, ref) if any(c in ref for c in "*?[") else []

    def unknown(self, ref: str) -> str:
        candidates = list(itertools.islice(itertools.chain(self.sweeps, self.where), 20_000))
        close = difflib.get_close_matches(ref, candidates, n=1)
        maybe = f"; did you mean {close[0]!r}?" if close else ""
        return f"after names {ref!r}, which is no task id, sweep name or glob match here{maybe}"
