"""A cold call (a new interpreter per call) imports only what its call needs.

Each module a worker imports before the function runs is paid once per cold call: ``runpy``
(``python -m``), ``json`` (which compiles regular expressions), cloudpickle (about 30 ms) and
the engine have no business there. These tests run real workers and look at what they loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from call_target_bare import loaded_modules
from call_targets import make_adder
from hypothesis import given
from hypothesis import strategies as st

from matensemble import Ensemble, task
from matensemble.backends.local import LocalBackend
from matensemble.functions.serialisation import dump_json, load_json

NOT_IN_A_COLD_WORKER = {
    "runpy",
    "importlib.util",
    "json",
    "re",
    "pickle",
    "cloudpickle",
    "msgspec",
    "structlog",
    "anyio",
    "matensemble.engine",
    "matensemble.errors",
}


def bare_interpreter_modules() -> set[str]:
    """What ``python -c`` has imported before it runs anything, in this environment."""
    out = subprocess.run(
        [sys.executable, "-c", "import sys; print('\\n'.join(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return set(out.split())


async def test_a_cold_worker_imports_neither_runpy_nor_json_nor_cloudpickle(
    run_dir: Path,
) -> None:
    async with Ensemble(backend=LocalBackend(cores=2), run_dir=run_dir) as ens:
        loaded = set(await ens.call(loaded_modules))
    assert "matensemble.functions.worker" in loaded  # it is the worker we looked into
    extra = loaded - bare_interpreter_modules()
    assert not extra & NOT_IN_A_COLD_WORKER, sorted(extra & NOT_IN_A_COLD_WORKER)


def test_a_pickled_result_needs_cloudpickle_only_when_it_holds_a_closure() -> None:
    script = (
        "import sys\n"
        "from matensemble.functions.serialisation import encode_value, load_pickle\n"
        "fmt, data = encode_value((1, 2.5, {3}))\n"
        "assert fmt == 'pickle' and load_pickle(data) == (1, 2.5, {3})\n"
        "print('cloudpickle' in sys.modules, 'pickle' in sys.modules)\n"
        "def outer(n):\n"
        "    return lambda x: x + n\n"
        "fmt, data = encode_value([outer(3)])\n"
        "print('cloudpickle' in sys.modules, load_pickle(data)[0](4))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    assert out.split("\n")[:2] == ["False False", "True 7"]


async def test_a_result_holding_a_closure_comes_back_through_cloudpickle(run_dir: Path) -> None:
    async with Ensemble(backend=LocalBackend(cores=2), run_dir=run_dir) as ens:
        adder = await ens.call(make_adder, 3)
    assert adder(4) == 7


async def test_the_worker_started_by_hand_with_python_m_runs_a_recorded_call(
    run_dir: Path,
) -> None:
    async with Ensemble(backend=LocalBackend(cores=2), run_dir=run_dir) as ens:
        ref = ens.call(divmod, 17, 5, id="by-hand")
        assert await ref == (3, 2)
    task_dir = run_dir / "tasks" / "by-hand"
    (task_dir / "result.pkl").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "matensemble.worker", str(task_dir)],
        capture_output=True,
        text=True,
        check=False,
        cwd=task_dir,
    )
    assert proc.returncode == 0, proc.stderr
    async with Ensemble(backend=LocalBackend(cores=2), resume=run_dir) as ens:
        assert await ens.call(divmod, 17, 5, id="by-hand") == (3, 2)


def test_an_unknown_option_of_a_decorated_function_is_named_with_the_known_ones() -> None:
    with pytest.raises(TypeError) as info:
        task(timout=5)(divmod)
    assert "timout" in str(info.value)
    assert "timeout" in str(info.value)


plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@given(plain)
def test_call_files_are_written_and_read_exactly_as_the_json_module_does(value: Any) -> None:
    assert dump_json(value) == json.dumps(value, separators=(",", ":")).encode()
    assert load_json(dump_json(value)) == value
    assert load_json(json.dumps(value, indent=2)) == value  # whitespace anywhere


@pytest.mark.parametrize("text", ["", "[1,", '{"a" 1}', "[1] 2", "nul"])
def test_a_malformed_json_file_raises_the_json_modules_error(text: str) -> None:
    with pytest.raises(json.JSONDecodeError):
        load_json(text)


def test_the_json_codec_reads_the_constants_json_writes_for_infinities() -> None:
    values = load_json(b"[NaN, Infinity, -Infinity]")
    assert [v != v for v in values] == [True, False, False]
    assert values[1:] == [float("inf"), float("-inf")]
