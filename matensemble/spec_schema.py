"""What an ensemble file may contain, as msgspec structs, and how messages name a place in it.

The structs mirror the file: ``[ensemble]`` (run settings), ``[defaults]``, ``[[task]]`` and
``[[sweep]]`` entries. A field left out is ``UNSET`` rather than its default, so that an entry's
fields can be merged over ``[defaults]`` key by key (``matensemble.sweeps``). Every message about
a file starts with its path and names the place: ``ensemble.toml: $.sweep[2] (sweep 'melt'): ...``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, NoReturn

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

from matensemble.errors import SpecError

__all__ = [
    "RESERVED_NAMES",
    "Completion",
    "EnsembleFile",
    "Mode",
    "Parameter",
    "ParameterRange",
    "ResourcesFields",
    "Settings",
    "Strategy",
    "SweepEntry",
    "TaskEntry",
    "TaskFields",
    "Text",
    "entry_place",
    "fail",
    "short",
]

Strategy = Literal["fifo", "priority", "longest-first", "gpu-first"]
Completion = Literal["adaptive", "waves"]
Mode = Literal["product", "zip"]

_Scalar = str | int | float | bool
Text = str | int | float  # env and tags values; numbers become strings
_Argv = str | Annotated[list[str], Meta(min_length=1)]

# Template names every sweep has besides its parameters.
RESERVED_NAMES = frozenset({"index", "spec_dir"})


class Settings(Struct, kw_only=True, forbid_unknown_fields=True):
    # The name starts the run id, a directory name and a strftime pattern: no '/', no '%'.
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_][A-Za-z0-9._+=,@:~-]{0,99}$")] | None = None
    strategy: Strategy | None = None
    backfill: bool | None = None
    completion: Completion | None = None
    run_dir: Annotated[str, Meta(min_length=1)] | None = None
    cores: Annotated[int, Meta(ge=1)] | None = None
    gpus: Annotated[int, Meta(ge=0)] | None = None
    max_tasks: Annotated[int, Meta(ge=1)] | None = None


class ResourcesFields(Struct, kw_only=True, forbid_unknown_fields=True):
    ranks: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    cores_per_rank: Annotated[int, Meta(ge=1)] | UnsetType = UNSET
    gpus_per_rank: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    nodes: Annotated[int, Meta(ge=1)] | UnsetType | None = UNSET
    exclusive: bool | UnsetType = UNSET
    mpi: bool | UnsetType = UNSET


class TaskFields(Struct, kw_only=True, forbid_unknown_fields=True):
    resources: ResourcesFields | UnsetType = UNSET
    env: dict[str, Text] | UnsetType = UNSET
    inherit_env: bool | UnsetType = UNSET
    cwd: str | UnsetType = UNSET
    timeout: Annotated[float, Meta(gt=0)] | UnsetType | None = UNSET
    retries: Annotated[int, Meta(ge=0)] | UnsetType = UNSET
    priority: int | UnsetType = UNSET
    estimate: Annotated[float, Meta(ge=0)] | UnsetType | None = UNSET
    tags: dict[str, Text] | UnsetType = UNSET


class TaskEntry(TaskFields, kw_only=True, forbid_unknown_fields=True):
    id: str
    command: _Argv | UnsetType = UNSET
    after: str | list[str] = []
    function: str | UnsetType = UNSET  # a Python call instead of a command (functions.file_calls)
    args: list[Any] = []
    kwargs: dict[str, Any] = {}


class ParameterRange(Struct, kw_only=True, forbid_unknown_fields=True):
    start: int | None = None
    stop: int | None = None
    step: int | None = None
    linspace: tuple[float, float, Annotated[int, Meta(ge=1)]] | None = None


Parameter = list[_Scalar] | ParameterRange | _Scalar


class SweepEntry(TaskEntry, kw_only=True, forbid_unknown_fields=True):
    parameters: dict[str, Parameter]
    name: str | None = None
    mode: Mode = "product"


class EnsembleFile(Struct, kw_only=True, forbid_unknown_fields=True):
    ensemble: Settings = msgspec.field(default_factory=Settings)
    defaults: TaskFields = msgspec.field(default_factory=TaskFields)
    task: list[TaskEntry] = []
    sweep: list[SweepEntry] = []


def fail(source: str, where: str, message: str) -> NoReturn:
    """Raise the ``SpecError`` for a place in the file ``source`` (``where`` may be empty)."""
    raise SpecError(f"{source}: {where}{': ' if where else ''}{message}") from None


def short(value: object) -> str:
    """``repr`` of a name for a message, cut short: an id may be 1,000 characters of junk."""
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:50]}... ({len(str(value))} characters)"


def entry_place(kind: str, k: int, entry: TaskEntry) -> str:
    """An entry's place for messages: ``$.sweep[2] (sweep 'melt')``."""
    if isinstance(entry, SweepEntry):
        return f"$.{kind}[{k}] (sweep {short(entry.name or entry.id)})"
    return f"$.{kind}[{k}] (task {short(entry.id)})"
