"""Expanding an ensemble file's entries into tasks: defaults merged, sweeps over their points.

A ``[[sweep]]`` has one point per combination of its parameters' values (``mode = "product"``)
or per position in equally long lists (``"zip"``); a plain ``[[task]]`` is a sweep of one point.
The number of points is computed from the parameters' definitions before any is made (a range's
length is arithmetic, a linspace's is its ``n``), so that a file that would expand past the limit
on tasks is refused at no cost. Each point fills in the entry's templates (id, argv, ``after``,
``cwd``, ``env`` and ``tags`` values) with ``str.format``.
"""

from __future__ import annotations

import difflib
import itertools
import math
import os
import re
import shlex
import string
from collections.abc import Iterable
from typing import Any, NoReturn, cast

import msgspec
from msgspec import UNSET, UnsetType

from matensemble.errors import SpecError
from matensemble.functions.file_calls import InlineCall, check_function_name, fill, inline_command
from matensemble.limits import MAX_TASKS
from matensemble.model import Resources, Task
from matensemble.spec_prerequisites import FileIds
from matensemble.spec_schema import (
    RESERVED_NAMES,
    EnsembleFile,
    Parameter,
    ParameterRange,
    SweepEntry,
    TaskEntry,
    TaskFields,
    entry_place,
    fail,
    short,
)

__all__ = ["SweepExpander"]

_FORMATTER = string.Formatter()


def _few_values(template: str) -> bool:
    """Does the template name at most one parameter, and not ``{index}``?"""
    fields = [f for _, f, _, _ in _FORMATTER.parse(template) if f is not None]
    names = {re.split(r"[.\[!:]", f, maxsplit=1)[0] for f in fields} - {"spec_dir"}
    return len(names) <= 1 and "index" not in names


def _values(spec: Parameter) -> list[Any]:
    """A parameter's values; its definition was checked by ``SweepExpander.length``."""
    if isinstance(spec, list):
        return spec
    if not isinstance(spec, ParameterRange):
        return [spec]
    if spec.linspace is not None:
        lo, hi, n = spec.linspace
        # Round to 12 significant digits so ids read 0.3, not 0.30000000000000004.
        return [float(f"{lo + (hi - lo) * i / max(n - 1, 1):.12g}") for i in range(n)]
    assert spec.stop is not None
    return list(range(spec.start or 0, spec.stop, spec.step or 1))


class SweepExpander:
    """Turns decoded entries into tasks: merge defaults, expand sweeps, resolve ``after``."""

    def __init__(self, source: str, spec_dir: str, defaults: TaskFields) -> None:
        self.source = source
        self.spec_dir = spec_dir
        self.defaults = defaults
        # In file order: tasks built at once, and None where a task waits for its ``after`` to
        # be resolved (which needs every id); its draft is in ``drafts``. A task is built as
        # soon as it can be, so that a big sweep does not hold its keyword dicts until the end.
        self.tasks: list[Task | None] = []
        self.drafts: list[tuple[int, str, str, list[str], dict[str, Any]]] = []
        self.ids = FileIds(source)

    def fail(self, where: str, message: str) -> NoReturn:
        fail(self.source, where, message)

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
        self, doc: EnsembleFile, order: list[tuple[str, int]], limit: tuple[int, str]
    ) -> tuple[Task, ...]:
        self.count(doc, *limit)
        for kind, k in order:
            self.add(k, doc.task[k] if kind == "task" else doc.sweep[k])
        if not self.tasks:
            self.fail("", "the file defines no tasks (add a [[task]] or a [[sweep]])")
        return self.resolve()

    def count(self, doc: EnsembleFile, limit: int, explained: str) -> None:
        """Refuse a file that would expand to more than ``limit`` tasks, before expanding any.

        ``explained`` says where the limit came from; empty for the default or the variable.

        Each sweep's size is the product (or, zipped, the common length) of its parameters'
        lengths, computed from the definitions: a range's length is arithmetic, a linspace's is
        its ``n``. So a sweep over two ranges of a million values each costs nothing to refuse.
        """
        sizes = [(self.points(entry_place("sweep", k, s), s), k) for k, s in enumerate(doc.sweep)]
        total = len(doc.task) + sum(n for n, _ in sizes)
        if total <= limit:
            return
        biggest, k = max(sizes, default=(0, 0))
        where = entry_place("sweep", k, doc.sweep[k]) if sizes else ""
        what = f"the sweep has {biggest:,} points, and " if sizes else ""
        also = f" or with max_tasks = {total} in the file's [ensemble] table"
        self.fail(
            where,
            f"{what}the file would expand to {total:,} tasks: "
            f"{explained or MAX_TASKS.explain(total, limit, also=also)}",
        )

    def points(self, where: str, sweep: SweepEntry) -> int:
        """The number of points of a sweep, from its parameters' definitions alone."""
        if not sweep.parameters:
            self.fail(where, "parameters is empty; a sweep needs at least one parameter")
        for name in sweep.parameters:
            if not name.isidentifier() or name in RESERVED_NAMES:
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
        if not isinstance(spec, ParameterRange):
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

    def add(self, k: int, entry: TaskEntry) -> None:
        """Add a plain task, or every point of a sweep (a plain task is a sweep of one point)."""
        sweep = entry if isinstance(entry, SweepEntry) else None
        names: list[str] = []
        columns: list[list[Any]] = []
        allowed, hint = {"spec_dir"}, "only {spec_dir} is defined outside a [[sweep]]"
        where = entry_place("task", k, entry)
        if sweep is not None:
            where = entry_place("sweep", k, sweep)
            names, columns = self.columns(where, sweep)
            allowed, hint = (
                {*names, *RESERVED_NAMES},
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
            group = self.ids.add_sweep(sweep.name, where)
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

    def columns(self, where: str, sweep: SweepEntry) -> tuple[list[str], list[list[Any]]]:
        """The parameter names and, for each, its list of values (``points`` checked them)."""
        names = list(sweep.parameters)
        columns = [_values(spec) for spec in sweep.parameters.values()]
        for name, column in zip(names, columns, strict=True):
            bad = next((v for v in column if isinstance(v, str) and "\0" in v), None)
            if bad is not None:
                self.fail(where, f"parameter {name!r}: value {bad!r} contains a NUL character")
        return names, columns

    def merge(self, where: str, entry: TaskFields) -> dict[str, Any]:
        """The entry's fields over ``[defaults]``; resources, env and tags merge key by key."""
        fields: dict[str, Any] = {"resources": {}, "env": {}, "tags": {}}
        for part in (self.defaults, entry):
            for name in TaskFields.__struct_fields__:
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

    def function_call(self, where: str, entry: TaskEntry, mpi: bool) -> InlineCall | None:
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

    def build(self, task_id: str, where: str, after: tuple[str, ...], kw: dict[str, Any]) -> Task:
        try:
            return Task(id=task_id, after=after, **kw)
        except SpecError as e:
            self.invalid(f"{where} (task {short(task_id)})", task_id, e)

    def add_draft(self, task_id: str, where: str, after: list[str], kw: dict[str, Any]) -> None:
        self.ids.add(task_id, where)
        if after:
            self.drafts.append((len(self.tasks), task_id, where, after, kw))
            self.tasks.append(None)
        else:
            self.tasks.append(self.build(task_id, where, (), kw))

    def resolve(self) -> tuple[Task, ...]:
        """The tasks in file order, once every ``after`` is resolved and no cycle is found."""
        self.ids.check_names()
        tasks = self.tasks
        for position, task_id, where, refs, kw in self.drafts:
            deps = self.ids.prerequisites(task_id, where, refs)
            tasks[position] = self.build(task_id, where, deps, kw)
        built = cast(list[Task], tasks)  # every None was a draft, and is a Task now
        if self.drafts:  # without any prerequisite there can be no cycle
            self.drafts.clear()
            self.ids.check_acyclic(built)
        return tuple(built)
