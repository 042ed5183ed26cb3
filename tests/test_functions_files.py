"""Task files are read only from the run directory's own ``tasks/<id>/``: never through a link,
never from something that is not a regular file in a real directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from matensemble.errors import ResultUnavailable
from matensemble.functions.files import read_task_file, write_atomically


def test_a_task_file_is_read_back_and_a_missing_one_is_none(tmp_path: Path) -> None:
    (tmp_path / "tasks" / "t-1").mkdir(parents=True)
    write_atomically(tmp_path / "tasks" / "t-1" / "result.json", b"[1, 2]")
    assert read_task_file(tmp_path, "t-1", "result.json") == b"[1, 2]"
    assert read_task_file(tmp_path, "t-1", "error.json") is None
    assert read_task_file(tmp_path, "t-2", "result.json") is None
    assert read_task_file(tmp_path / "no-run", "t-1", "result.json") is None


def test_a_task_directory_that_is_a_link_or_a_file_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "result.json").write_text("1")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "linked").symlink_to(elsewhere)
    (tmp_path / "tasks" / "plain").write_text("not a directory")
    with pytest.raises(ResultUnavailable, match=r"'linked'.* is a link or not a directory"):
        read_task_file(tmp_path, "linked", "result.json")
    with pytest.raises(ResultUnavailable, match=r"'plain'.* is a link or not a directory"):
        read_task_file(tmp_path, "plain", "result.json")


def test_a_result_that_is_a_link_or_a_folder_is_refused(tmp_path: Path) -> None:
    task_dir = tmp_path / "tasks" / "t"
    task_dir.mkdir(parents=True)
    (tmp_path / "forged.json").write_text('"forged"')
    (task_dir / "result.json").symlink_to(tmp_path / "forged.json")
    (task_dir / "result.pkl").mkdir()
    with pytest.raises(ResultUnavailable, match=r"refusing to read .*result\.json"):
        read_task_file(tmp_path, "t", "result.json")
    with pytest.raises(ResultUnavailable, match=r"refusing to read .*result\.pkl"):
        read_task_file(tmp_path, "t", "result.pkl")
    for bad in ("", ".", "..", "a/b", "a\0b"):
        with pytest.raises(ResultUnavailable, match="not a task id"):
            read_task_file(tmp_path, bad, "result.json")
