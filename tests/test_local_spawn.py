"""Starting a process without Popen (``local_spawn.spawn``) behaves as Popen does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from matensemble.backends.local_spawn import DIRECT, spawn

WAYS = [
    pytest.param(
        True,
        id="fork_exec",
        marks=pytest.mark.skipif(
            not DIRECT, reason="fork_exec's argument order is not checked for this Python"
        ),
    ),
    pytest.param(False, id="popen"),
]
ENV = [b"PATH=" + os.environ["PATH"].encode(), b"GREETING=hello there"]


def run(argv: list[str], tmp_path: Path, *, direct: bool, cwd: Path | None = None) -> str:
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        pid = spawn(argv, None, ENV, str(cwd or tmp_path), (0, out, out), direct=direct)
    finally:
        os.close(out)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return (tmp_path / "out").read_text()


@pytest.mark.parametrize("direct", WAYS)
def test_the_child_gets_the_environment_cwd_and_a_session_of_its_own(
    tmp_path: Path, direct: bool
) -> None:
    text = run(
        ["sh", "-c", 'echo "$GREETING"; pwd; ps -o sid= -p $$; echo $$'], tmp_path, direct=direct
    )
    greeting, cwd, sid, pid = text.splitlines()
    assert greeting == "hello there"
    assert cwd == str(tmp_path)
    assert int(sid) == int(pid)  # the leader of a new session (and so of a process group)


@pytest.mark.parametrize("direct", WAYS)
def test_a_missing_program_is_file_not_found_naming_it(tmp_path: Path, direct: bool) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        spawn(["no-such-program-here"], None, ENV, str(tmp_path), (0, 1, 2), direct=direct)
    assert caught.value.filename == "no-such-program-here"


@pytest.mark.parametrize("direct", WAYS)
def test_a_missing_working_directory_is_file_not_found_naming_it(
    tmp_path: Path, direct: bool
) -> None:
    missing = str(tmp_path / "gone")
    with pytest.raises(FileNotFoundError) as caught:
        spawn(["true"], "/bin/true", ENV, missing, (0, 1, 2), direct=direct)
    assert caught.value.filename == missing


@pytest.mark.parametrize("direct", WAYS)
def test_a_file_without_execute_permission_is_permission_denied(
    tmp_path: Path, direct: bool
) -> None:
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    with pytest.raises(PermissionError):
        spawn([str(script)], None, ENV, str(tmp_path), (0, 1, 2), direct=direct)
