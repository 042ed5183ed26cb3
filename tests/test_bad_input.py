"""The bad-input catalogue: malformed input through every door, each refused with one clear error.

Three doors: ensemble files (TOML and JSON), the ``matensemble`` command (a real subprocess) and
the Python API (``Task``, ``Resources``, ``Ensemble.submit``/``run``). Every case names what it
expects the message to contain: the file, the field path, the task id or the option. And every
refusal leaves what was already recorded as it was: a bad file creates no run directory, a bad
batch submitted to a running ensemble adds nothing to it or to its journal, and the run goes on.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tracemalloc
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from matensemble import (
    DependencyError,
    Ensemble,
    LocalBackend,
    Resources,
    SimulatedBackend,
    Task,
    TaskRejected,
    TaskState,
)
from matensemble.errors import LimitExceeded, SpecError
from matensemble.events import TaskAdded
from matensemble.journal import read_journal
from matensemble.spec import load_ensemble, parse_ensemble

from conftest import matensemble

TASK = '[[task]]\nid = "a"\ncommand = ["true"]\n'


def toml_task(**fields: str) -> str:
    """A one-task TOML file; ``fields`` are extra ``key = value`` lines, written verbatim."""
    return TASK + "".join(f"{key} = {value}\n" for key, value in fields.items())


def json_doc(document: Any) -> str:
    return json.dumps(document)


def case(name: str, text: str | bytes | None, *fragments: str, file: str = "ensemble.toml") -> Any:
    """One malformed file: its content (``None``: no file is written) and what the error says."""
    return pytest.param(file, text, fragments, id=name)


# --- Ensemble files ---------------------------------------------------------------------------

DEEP = 100_000  # levels of nesting: far past Python's recursion limit
CYCLE6 = "".join(
    f'[[task]]\nid = "t{i}"\ncommand = ["true"]\nafter = ["t{(i + 1) % 6}"]\n' for i in range(6)
)

FILE_CASES = [
    # Wrong types, at several depths.
    case(
        "ranks-is-a-string",
        toml_task(resources='{ ranks = "two" }'),
        "Expected `int`, got `str`",
        "$.task[0].resources.ranks",
        "task 'a'",
    ),
    case(
        "defaults-cores-per-rank-is-a-string",
        '[defaults]\nresources = { cores_per_rank = "x" }\n' + TASK,
        "$.defaults.resources.cores_per_rank",
    ),
    case(
        "sweep-nodes-is-a-string",
        '[[sweep]]\nname = "melt"\nid = "m-{T}"\ncommand = ["x"]\nparameters = { T = [1] }\n'
        'resources = { nodes = "two" }\n',
        "$.sweep[0].resources.nodes",
        "sweep 'melt'",
    ),
    case(
        "command-element-is-an-int",
        '[[task]]\nid = "a"\ncommand = ["echo", 1]\n',
        "$.task[0].command[1]",
        "Expected `str`, got `int`",
    ),
    case("task-is-not-a-list", "task = 5\n", "$.task", "Expected `array`, got `int`"),
    case(
        "parameter-value-is-a-nested-list",
        '[[sweep]]\nid = "s-{T}"\ncommand = ["x"]\nparameters = { T = [[1, 2]] }\n',
        "$.sweep[0].parameters[...][0]",
        "parameter 'T'",
    ),
    case(
        "resources-is-a-list-json",
        json_doc({"task": [{"id": "a", "command": ["x"], "resources": [1]}]}),
        "$.task[0].resources",
        "Expected `object`, got `array`",
        file="ensemble.json",
    ),
    case(
        "after-holds-an-int",
        toml_task(after="[1]"),
        "$.task[0].after[0]",
        "Expected `str`, got `int`",
    ),
    case("cwd-is-an-int", toml_task(cwd="5"), "$.task[0].cwd", "Expected `str`, got `int`"),
    case(
        "strategy-is-unknown",
        '[ensemble]\nstrategy = "lifo"\n' + TASK,
        "$.ensemble.strategy",
        "choose one of: fifo, priority",
    ),
    # Negative or zero counts.
    case("ranks-zero", toml_task(resources="{ ranks = 0 }"), "$.task[0].resources.ranks", ">= 1"),
    case(
        "cores-per-rank-negative",
        toml_task(resources="{ cores_per_rank = -2 }"),
        "$.task[0].resources.cores_per_rank",
        ">= 1",
    ),
    case(
        "gpus-per-rank-negative",
        toml_task(resources="{ gpus_per_rank = -1 }"),
        "$.task[0].resources.gpus_per_rank",
        ">= 0",
    ),
    case("nodes-zero", toml_task(resources="{ nodes = 0 }"), "$.task[0].resources.nodes", ">= 1"),
    case("timeout-zero", toml_task(timeout="0"), "$.task[0].timeout", "> 0"),
    case(
        "timeout-negative-json",
        json_doc({"task": [{"id": "a", "command": ["x"], "timeout": -3}]}),
        "$.task[0].timeout",
        "> 0",
        file="ensemble.json",
    ),
    case("timeout-infinite", toml_task(timeout="inf"), "$.task[0].timeout", "finite", "'a'"),
    case("retries-negative", toml_task(retries="-1"), "$.task[0].retries", ">= 0"),
    case("estimate-negative", toml_task(estimate="-5.0"), "$.task[0].estimate", ">= 0"),
    case("ensemble-cores-zero", "[ensemble]\ncores = 0\n" + TASK, "$.ensemble.cores", ">= 1"),
    case("ensemble-gpus-negative", "[ensemble]\ngpus = -1\n" + TASK, "$.ensemble.gpus", ">= 0"),
    case(
        "ranks-not-divisible-by-nodes",
        toml_task(resources="{ ranks = 3, nodes = 2 }"),
        "$.task[0].resources.ranks",
        "task 'a'",
        "multiple of resources.nodes",
    ),
    # Booleans where integers are expected.
    case(
        "ranks-true",
        toml_task(resources="{ ranks = true }"),
        "$.task[0].resources.ranks",
        "got `bool`",
    ),
    case(
        "retries-true-json",
        json_doc({"task": [{"id": "a", "command": ["x"], "retries": True}]}),
        "$.task[0].retries",
        "got `bool`",
        file="ensemble.json",
    ),
    case("timeout-false", toml_task(timeout="false"), "$.task[0].timeout", "got `bool`"),
    case("ensemble-cores-true", "[ensemble]\ncores = true\n" + TASK, "$.ensemble.cores", "bool"),
    # Unknown keys, with a did-you-mean.
    case(
        "unknown-top-level-key",
        '[[tasks]]\nid = "a"\ncommand = ["x"]\n',
        "unknown field `tasks`",
        "did you mean 'task'?",
    ),
    case(
        "unknown-task-key",
        toml_task(timout="5"),
        "unknown field `timout`",
        "$.task[0]",
        "task 'a'",
        "did you mean 'timeout'?",
    ),
    case(
        "unknown-resources-key",
        toml_task(resources="{ gpus = 1 }"),
        "unknown field `gpus`",
        "$.task[0].resources",
        "did you mean 'gpus_per_rank'?",
    ),
    case(
        "unknown-sweep-key",
        '[[sweep]]\nid = "s-{T}"\ncommand = ["x"]\nparamters = { T = [1] }\n',
        "unknown field `paramters`",
        "$.sweep[0]",
        "did you mean 'parameters'?",
    ),
    case(
        "unknown-ensemble-key",
        '[ensemble]\nstrategi = "fifo"\n' + TASK,
        "unknown field `strategi`",
        "$.ensemble",
        "did you mean 'strategy'?",
    ),
    case(
        "unknown-defaults-key-json",
        json_doc({"defaults": {"retires": 1}, "task": [{"id": "a", "command": ["x"]}]}),
        "unknown field `retires`",
        "$.defaults",
        "did you mean 'retries'?",
        file="ensemble.json",
    ),
    case(
        "defaults-sets-command",
        '[defaults]\ncommand = ["x"]\n' + TASK,
        "$.defaults",
        "[defaults] cannot set 'command'",
    ),
    # Duplicate ids.
    case(
        "two-tasks-same-id",
        TASK + TASK,
        "duplicate task id 'a'",
        "at $.task[1]",
        "first defined at $.task[0]",
    ),
    case(
        "sweep-collides-with-a-task",
        '[[task]]\nid = "melt-1"\ncommand = ["x"]\n'
        '[[sweep]]\nid = "melt-{T}"\ncommand = ["x"]\nparameters = { T = [2, 1] }\n',
        "duplicate task id 'melt-1'",
        "$.sweep[0] point 1",
        "$.task[0]",
    ),
    case(
        "duplicate-within-a-sweep",
        '[[sweep]]\nid = "s-{a}"\ncommand = ["x"]\nparameters = { a = [1], b = [1, 2] }\n',
        "duplicate task id 's-1'",
        "$.sweep[0] point 1",
        "every parameter that varies",
    ),
    case(
        "sweep-name-is-a-task-id",
        TASK + '[[sweep]]\nname = "a"\nid = "s-{T}"\ncommand = ["x"]\nparameters = { T = [1] }\n',
        "sweep name 'a' is also a task id",
    ),
    # Ids that cannot be directory names.
    case("id-with-slash", '[[task]]\nid = "a/b"\ncommand = ["x"]\n', "$.task[0].id", "'/'"),
    case("id-dot-dot", '[[task]]\nid = ".."\ncommand = ["x"]\n', "$.task[0].id", "'..'"),
    case("id-leading-dash", '[[task]]\nid = "-rf"\ncommand = ["x"]\n', "task '-rf'", "'-'"),
    case("id-leading-dot", '[[task]]\nid = ".hidden"\ncommand = ["x"]\n', "'.hidden'", "'.'"),
    case("id-with-space", '[[task]]\nid = "a b"\ncommand = ["x"]\n', "'a b'", "' '"),
    case("id-with-newline", '[[task]]\nid = "a\\nb"\ncommand = ["x"]\n', "'a\\nb'", "'\\n'"),
    case("id-with-nul", '[[task]]\nid = "a\\u0000b"\ncommand = ["x"]\n', "$.task[0].id", "NUL"),
    case("id-with-escape", '[[task]]\nid = "a\\u001bb"\ncommand = ["x"]\n', "'\\x1b'"),
    case("id-non-ascii", '[[task]]\nid = "schmelze-ä"\ncommand = ["x"]\n', "'ä'"),
    case(
        "id-of-1000-characters",
        '[[task]]\nid = "' + "x" * 1000 + '"\ncommand = ["x"]\n',
        "$.task[0].id",
        "1000 characters long (at most 200)",
    ),
    case("id-empty", '[[task]]\nid = ""\ncommand = ["x"]\n', "$.task[0].id", "must not be empty"),
    case(
        "sweep-makes-a-bad-id",
        '[[sweep]]\nid = "run/{T}"\ncommand = ["x"]\nparameters = { T = [1] }\n',
        "$.sweep[0] point 0",
        "'run/1'",
        "'/'",
    ),
    # Unknown and cyclic prerequisites.
    case(
        "unknown-prerequisite",
        '[[task]]\nid = "prepare"\ncommand = ["x"]\n'
        '[[task]]\nid = "report"\ncommand = ["x"]\nafter = ["prepar"]\n',
        "$.task[1]",
        "task 'report'",
        "'prepar'",
        "did you mean 'prepare'?",
    ),
    case("self-prerequisite", toml_task(after='["a"]'), "$.task[0]", "lists itself"),
    case(
        "two-cycle",
        '[[task]]\nid = "a"\ncommand = ["x"]\nafter = ["b"]\n'
        '[[task]]\nid = "b"\ncommand = ["x"]\nafter = ["a"]\n',
        "prerequisites form a cycle",
        "'a' ($.task[0])",
        "'b' ($.task[1])",
    ),
    case(
        "six-cycle",
        CYCLE6,
        "prerequisites form a cycle",
        *(f"'t{i}' ($.task[{i}])" for i in range(6)),
    ),
    case(
        "cycle-through-a-sweep-name",
        '[[sweep]]\nname = "melt"\nid = "m-{T}"\ncommand = ["x"]\nparameters = { T = [1, 2] }\n'
        'after = ["post"]\n[[task]]\nid = "post"\ncommand = ["x"]\nafter = ["melt"]\n',
        "prerequisites form a cycle",
        "'post' ($.task[0])",
        "$.sweep[0] point",
    ),
    # Environment.
    case(
        "env-value-is-a-list",
        toml_task(env="{ OMP = [1, 2] }"),
        "$.task[0].env[...]",
        "env['OMP'] must be a string or a number",
    ),
    case(
        "env-value-is-a-table",
        toml_task(env="{ OMP = { n = 1 } }"),
        "$.task[0].env[...]",
        "env['OMP']",
    ),
    case("env-value-is-a-bool", toml_task(env="{ DEBUG = true }"), "env['DEBUG']", "got `bool`"),
    case(
        "env-name-with-equals",
        toml_task(env='{ "A=B" = "1" }'),
        "$.task[0].env['A=B']",
        "not a valid variable name",
    ),
    case(
        "env-name-empty", toml_task(env='{ "" = "1" }'), "$.task[0].env['']", "not a valid variable"
    ),
    case("env-value-with-nul", toml_task(env='{ A = "x\\u0000" }'), "$.task[0].env['A']", "NUL"),
    case(
        "tags-key-with-nul",
        toml_task(tags='{ "k\\u0000" = "v" }'),
        "$.task[0].tags",
        "task 'a'",
        "NUL",
    ),
    case("env-is-a-string", toml_task(env='"A=1"'), "$.task[0].env", "Expected `object`"),
    # Commands.
    case(
        "command-empty-list",
        '[[task]]\nid = "a"\ncommand = []\n',
        "$.task[0].command",
        "length >= 1",
    ),
    case("command-empty-string", '[[task]]\nid = "a"\ncommand = "  "\n', "must not be empty"),
    case(
        "command-is-a-number",
        '[[task]]\nid = "a"\ncommand = 5\n',
        "$.task[0].command",
        "got `int`",
    ),
    case(
        "command-cannot-be-split",
        '[[task]]\nid = "a"\ncommand = "echo \'unclosed"\n',
        "task 'a'",
        "cannot be split",
    ),
    case(
        "command-missing", '[[task]]\nid = "a"\n', "missing required field `command`", "$.task[0]"
    ),
    # Syntax, emptiness, the file itself.
    case(
        "toml-syntax-error",
        '[[task]]\nid = "a"\ncommand = ["x",\n\nretries = \n',
        "invalid TOML",
        "line ",
    ),
    case("toml-unterminated-string", '[[task]]\nid = "a\n', "invalid TOML", "line 2"),
    case("toml-key-given-twice", TASK + 'id = "b"\n', "invalid TOML", "line 4"),
    case(
        "json-syntax-error",
        '{\n  "task": [\n}',
        "invalid JSON",
        "line 3",
        file="ensemble.json",
    ),
    case(
        "json-unfinished",
        '{"task": [{"id": "a"',
        "invalid JSON",
        "unfinished",
        file="ensemble.json",
    ),
    case(
        "json-key-given-twice",
        '{"task": [{"id": "a", "command": ["x"], "id": "b"}]}',
        "key 'id' is given twice",
        "$.task[0]",
        file="ensemble.json",
    ),
    case(
        "json-top-level-is-a-list",
        "[]",
        "Expected `object`, got `array`",
        file="ensemble.json",
    ),
    case(
        "toml-not-utf8",
        TASK.encode().replace(b"true", b"tr\xffue"),
        "not UTF-8 text",
        "byte 0xff",
        "line 3",
    ),
    case(
        "json-not-utf8",
        b'{"task": [{"id": "a",\n"command": ["\xfe"]}]}',
        "not UTF-8 text",
        "line 2",
        file="ensemble.json",
    ),
    case("empty-toml-file", "", "the file is empty", "defines no tasks"),
    case("blank-json-file", " \n\n", "the file is empty", file="ensemble.json"),
    case("only-defaults", "[defaults]\ntimeout = 5\n", "defines no tasks"),
    case("file-not-found", None, "cannot read ensemble file", "No such file"),
    case(
        "unsupported-suffix",
        TASK,
        "unknown ensemble file type '.yaml'",
        "use .toml or .json",
        file="ensemble.yaml",
    ),
    # Run settings and sweeps.
    case(
        "ensemble-name-with-slash",
        '[ensemble]\nname = "../escape"\n' + TASK,
        "$.ensemble.name",
        "directory names",
    ),
    case("ensemble-run-dir-empty", '[ensemble]\nrun_dir = ""\n' + TASK, "$.ensemble.run_dir"),
    case(
        "sweep-of-a-trillion-points",
        '[[sweep]]\nid = "s-{a}-{b}"\ncommand = ["x"]\n'
        "parameters = { a = { stop = 1000000 }, b = { stop = 1000000 } }\n",
        "$.sweep[0]",
        "1,000,000,000,000 points",
    ),
    # Too large to expand: refused from the parameter definitions, before any point is made.
    case(
        "range-longer-than-a-64-bit-length",
        '[[sweep]]\nid = "r-{x}"\ncommand = ["x"]\n'
        "parameters = { x = { start = -9000000000000000000, stop = 9000000000000000000 } }\n",
        "$.sweep[0]",
        "18,000,000,000,000,000,000 points",
        "MATENSEMBLE_MAX_TASKS",
    ),
    case(
        "linspace-of-ten-billion-points",
        '[[sweep]]\nid = "l-{x}"\ncommand = ["x"]\n'
        "parameters = { x = { linspace = [0, 1, 10000000000] } }\n",
        "10,000,000,000 points",
        "limit of 1,000,000 tasks per ensemble file",
        "max_tasks = 10000000000",
    ),
    case(
        "more-tasks-than-the-file-s-own-max-tasks",
        '[ensemble]\nmax_tasks = 3\n[[task]]\nid = "a"\ncommand = ["x"]\n'
        '[[sweep]]\nname = "s"\nid = "s-{i}"\ncommand = ["x"]\nparameters = { i = { stop = 3 } }\n',
        "$.sweep[0] (sweep 's')",
        "the sweep has 3 points",
        "would expand to 4 tasks",
        "the file's own limit, max_tasks = 3",
    ),
    case(
        "json-nested-100000-levels",
        '{"task": ' + "[" * DEEP + "]" * DEEP + "}",
        "nested too deeply",
        file="ensemble.json",
    ),
    case("toml-nested-100000-levels", "x = " + "[" * DEEP + "]" * DEEP, "nested too deeply"),
    case(
        "toml-inline-tables-nested-100000-levels",
        "x = " + "{a=" * DEEP + "1" + "}" * DEEP,
        "nested too deeply",
    ),
    case(
        "template-names-an-unknown-parameter",
        '[[sweep]]\nname = "melt"\nid = "m-{T}"\ncommand = ["lmp", "{temp}"]\n'
        "parameters = { T = [1.0] }\n",
        "sweep 'melt'",
        "{temp}",
    ),
    case(
        "zip-of-unequal-lists",
        '[[sweep]]\nid = "r-{a}-{b}"\ncommand = ["x"]\nparameters = { a = [1, 2], b = [1] }\n'
        'mode = "zip"\n',
        "$.sweep[0]",
        "a: 2, b: 1",
    ),
]


@pytest.mark.parametrize(("file", "text", "fragments"), FILE_CASES)
def test_a_malformed_ensemble_file_is_refused_naming_the_place(
    tmp_path: Path, file: str, text: str | bytes | None, fragments: Sequence[str]
) -> None:
    path = tmp_path / file
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    before = sorted(tmp_path.iterdir())
    with pytest.raises(SpecError) as info:
        load_ensemble(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert sorted(tmp_path.iterdir()) == before


def test_numbers_in_env_and_tags_become_strings_and_booleans_do_not(tmp_path: Path) -> None:
    """The documented leniency of files: ``THREADS = 2`` means ``"2"``; ``true`` is refused."""
    path = tmp_path / "e.toml"
    path.write_text(toml_task(env="{ THREADS = 2, SCALE = 0.5 }", tags="{ n = 3 }"))
    (task,) = load_ensemble(path).tasks
    assert task.env == {"THREADS": "2", "SCALE": "0.5"}
    assert task.tags == {"n": "3"}


def test_a_byte_order_mark_some_editors_write_is_no_error(tmp_path: Path) -> None:
    for name in ("e.toml", "e.json"):
        path = tmp_path / name
        text = TASK if name == "e.toml" else json_doc({"task": [{"id": "a", "command": ["x"]}]})
        path.write_bytes(b"\xef\xbb\xbf" + text.encode())
        assert [t.id for t in load_ensemble(path).tasks] == ["a"]


# --- The Python API: Task and Resources ----------------------------------------------------------


def api(name: str, build: Callable[[], object], error: type[Exception], *fragments: str) -> Any:
    return pytest.param(build, error, fragments, id=name)


def task(**fields: Any) -> Task:
    fields.setdefault("id", "a")
    fields.setdefault("command", ["true"])
    return Task(**fields)


API_CASES = [
    api("resources-ranks-zero", lambda: Resources(ranks=0), SpecError, "resources.ranks", ">= 1"),
    api("resources-ranks-true", lambda: Resources(ranks=True), SpecError, "resources.ranks"),
    api("resources-ranks-float", lambda: Resources(ranks=2.0), SpecError, "got 2.0"),
    api(
        "resources-cores-per-rank-negative",
        lambda: Resources(cores_per_rank=-2),
        SpecError,
        "resources.cores_per_rank",
    ),
    api(
        "resources-gpus-per-rank-negative",
        lambda: Resources(gpus_per_rank=-1),
        SpecError,
        "resources.gpus_per_rank",
        ">= 0",
    ),
    api("resources-nodes-zero", lambda: Resources(nodes=0), SpecError, "resources.nodes"),
    api(
        "resources-ranks-not-divisible-by-nodes",
        lambda: Resources(ranks=3, nodes=2),
        SpecError,
        "multiple of resources.nodes (2)",
    ),
    api("resources-mpi-not-bool", lambda: Resources(mpi="yes"), SpecError, "resources.mpi"),
    api(
        "resources-exclusive-not-bool",
        lambda: Resources(exclusive=1),
        SpecError,
        "resources.exclusive",
    ),
    api("resources-unknown-keyword", lambda: Resources(rank=2), TypeError, "'rank'"),
    api(
        "command-is-one-string",
        lambda: task(command="lmp -in in.melt"),
        SpecError,
        "task 'a'",
        "not a string",
        "command=['lmp', '-in', 'in.melt']",
    ),
    api("command-empty", lambda: task(command=[]), SpecError, "command must not be empty"),
    api("command-none", lambda: task(command=None), SpecError, "command", "NoneType"),
    api("command-element-int", lambda: task(command=["x", 1]), SpecError, "command[1]", "int"),
    api("command-program-empty", lambda: task(command=[""]), SpecError, "command[0]"),
    # A NUL cannot reach the OS (argv, paths and the environment are C strings): refused when
    # the task is built, as a file refuses it, not at launch.
    api("command-program-with-nul", lambda: task(command=["ls\0"]), SpecError, "command[0]", "NUL"),
    api(
        "command-argument-with-nul",
        lambda: task(command=["echo", "a\0b"]),
        SpecError,
        "task 'a'",
        "command[1] contains a NUL",
    ),
    api("after-with-nul", lambda: task(after=["prep\0"]), SpecError, "after[0]", "NUL"),
    api("tags-key-with-nul", lambda: task(tags={"k\0": "v"}), SpecError, "tags key", "NUL"),
    api("tags-value-with-nul", lambda: task(tags={"k": "v\0"}), SpecError, "tags['k']", "NUL"),
    api("env-key-with-nul", lambda: task(env={"A\0": "1"}), SpecError, "env", "NUL"),
    api("env-value-with-nul", lambda: task(env={"A": "1\0"}), SpecError, "env['A']", "NUL"),
    api("cwd-with-nul", lambda: task(cwd="/tmp\0x"), SpecError, "cwd", "NUL"),
    api(
        "resources-as-a-dict",
        lambda: task(resources={"ranks": 2}),
        SpecError,
        "resources must be a Resources",
    ),
    api("env-value-list", lambda: task(env={"A": ["1"]}), SpecError, "env['A']", "list"),
    api(
        "env-value-number",
        lambda: task(env={"THREADS": 4}),
        SpecError,
        "env['THREADS']",
        "convert numbers with str()",
    ),
    api("env-name-with-equals", lambda: task(env={"A=B": "1"}), SpecError, "env name 'A=B'"),
    api("env-name-empty", lambda: task(env={"": "1"}), SpecError, "env name ''"),
    api("env-not-a-dict", lambda: task(env=[("A", "1")]), SpecError, "env must be a dict"),
    api("tags-value-number", lambda: task(tags={"n": 1}), SpecError, "tags['n']"),
    api("timeout-zero", lambda: task(timeout=0), SpecError, "timeout must be > 0"),
    api("timeout-negative", lambda: task(timeout=-1.0), SpecError, "timeout must be > 0"),
    api("timeout-true", lambda: task(timeout=True), SpecError, "timeout", "True"),
    api("timeout-nan", lambda: task(timeout=math.nan), SpecError, "timeout", "finite"),
    api("timeout-string", lambda: task(timeout="60"), SpecError, "timeout", "'60'"),
    api("estimate-negative", lambda: task(estimate=-1), SpecError, "estimate must be >= 0"),
    api("retries-negative", lambda: task(retries=-1), SpecError, "retries", ">= 0"),
    api("retries-true", lambda: task(retries=True), SpecError, "retries", "True"),
    api("priority-string", lambda: task(priority="high"), SpecError, "priority", "'high'"),
    api(
        "after-is-one-string",
        lambda: task(after="prepare"),
        SpecError,
        "after must be a list",
        "after=['prepare']",
    ),
    api("after-holds-an-int", lambda: task(after=[1]), SpecError, "after[0]"),
    api("after-names-itself", lambda: task(after=["a"]), SpecError, "lists itself"),
    api("cwd-is-an-int", lambda: task(cwd=5), SpecError, "cwd"),
    api("cwd-empty", lambda: task(cwd=""), SpecError, "cwd"),
    api("inherit-env-string", lambda: task(inherit_env="no"), SpecError, "inherit_env"),
    api("unknown-keyword", lambda: task(timout=5), TypeError, "'timout'"),
    # Machines larger than any real one: refused before one id is made.
    api(
        "local-gpus-beyond-the-per-node-limit",
        lambda: LocalBackend(gpus=100_000_000),
        LimitExceeded,
        "gpus is 100,000,000",
        "1,024 GPUs per node",
        "MATENSEMBLE_MAX_GPUS_PER_NODE=100000000",
    ),
    api(
        "local-gpu-ids-beyond-the-per-node-limit",
        lambda: LocalBackend(gpus=[str(i) for i in range(1025)]),
        LimitExceeded,
        "1,025",
    ),
    api(
        "simulated-nodes-beyond-the-limit",
        lambda: SimulatedBackend(nodes=10**10),
        LimitExceeded,
        "nodes is 10,000,000,000",
        "MATENSEMBLE_MAX_NODES",
    ),
    api(
        "simulated-cores-per-node-beyond-the-limit",
        lambda: SimulatedBackend(1, 10**10),
        LimitExceeded,
        "cores_per_node",
        "MATENSEMBLE_MAX_CORES_PER_NODE",
    ),
    api(
        "simulated-gpus-per-node-beyond-the-limit",
        lambda: SimulatedBackend(1, 8, 10**10),
        LimitExceeded,
        "gpus_per_node",
    ),
    api(
        "simulated-machine-beyond-the-total-limit",
        lambda: SimulatedBackend(1_000_000, 64, 8),
        LimitExceeded,
        "72,000,000",
        "MATENSEMBLE_MAX_MACHINE_IDS",
    ),
]

BAD_IDS = [
    pytest.param("a/b", "'/'", id="slash"),
    pytest.param("..", "'..'", id="dot-dot"),
    pytest.param("x/../y", "'..'", id="dot-dot-inside"),
    pytest.param("-rf", "'-'", id="leading-dash"),
    pytest.param(".hidden", "'.'", id="leading-dot"),
    pytest.param("a b", "' '", id="space"),
    pytest.param("a\nb", "'\\n'", id="newline"),
    pytest.param("a\x00b", "'\\x00'", id="nul"),
    pytest.param("a\x1b[31mred", "'\\x1b'", id="escape"),
    pytest.param("schmelze-ä", "'ä'", id="non-ascii"),
    pytest.param("x" * 1000, "1000 characters long", id="1000-characters"),
    pytest.param("", "must not be empty", id="empty"),
    pytest.param(7, "must be a string, got int", id="int"),
]


@pytest.mark.parametrize(("build", "error", "fragments"), API_CASES)
def test_a_task_or_resources_built_wrongly_is_refused_naming_the_field(
    build: Callable[[], object], error: type[Exception], fragments: Sequence[str]
) -> None:
    with pytest.raises(error) as info:
        build()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


@pytest.mark.parametrize(("task_id", "fragment"), BAD_IDS)
def test_a_task_id_that_is_no_safe_directory_name_is_refused(task_id: Any, fragment: str) -> None:
    with pytest.raises(SpecError, match="task id") as info:
        Task(id=task_id, command=["true"])
    assert fragment in str(info.value)
    assert info.value.field == "id"


# --- The Python API: submitting to a running ensemble ------------------------------------------


def sim_task(task_id: str, **fields: Any) -> Task:
    return Task(id=task_id, command=["true"], tags={"sim_duration": "10"}, **fields)


def chain(prefix: str, n: int, closed: bool) -> list[Task]:
    """``n`` tasks each after the next; ``closed`` makes the last one wait on the first."""
    return [
        sim_task(f"{prefix}{i}", after=[f"{prefix}{(i + 1) % n}"] if closed or i < n - 1 else [])
        for i in range(n)
    ]


def submit(
    name: str, batch: Callable[[], list[Any]], error: type[Exception], *fragments: str
) -> Any:
    return pytest.param(batch, error, fragments, id=name)


SUBMIT_CASES = [
    submit(
        "id-already-submitted",
        lambda: [sim_task("base-0")],
        TaskRejected,
        "'base-0'",
        "already submitted",
    ),
    submit(
        "same-id-twice-in-one-batch",
        lambda: [sim_task("new"), sim_task("new")],
        TaskRejected,
        "'new'",
        "already submitted",
    ),
    submit(
        "unknown-prerequisite",
        lambda: [sim_task("report", after=["bse-0"])],
        DependencyError,
        "task 'report'",
        "unknown prerequisite 'bse-0'",
        "did you mean 'base-0'?",
    ),
    submit(
        "two-cycle",
        lambda: chain("p", 2, closed=True),
        DependencyError,
        "prerequisites form a cycle",
        "p0 -> p1 -> p0",
    ),
    submit(
        "fifty-cycle-behind-a-good-task",
        lambda: [sim_task("fine"), *chain("c", 50, closed=True)],
        DependencyError,
        "prerequisites form a cycle",
        "c49",
    ),
    submit(
        "more-cores-than-the-machine",
        lambda: [sim_task("huge", resources=Resources(ranks=9))],
        TaskRejected,
        "task 'huge' rejected",
        "can never fit",
        "8 cores",
    ),
    submit(
        "a-rank-larger-than-any-node",
        lambda: [sim_task("fat", resources=Resources(cores_per_rank=5))],
        TaskRejected,
        "'fat'",
        "largest node",
        "4 core(s)",
    ),
    submit(
        "gpus-on-a-machine-without-any",
        lambda: [sim_task("gpu", resources=Resources(gpus_per_rank=1))],
        TaskRejected,
        "'gpu'",
        "1 GPU(s)",
        "0 GPU(s)",
    ),
    submit(
        "more-nodes-than-the-machine",
        lambda: [sim_task("wide", resources=Resources(ranks=3, nodes=3))],
        TaskRejected,
        "'wide'",
        "needs 3 node(s)",
        "of 2 node(s)",
    ),
    submit(
        "exclusive-beyond-the-machine",
        lambda: [sim_task("excl", resources=Resources(ranks=9, exclusive=True))],
        TaskRejected,
        "'excl'",
        "whole nodes",
    ),
    submit(
        "not-a-task",
        lambda: [sim_task("fine"), {"id": "dict-task"}],
        TypeError,
        "submit() takes Task objects",
        "dict",
    ),
]


def journal_ids(run_dir: Path) -> list[str]:
    return [e.task.id for e in read_journal(run_dir / "journal.jsonl") if isinstance(e, TaskAdded)]


@pytest.mark.parametrize(("batch", "error", "fragments"), SUBMIT_CASES)
async def test_a_bad_batch_submitted_to_a_running_ensemble_changes_nothing(
    tmp_path: Path, batch: Callable[[], list[Any]], error: type[Exception], fragments: Sequence[str]
) -> None:
    run_dir = tmp_path / "run"
    base = [sim_task("base-0"), sim_task("base-1", after=["base-0"])]
    backend = SimulatedBackend(nodes=2, cores_per_node=4)
    async with Ensemble(base, backend=backend, run_dir=run_dir) as ens:
        async for result in ens.completed():  # let the run get going: one task done
            assert result.id == "base-0"
            break
        counts = ens.counts
        states = {t.id: ens.state(t.id) for t in base}
        bad = batch()
        with pytest.raises(error) as info:
            ens.submit(bad)
        message = str(info.value)
        for fragment in fragments:
            assert fragment in message, f"{fragment!r} not in {message!r}"
        assert ens.counts == counts
        assert {t.id: ens.state(t.id) for t in base} == states
        for item in bad:
            if isinstance(item, Task) and item.id not in states:
                with pytest.raises(KeyError):
                    ens.state(item.id)
        ens.submit(sim_task("later", after=["base-1"]))  # the run goes on
    summary = ens.summary()
    assert summary.ok
    assert set(summary.results) == {"base-0", "base-1", "later"}
    assert journal_ids(run_dir) == ["base-0", "base-1", "later"]


@pytest.mark.parametrize(
    ("tasks", "error", "fragment"),
    [
        pytest.param(chain("t", 3, closed=True), DependencyError, "cycle", id="cycle"),
        pytest.param(
            [sim_task("a", after=["b"])], DependencyError, "unknown prerequisite 'b'", id="unknown"
        ),
        pytest.param([sim_task("a"), sim_task("a")], TaskRejected, "'a'", id="duplicate"),
        pytest.param(
            [sim_task("big", resources=Resources(ranks=64))], TaskRejected, "'big'", id="too-big"
        ),
    ],
)
async def test_a_run_whose_initial_tasks_are_refused_leaves_no_run_directory(
    tmp_path: Path, tasks: list[Task], error: type[Exception], fragment: str
) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(error, match="rejected") as info:
        await Ensemble(tasks, backend=SimulatedBackend(cores_per_node=4), run_dir=run_dir).run()
    assert fragment in str(info.value)
    assert not run_dir.exists()


async def test_a_task_whose_cwd_does_not_exist_fails_with_the_directory_named(
    tmp_path: Path,
) -> None:
    """Not a rejection: the directory may be made by a prerequisite, so it is checked at launch."""
    missing = tmp_path / "no-such-dir"
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    tasks = [
        Task(id="lost", command=["true"], cwd=str(missing)),
        Task(id="after-lost", command=["true"], after=["lost"]),
        Task(id="in-a-file", command=["true"], cwd=a_file),  # a Path is accepted too
        Task(id="fine", command=["true"]),
    ]
    summary = await Ensemble(tasks, backend=LocalBackend(cores=1), run_dir=tmp_path / "run").run()
    lost = summary.results["lost"]
    assert lost.state is TaskState.FAILED
    assert lost.reason == f"working directory not found: {str(missing)!r}"
    assert summary.results["after-lost"].state is TaskState.SKIPPED
    assert "prerequisite 'lost' failed" in (summary.results["after-lost"].reason or "")
    in_a_file = summary.results["in-a-file"]
    assert in_a_file.state is TaskState.FAILED
    assert in_a_file.reason is not None and str(a_file) in in_a_file.reason
    assert summary.results["fine"].state is TaskState.SUCCEEDED
    assert not missing.exists()


async def test_reprioritise_with_a_non_integer_is_refused_and_changes_nothing(
    tmp_path: Path,
) -> None:
    async with Ensemble(
        [sim_task("a"), sim_task("b", after=["a"])],
        backend=SimulatedBackend(),
        run_dir=tmp_path / "run",
    ) as ens:
        with pytest.raises(SpecError, match="priority"):
            ens.reprioritise("b", "urgent")  # type: ignore[arg-type]
        with pytest.raises(KeyError, match="'nope'"):
            ens.cancel("nope")
    assert ens.summary().ok


# --- The command line -------------------------------------------------------------------------


GOOD = TASK
MACHINE_CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1


def cli(name: str, args: list[str], text: str | None, *fragments: str) -> Any:
    """``args`` may name ``{file}``: the ensemble file, written with ``text`` unless it is None."""
    return pytest.param(args, text, fragments, id=name)


CLI_CASES = [
    cli("file-not-found", ["run", "{file}"], None, "e.toml", "cannot read ensemble file"),
    cli("unsupported-suffix", ["run", "ensemble.yaml"], None, "ensemble.yaml", "'.yaml'"),
    cli(
        "unknown-key-did-you-mean",
        ["run", "{file}"],
        toml_task(timout="5"),
        "e.toml",
        "$.task[0]",
        "did you mean 'timeout'?",
    ),
    cli("toml-syntax-error", ["run", "{file}"], '[[task]]\nid = "a\n', "e.toml", "line 2"),
    cli("empty-file", ["run", "{file}"], "", "e.toml", "the file is empty", "[[task]]"),
    cli(
        "brackets-in-the-message-are-printed",
        ["run", "{file}"],
        '[defaults]\ncommand = ["x"]\n' + TASK,
        "[defaults] cannot set 'command'",
        "[[task]] or [[sweep]]",
    ),
    cli(
        "cycle",
        ["run", "{file}"],
        CYCLE6,
        "e.toml",
        "prerequisites form a cycle",
        "'t0' ($.task[0])",
    ),
    cli(
        "task-larger-than-the-machine",
        ["run", "{file}", "--cores", "1"],
        toml_task(resources="{ ranks = 2 }"),
        "task 'a' rejected",
        "can never fit",
    ),
    cli(
        "bad-strategy",
        ["run", "{file}", "--strategy", "lifo"],
        GOOD,
        "--strategy",
        "invalid choice: 'lifo'",
    ),
    cli("cores-zero", ["run", "{file}", "--cores", "0"], GOOD, "--cores must be at least 1"),
    cli("cores-negative", ["run", "{file}", "--cores", "-3"], GOOD, "--cores", "got -3"),
    cli("cores-not-a-number", ["run", "{file}", "--cores", "all"], GOOD, "--cores", "'all'"),
    cli(
        "cores-more-than-the-machine",
        ["run", "{file}", "--cores", str(MACHINE_CORES + 1)],
        GOOD,
        "--cores",
        f"cores={MACHINE_CORES + 1}",
        "may use cores",
    ),
    cli(
        "file-cores-more-than-the-machine",
        ["run", "{file}"],
        f"[ensemble]\ncores = {MACHINE_CORES + 1}\n" + TASK,
        "e.toml: $.ensemble.cores",
    ),
    cli("gpus-empty-id", ["run", "{file}", "--gpus", "a,,b"], GOOD, "--gpus 'a,,b'", "empty id"),
    cli("gpus-negative", ["run", "{file}", "--gpus", "-1"], GOOD, "--gpus '-1'", "negative"),
    cli("gpus-repeated", ["run", "{file}", "--gpus", "0,0"], GOOD, "--gpus '0,0'", "repeats"),
    cli(
        "gpus-a-hundred-million",
        ["run", "{file}", "--gpus", "100000000"],
        GOOD,
        "--gpus is 100,000,000",
        "limit of 1,024 GPUs per node",
        "MATENSEMBLE_MAX_GPUS_PER_NODE",
    ),
    cli(
        "file-gpus-a-hundred-million",
        ["run", "{file}"],
        "[ensemble]\ngpus = 100000000\n" + TASK,
        "e.toml: $.ensemble.gpus is 100,000,000",
        "MATENSEMBLE_MAX_GPUS_PER_NODE",
    ),
    cli(
        "gpus-as-a-float",
        ["run", "{file}", "--gpus", "1e8"],
        GOOD,
        "--gpus '1e8' is not a whole count",
    ),
    cli(
        "simulated-gpus-ten-billion",
        ["run", "{file}", "--backend", "simulated", "--gpus", "10000000000"],
        GOOD,
        "--gpus is 10,000,000,000",
    ),
    cli(
        "simulated-cores-ten-billion",
        ["run", "{file}", "--backend", "simulated", "--cores", "10000000000"],
        GOOD,
        "--cores is 10,000,000,000",
        "MATENSEMBLE_MAX_CORES_PER_NODE",
    ),
    cli("walltime-nan", ["run", "{file}", "--walltime", "nan"], GOOD, "--walltime", "'nan'"),
    cli("walltime-inf", ["run", "{file}", "--walltime", "inf"], GOOD, "--walltime", "'inf'"),
    cli("walltime-nan-minutes", ["run", "{file}", "--walltime", "nan:00"], GOOD, "'nan:00'"),
    cli(
        "file-nested-100000-levels",
        ["run", "{file}"],
        "x = " + "[" * DEEP + "]" * DEEP,
        "e.toml: the document is nested too deeply",
    ),
    cli(
        "file-is-a-directory",
        ["run", "{dir}"],
        None,
        "d.toml: cannot read ensemble file: it is a directory",
    ),
    cli(
        "simulated-cores-zero",
        ["run", "{file}", "--backend", "simulated", "--cores", "0"],
        GOOD,
        "--cores must be at least 1",
    ),
    cli(
        "unknown-backend",
        ["run", "{file}", "--backend", "slurm"],
        GOOD,
        "--backend",
        "invalid choice: 'slurm'",
    ),
    cli(
        "local-spawners-on-flux",
        ["run", "{file}", "--backend", "flux", "--local-spawners", "processes"],
        GOOD,
        "--local-spawners applies to the local backend only, not --backend flux",
    ),
    cli(
        "local-spawners-on-simulated",
        ["run", "{file}", "--backend", "simulated", "--local-spawners", "threads"],
        GOOD,
        "--local-spawners applies to the local backend only, not --backend simulated",
    ),
    cli(
        "local-spawners-unknown",
        ["run", "{file}", "--local-spawners", "forks"],
        GOOD,
        "--local-spawners",
        "invalid choice: 'forks'",
    ),
    cli(
        "local-cores-per-helper-on-flux",
        ["run", "{file}", "--backend", "flux", "--local-cores-per-helper", "2"],
        GOOD,
        "--local-cores-per-helper applies to the local backend only, not --backend flux",
    ),
    cli(
        "local-cores-per-helper-with-threads",
        ["run", "{file}", "--local-spawners", "threads", "--local-cores-per-helper", "1"],
        GOOD,
        "--local-cores-per-helper applies to helper processes, not --local-spawners threads",
    ),
    cli(
        "local-cores-per-helper-zero",
        ["run", "{file}", "--local-spawners", "processes", "--local-cores-per-helper", "0"],
        GOOD,
        "--local-cores-per-helper must be at least 1, got 0",
    ),
    cli(
        "local-cores-per-helper-not-a-count",
        ["run", "{file}", "--local-spawners", "processes", "--local-cores-per-helper", "two"],
        GOOD,
        "--local-cores-per-helper",
        "invalid int value: 'two'",
    ),
    cli(
        "resume-local-cores-per-helper-on-simulated",
        ["resume", "nowhere", "--backend", "simulated", "--local-cores-per-helper", "2"],
        None,
        "--local-cores-per-helper applies to the local backend only, not --backend simulated",
    ),
    cli(
        "queue-ahead-on-simulated",
        ["run", "{file}", "--backend", "simulated", "--queue-ahead"],
        GOOD,
        "--queue-ahead applies to the local and flux backends only, not --backend simulated",
    ),
    cli(
        "no-queue-ahead-on-simulated",
        ["run", "{file}", "--backend", "simulated", "--no-queue-ahead"],
        GOOD,
        "--no-queue-ahead applies to the local and flux backends only, not --backend simulated",
    ),
    cli(
        "queue-ahead-depend-on-local",
        ["run", "{file}", "--queue-ahead-depend"],
        GOOD,
        "--queue-ahead-depend applies to the flux backend only, not --backend local; "
        "give --queue-ahead",
    ),
    cli(
        "queue-ahead-twice",
        ["run", "{file}", "--backend", "flux", "--queue-ahead", "--queue-ahead-depend"],
        GOOD,
        "--queue-ahead-depend: not allowed with argument --queue-ahead",
    ),
    cli(
        "resume-local-spawners-on-simulated",
        ["resume", "nowhere", "--backend", "simulated", "--local-spawners", "processes"],
        None,
        "--local-spawners applies to the local backend only, not --backend simulated",
    ),
    cli(
        "flux-partitions-without-backend-flux",
        ["run", "{file}", "--flux-partitions", "4"],
        GOOD,
        "--flux-partitions applies to the flux backend only, not --backend local",
    ),
    cli(
        "flux-uri-on-simulated",
        ["run", "{file}", "--backend", "simulated", "--flux-uri", "local:///tmp/x"],
        GOOD,
        "--flux-uri applies to the flux backend only, not --backend simulated",
    ),
    cli(
        "reserve-driver-cores-without-backend-flux",
        ["run", "{file}", "--reserve-driver-cores", "2"],
        GOOD,
        "--reserve-driver-cores applies to the flux backend only, not --backend local",
    ),
    cli(
        "cores-on-flux",
        ["run", "{file}", "--backend", "flux", "--cores", "4"],
        GOOD,
        "--cores applies to the local and simulated backends only, not --backend flux: Flux runs "
        "the tasks on the resources of its instance",
    ),
    cli(
        "gpus-on-flux",
        ["resume", "nowhere", "--backend", "flux", "--gpus", "0,1"],
        None,
        "--gpus applies to the local and simulated backends only, not --backend flux",
    ),
    cli("status-without-status-json", ["status", "."], None, "no status.json"),
    cli("status-of-a-missing-directory", ["status", "nowhere"], None, "nowhere", "no status.json"),
]


@pytest.mark.parametrize(("args", "text", "fragments"), CLI_CASES)
def test_bad_command_line_input_exits_2_with_one_message_and_no_traceback(
    tmp_path: Path, args: list[str], text: str | None, fragments: Sequence[str]
) -> None:
    spec = tmp_path / "e.toml"
    if text is not None:
        spec.write_text(text)
    (tmp_path / "d.toml").mkdir()
    argv = [a.replace("{file}", str(spec)).replace("{dir}", str(tmp_path / "d.toml")) for a in args]
    if argv[0] == "run":
        argv += ["--run-dir", str(tmp_path / "run"), "--no-progress"]
    proc = matensemble(*argv, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in proc.stderr, f"{fragment!r} not in {proc.stderr!r}"
    assert len([line for line in proc.stderr.splitlines() if "error" in line]) == 1, proc.stderr
    assert not (tmp_path / "run").exists()


def test_a_run_directory_that_is_a_file_is_refused_and_the_file_kept(tmp_path: Path) -> None:
    spec = tmp_path / "e.toml"
    spec.write_text(GOOD)
    occupied = tmp_path / "notes.txt"
    occupied.write_text("keep me")
    proc = matensemble("run", spec, "--run-dir", occupied, "--no-progress", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert f"{occupied}: File exists" in proc.stderr
    assert occupied.read_text() == "keep me"


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"backend": "local"}, "backend must be a Backend"),
        ({"strategy": "fifo"}, "strategy must be a SubmissionOrder"),
        ({"completion": "waves"}, "completion must be a CompletionPolicy"),
        ({"run_dir": 5}, "run_dir must be a path"),
        ({"walltime": -1}, "walltime must be > 0"),
    ],
)
def test_an_ensemble_built_with_the_wrong_kind_of_argument_is_refused_at_once(
    kwargs: dict[str, Any], fragment: str, tmp_path: Path
) -> None:
    with pytest.raises((TypeError, ValueError), match=fragment):
        Ensemble([sim_task("a")], **{"backend": SimulatedBackend(), **kwargs})
    assert list(tmp_path.iterdir()) == []


async def test_asking_about_an_unknown_task_names_it(tmp_path: Path) -> None:
    async with Ensemble([sim_task("a")], backend=SimulatedBackend(), run_dir=tmp_path) as ens:
        for call in (ens.state, ens.result, lambda i: ens.reprioritise(i, 1), ens.cancel):
            with pytest.raises(KeyError, match="no task with id 'nope'"):
                call("nope")


@pytest.mark.parametrize("content", ["", "{", "{}", '{"run_id": 5}'])
def test_status_of_a_damaged_status_file_is_a_clear_error(tmp_path: Path, content: str) -> None:
    (tmp_path / "status.json").write_text(content)
    proc = matensemble("status", tmp_path, cwd=tmp_path)
    assert proc.returncode == 2
    assert "status.json: not a MatEnsemble status file" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- Input too large, or no regular file: refused before memory or time is spent on it --------

SWEEP6 = (
    '[[sweep]]\nname = "s"\nid = "s-{i}"\ncommand = ["true"]\nparameters = { i = { stop = 6 } }\n'
)


def run_cli(*args: str | Path, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """``matensemble`` with extra environment variables (the limits are raised through them)."""
    return subprocess.run(
        [sys.executable, "-m", "matensemble", *map(str, args)],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "1000", "NO_COLOR": "1", **env},
        timeout=120,
        check=False,
    )


def test_an_ensemble_file_that_is_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    fifo = tmp_path / "e.toml"
    os.mkfifo(fifo)
    proc = run_cli("run", fifo, "--run-dir", tmp_path / "run", cwd=tmp_path, env={})
    assert proc.returncode == 2, proc.stderr
    assert f"{fifo}: cannot read ensemble file: it is a FIFO (named pipe)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_an_ensemble_file_that_is_a_device_is_refused_naming_the_file(tmp_path: Path) -> None:
    device = tmp_path / "e.toml"
    device.symlink_to(os.devnull)  # /dev/zero would never end; /dev/null shows the same check
    with pytest.raises(SpecError, match="it is a character device, not a regular file") as info:
        load_ensemble(device)
    assert str(info.value).startswith(f"{device}: ")


def test_an_ensemble_file_over_the_size_limit_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.toml"
    path.write_text(TASK + "# padding\n" * 10)
    monkeypatch.setenv("MATENSEMBLE_MAX_FILE_BYTES", "64")
    with pytest.raises(SpecError) as info:
        load_ensemble(path)
    message = str(info.value)
    assert message.startswith(f"{path}: the file has {path.stat().st_size:,} bytes")
    assert f"MATENSEMBLE_MAX_FILE_BYTES={path.stat().st_size}" in message
    monkeypatch.setenv("MATENSEMBLE_MAX_FILE_BYTES", str(path.stat().st_size))
    assert [t.id for t in load_ensemble(path).tasks] == ["a"]


def test_a_sweep_of_a_trillion_points_is_refused_without_making_one(tmp_path: Path) -> None:
    """The size comes from the parameter definitions: no column, point or id is built."""
    text = (
        b'[[sweep]]\nid = "s-{a}-{b}"\ncommand = ["x", "{a}"]\n'
        b"parameters = { a = { stop = 1000000 }, b = { linspace = [0, 1, 1000000] } }\n"
    )
    tracemalloc.start()
    try:
        with pytest.raises(SpecError, match="1,000,000,000,000 points"):
            parse_ensemble(text, source=str(tmp_path / "typo.toml"), format="toml")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000, f"{peak:,} bytes were allocated to refuse it"


def test_the_task_ceiling_is_the_argument_else_the_file_else_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "e.toml"
    path.write_text(SWEEP6)
    monkeypatch.setenv("MATENSEMBLE_MAX_TASKS", "5")
    with pytest.raises(SpecError, match="limit of 5 tasks per ensemble file"):
        load_ensemble(path)
    assert len(load_ensemble(path, max_tasks=6).tasks) == 6
    with pytest.raises(SpecError, match="limit of max_tasks=4 given"):
        load_ensemble(path, max_tasks=4)
    path.write_text("[ensemble]\nmax_tasks = 6\n" + SWEEP6)
    assert len(load_ensemble(path).tasks) == 6  # the file's own ceiling wins over the variable
    monkeypatch.setenv("MATENSEMBLE_MAX_TASKS", "lots")
    path.write_text(SWEEP6)
    with pytest.raises(LimitExceeded, match="MATENSEMBLE_MAX_TASKS='lots' is not a whole number"):
        load_ensemble(path)


def test_the_message_of_a_refused_sweep_is_the_command_that_raises_the_limit(
    tmp_path: Path,
) -> None:
    """``MATENSEMBLE_MAX_TASKS=6 matensemble run e.toml``, as the refusal suggests, runs it."""
    spec = tmp_path / "e.toml"
    spec.write_text(SWEEP6)
    args = ("run", spec, "--backend", "simulated", "--no-progress")
    refused = run_cli(
        *args, "--run-dir", tmp_path / "r1", cwd=tmp_path, env={"MATENSEMBLE_MAX_TASKS": "5"}
    )
    assert refused.returncode == 2, refused.stderr
    assert "the sweep has 6 points" in refused.stderr
    assert "MATENSEMBLE_MAX_TASKS=6" in refused.stderr
    assert not (tmp_path / "r1").exists()
    ran = run_cli(
        *args, "--run-dir", tmp_path / "r2", cwd=tmp_path, env={"MATENSEMBLE_MAX_TASKS": "6"}
    )
    assert ran.returncode == 0, ran.stderr
    added = [e for e in read_journal(tmp_path / "r2" / "journal.jsonl") if isinstance(e, TaskAdded)]
    assert [e.task.id for e in added] == [f"s-{i}" for i in range(6)]


def test_a_machine_limit_raised_through_its_variable_lets_the_machine_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(LimitExceeded, match="MATENSEMBLE_MAX_NODES=2000000"):
        SimulatedBackend(nodes=2_000_000, cores_per_node=1)
    monkeypatch.setenv("MATENSEMBLE_MAX_NODES", "2000000")
    SimulatedBackend(nodes=2_000_000, cores_per_node=1)  # checked, not built: open() builds
    monkeypatch.setenv("MATENSEMBLE_MAX_GPUS_PER_NODE", "2048")
    LocalBackend(gpus=2048)
