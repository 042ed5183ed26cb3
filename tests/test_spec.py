"""Ensemble files: what they may say, how sweeps expand, and how every mistake is reported."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from matensemble.errors import SpecError
from matensemble.model import Resources
from matensemble.spec import EnsembleSpec, load_ensemble, parse_ensemble

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(tmp_path: Path, text: str, name: str = "ensemble.toml") -> EnsembleSpec:
    path = tmp_path / name
    path.write_text(text)
    return load_ensemble(path)


def error(tmp_path: Path, text: str, name: str = "ensemble.toml") -> str:
    with pytest.raises(SpecError) as info:
        load(tmp_path, text, name)
    message = str(info.value)
    assert message.startswith(f"{tmp_path / name}: "), message
    return message


def ids(spec: EnsembleSpec) -> list[str]:
    return [t.id for t in spec.tasks]


# --- Sweeps ---


def test_sweep_product_expands_every_combination(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        [[sweep]]
        id = "melt-{T}-{seed}"
        command = ["lmp", "-var", "T", "{T}", "-var", "seed", "{seed}"]
        parameters = { T = [1.0, 1.5, 2.0], seed = [1, 2] }
        """,
    )
    assert ids(spec) == [f"melt-{t}-{s}" for t in ("1.0", "1.5", "2.0") for s in (1, 2)]
    assert spec.tasks[3].command == ("lmp", "-var", "T", "1.5", "-var", "seed", "2")


def test_sweep_zip_pairs_parameters_by_position(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        [[sweep]]
        id = "run-{name}"
        command = ["echo", "{name}", "{size}"]
        parameters = { name = ["a", "b", "c"], size = [10, 20, 30] }
        mode = "zip"
        """,
    )
    assert [t.command[1:] for t in spec.tasks] == [("a", "10"), ("b", "20"), ("c", "30")]


def test_zip_sweep_with_unequal_lists_is_rejected_with_their_lengths(tmp_path: Path) -> None:
    message = error(
        tmp_path,
        """
        [[sweep]]
        id = "run-{a}-{b}"
        command = ["true"]
        parameters = { a = [1, 2, 3], b = [1, 2] }
        mode = "zip"
        """,
    )
    assert "$.sweep[0]" in message
    assert "a: 3, b: 2" in message


def test_range_and_linspace_parameters_expand_like_python(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        [[sweep]]
        id = "p-{n}-{x}"
        command = ["echo", "{n}", "{x}"]
        parameters = { n = { start = 0, stop = 10, step = 4 }, x = { linspace = [0.1, 0.5, 5] } }
        """,
    )
    assert {t.tags["n"] for t in spec.tasks} == {"0", "4", "8"}
    assert [t.tags["x"] for t in spec.tasks[:5]] == ["0.1", "0.2", "0.3", "0.4", "0.5"]


def test_parameter_values_become_tags_and_templates_accept_format_specs(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        [[sweep]]
        id = "t{index}"
        command = ["echo", "{T:.2f}", "{flag}"]
        parameters = { T = [300.0], flag = [true], label = "x" }
        tags = { kelvin = "{T:.0f}K" }
        """,
    )
    (task,) = spec.tasks
    assert task.id == "t0"
    assert task.command == ("echo", "300.00", "True")
    assert task.tags == {"T": "300.0", "flag": "True", "label": "x", "kelvin": "300K"}


def test_sweep_fields_are_templates_and_literal_braces_are_doubled(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        [[sweep]]
        id = "s-{seed}"
        command = ["python3", "-c", "print({{'seed': {seed}}})"]
        parameters = { seed = [7] }
        env = { SEED = "{seed}", THREADS = 2 }
        cwd = "work/{seed}"
        """,
    )
    (task,) = spec.tasks
    assert task.command[2] == "print({'seed': 7})"
    assert task.env == {"SEED": "7", "THREADS": "2"}
    assert task.cwd == str(tmp_path / "work" / "7")


def test_sweep_of_100000_points_expands_with_a_task_that_waits_for_all_of_it(
    tmp_path: Path,
) -> None:
    """How fast: ``benchmarks/bounded_input.py`` prints the parse time (a timed test would only
    measure how loaded the machine is)."""
    spec = load(
        tmp_path,
        """
        [[sweep]]
        name = "big"
        id = "p-{a}-{b}"
        command = ["sim", "--a", "{a}", "--b", "{b}"]
        parameters = { a = { start = 0, stop = 1000 }, b = { linspace = [0.0, 1.0, 100] } }
        [[task]]
        id = "report"
        command = ["report"]
        after = ["big"]
        """,
    )
    assert len(spec.tasks) == 100_001
    assert [t.id for t in spec.tasks[:2]] == ["p-0-0.0", "p-0-0.010101010101"]
    assert spec.tasks[99_999].id == "p-999-1.0"
    assert spec.tasks[-1].after == tuple(t.id for t in spec.tasks[:-1])


# --- Defaults, commands, paths ---


def test_defaults_apply_to_tasks_and_sweeps_and_merge_resources_env_and_tags(
    tmp_path: Path,
) -> None:
    spec = load(
        tmp_path,
        """
        [defaults]
        timeout = 60
        retries = 2
        resources = { cores_per_rank = 4 }
        env = { OMP_NUM_THREADS = "4" }
        tags = { project = "melt" }
        [[task]]
        id = "a"
        command = ["true"]
        timeout = 5
        resources = { ranks = 2 }
        env = { EXTRA = "1" }
        [[sweep]]
        id = "b-{i}"
        command = ["true"]
        parameters = { i = [1] }
        tags = { project = "override" }
        """,
    )
    a, b = spec.tasks
    assert (a.timeout, a.retries) == (5.0, 2)
    assert a.resources == Resources(ranks=2, cores_per_rank=4)
    assert a.env == {"OMP_NUM_THREADS": "4", "EXTRA": "1"}
    assert a.tags == {"project": "melt"}
    assert (b.timeout, b.resources.cores_per_rank) == (60.0, 4)
    assert b.tags == {"i": "1", "project": "override"}


def test_string_command_is_split_with_shlex_not_run_through_a_shell(tmp_path: Path) -> None:
    spec = load(
        tmp_path,
        """
        [[task]]
        id = "a"
        command = "python3 -c 'print(1 + 1)' > out.txt"
        """,
    )
    assert spec.tasks[0].command == ("python3", "-c", "print(1 + 1)", ">", "out.txt")


def test_spec_dir_names_the_files_directory_and_relative_cwd_is_resolved_against_it(
    tmp_path: Path,
) -> None:
    spec = load(
        tmp_path,
        """
        [ensemble]
        run_dir = "runs/x"
        [[task]]
        id = "a"
        command = ["python3", "{spec_dir}/analyse.py"]
        cwd = "data"
        """,
    )
    task = spec.tasks[0]
    assert task.command[1] == f"{tmp_path}/analyse.py"
    assert task.cwd == str(tmp_path / "data")
    assert spec.run_dir == str(tmp_path / "runs" / "x")


def test_ensemble_settings_are_read_and_name_defaults_to_the_file_stem(tmp_path: Path) -> None:
    plain = load(tmp_path, '[[task]]\nid = "a"\ncommand = ["true"]\n', name="melt.toml")
    assert (plain.name, plain.strategy, plain.cores, plain.run_dir) == ("melt", None, None, None)
    spec = load(
        tmp_path,
        """
        [ensemble]
        name = "demo"
        strategy = "gpu-first"
        backfill = true
        completion = "waves"
        cores = 8
        gpus = 0
        [[task]]
        id = "a"
        command = ["true"]
        """,
    )
    assert (spec.name, spec.strategy, spec.backfill, spec.completion) == (
        "demo",
        "gpu-first",
        True,
        "waves",
    )
    assert (spec.cores, spec.gpus) == (8, 0)


# --- after ---

AFTER = """
[[task]]
id = "prepare"
command = ["true"]
[[sweep]]
name = "melt"
id = "melt-{T}"
command = ["true"]
parameters = { T = [1, 2] }
after = ["prepare"]
[[sweep]]
id = "analyse-{T}"
command = ["true"]
parameters = { T = [1, 2] }
after = ["melt-{T}"]
[[task]]
id = "report"
command = ["true"]
after = [%s]
"""


def test_after_names_a_task_id_a_sweep_name_or_a_glob(tmp_path: Path) -> None:
    by_name = load(tmp_path, AFTER % '"melt"')
    assert ids(by_name) == ["prepare", "melt-1", "melt-2", "analyse-1", "analyse-2", "report"]
    assert by_name.tasks[1].after == ("prepare",)
    assert by_name.tasks[3].after == ("melt-1",)  # per-point dependency through a template
    assert by_name.tasks[-1].after == ("melt-1", "melt-2")
    assert load(tmp_path, AFTER % '"analyse-*", "prepare"').tasks[-1].after == (
        "analyse-1",
        "analyse-2",
        "prepare",
    )


def test_a_glob_in_after_never_includes_the_task_itself(tmp_path: Path) -> None:
    assert load(tmp_path, AFTER % '"*"').tasks[-1].after == (
        "prepare",
        "melt-1",
        "melt-2",
        "analyse-1",
        "analyse-2",
    )


def test_after_naming_nothing_known_names_the_task_and_suggests_a_fix(tmp_path: Path) -> None:
    message = error(tmp_path, AFTER % '"prepar"')
    assert "task 'report'" in message
    assert "'prepar'" in message
    assert "did you mean 'prepare'?" in message
    assert "no task id" in error(tmp_path, AFTER % '"nothing-*"')


# --- Errors ---


def test_unknown_key_error_names_the_path_and_suggests_the_fix(tmp_path: Path) -> None:
    message = error(tmp_path, '[[task]]\nid = "a"\ncommand = ["true"]\ntimout = 5\n')
    assert "unknown field `timout`" in message
    assert "$.task[0]" in message
    assert "(task 'a'" in message
    assert "did you mean 'timeout'?" in message
    assert "did you mean 'task'?" in error(tmp_path, '[[tasks]]\nid = "a"\n')
    nested = error(tmp_path, '[[task]]\nid = "a"\ncommand = ["x"]\nresources = { rank = 2 }\n')
    assert "$.task[0].resources" in nested
    assert "did you mean 'ranks'?" in nested


def test_defaults_may_not_set_id_command_or_after(tmp_path: Path) -> None:
    message = error(tmp_path, '[defaults]\ncommand = ["x"]\n[[task]]\nid = "a"\ncommand = ["x"]\n')
    assert "$.defaults" in message
    assert "cannot set 'command'" in message


def test_wrong_type_error_names_the_field_path(tmp_path: Path) -> None:
    message = error(
        tmp_path,
        '[[task]]\nid = "a"\ncommand = ["x"]\n[[task]]\nid = "b"\ncommand = ["x"]\n'
        'resources = { ranks = "two" }\n',
    )
    assert "Expected `int`, got `str`" in message
    assert "$.task[1].resources.ranks" in message
    assert "(task 'b'" in message
    assert "$.ensemble.strategy" in error(
        tmp_path, '[ensemble]\nstrategy = "lifo"\n[[task]]\nid = "a"\ncommand = ["x"]\n'
    )


def test_invalid_values_are_rejected_with_the_task_named(tmp_path: Path) -> None:
    assert "$.task[0].retries" in error(
        tmp_path, '[[task]]\nid = "a"\ncommand = ["x"]\nretries = -1\n'
    )
    nodes = error(tmp_path, '[[task]]\nid = "a"\ncommand = ["x"]\nresources = {ranks=3,nodes=2}\n')
    assert "task 'a'" in nodes
    assert "multiple of resources.nodes" in nodes


def test_bad_task_id_is_rejected_with_its_place(tmp_path: Path) -> None:
    message = error(tmp_path, '[[task]]\nid = "a/b"\ncommand = ["x"]\n')
    assert "$.task[0]" in message
    assert "'/'" in message
    swept = error(
        tmp_path, '[[sweep]]\nid = "x-{v}"\ncommand = ["x"]\nparameters = { v = ["a b"] }\n'
    )
    assert "$.sweep[0] point 0" in swept
    assert "'x-a b'" in swept


def test_template_naming_an_unknown_parameter_names_the_sweep_and_the_name(tmp_path: Path) -> None:
    message = error(
        tmp_path,
        """
        [[sweep]]
        name = "melt"
        id = "melt-{T}"
        command = ["lmp", "-var", "T", "{temp}"]
        parameters = { T = [1.0], seed = [1] }
        """,
    )
    assert "sweep 'melt'" in message
    assert "{temp}" in message
    braces = error(tmp_path, '[[task]]\nid = "a"\ncommand = ["python3", "-c", "print({1: 2})"]\n')
    assert "{{" in braces
    assert "task 'a'" in braces


def test_duplicate_ids_name_both_places(tmp_path: Path) -> None:
    message = error(
        tmp_path,
        """
        [[task]]
        id = "melt-1"
        command = ["x"]
        [[sweep]]
        id = "melt-{T}"
        command = ["x"]
        parameters = { T = [2, 1] }
        """,
    )
    assert "duplicate task id 'melt-1'" in message
    assert "$.sweep[0] point 1" in message
    assert "$.task[0]" in message
    same_sweep = error(
        tmp_path,
        '[[sweep]]\nid = "s-{a}"\ncommand = ["x"]\nparameters = { a = [1], b = [1, 2] }\n',
    )
    assert "every parameter that varies" in same_sweep


def test_sweep_without_points_and_file_without_tasks_are_rejected(tmp_path: Path) -> None:
    empty_param = error(
        tmp_path, '[[sweep]]\nid = "s-{a}"\ncommand = ["x"]\nparameters = { a = [] }\n'
    )
    assert "no points" in empty_param
    assert "'a'" in empty_param
    empty_range = error(
        tmp_path,
        '[[sweep]]\nid = "s-{a}"\ncommand = ["x"]\nparameters = { a = { start = 5, stop = 1 } }\n',
    )
    assert "no points" in empty_range
    assert "defines no tasks" in error(tmp_path, "[defaults]\ntimeout = 5\n")
    assert "defines no tasks" in error(tmp_path, "")


def test_syntax_errors_are_reported_with_their_position(tmp_path: Path) -> None:
    assert "line 2" in error(tmp_path, '[[task]]\nid = "a\n')
    message = error(tmp_path, '{\n  "task": [\n}', name="ensemble.json")
    assert "invalid JSON" in message
    assert "line 3" in message


def test_missing_or_unsupported_file_is_a_spec_error_naming_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(SpecError, match=r"nope\.toml: cannot read"):
        load_ensemble(missing)
    with pytest.raises(SpecError, match=r"x\.yaml: unknown ensemble file type"):
        load_ensemble(tmp_path / "x.yaml")


# --- JSON and the shipped examples ---


def test_json_form_is_equivalent_to_toml(tmp_path: Path) -> None:
    document = {
        "sweep": [{"id": "s-{n}", "command": "echo {n}", "parameters": {"n": [1, 2]}}],
        "task": [{"id": "done", "command": ["true"], "after": "s-*"}],
    }
    spec = load(tmp_path, json.dumps(document), name="e.json")
    assert ids(spec) == ["s-1", "s-2", "done"]
    assert spec.tasks[-1].after == ("s-1", "s-2")
    from_bytes = parse_ensemble(
        json.dumps(document).encode(), source=str(tmp_path / "e.json"), format="json"
    )
    assert from_bytes.tasks == spec.tasks


def test_quickstart_example_loads_with_a_prepare_a_36_point_sweep_and_a_report() -> None:
    spec = load_ensemble(EXAMPLES / "quickstart" / "ensemble.toml")
    assert spec.name == "quickstart"
    assert len(spec.tasks) == 38
    prepare, *sweep, report = spec.tasks
    assert prepare.id == "prepare"
    assert report.id == "report"
    assert all(t.after == ("prepare",) for t in sweep)
    assert set(report.after) == {t.id for t in sweep}
    assert sum(len(t.after) for t in spec.tasks) == 72
    script = Path(report.command[1])
    assert script.is_file()
    assert script.parent == EXAMPLES / "quickstart"


def test_json_example_loads() -> None:
    spec = load_ensemble(EXAMPLES / "sweep_json" / "ensemble.json")
    assert len(spec.tasks) == 9
    assert spec.tasks[-1].id == "collect"
    assert len(spec.tasks[-1].after) == 8


def test_loading_works_from_any_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(EXAMPLES / "quickstart" / "ensemble.toml")
    assert load_ensemble(relative).tasks[0].command[1] == str(
        EXAMPLES / "quickstart" / "simulate.py"
    )
