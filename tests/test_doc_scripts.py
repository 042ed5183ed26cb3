"""Every whole script in the guides runs, and prints what the page says it prints.

A whole script is a ``python`` block that starts with its docstring (the guides' convention for
"save this and run it"); when a ``text`` block follows it, that is its output, or a transcript
of runs with options (``$ python frontier.py --no-backfill`` lines, each followed by what it
printed). Timings of the
machine that ran it (``0.27s`` CPU columns, ``wall 19.3 s (CPU 19.3 s)``) are compared as
"some time"; every other character must match, so a change of behaviour shows up as a stale
page here instead of in front of a reader.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parent.parent / "docs"
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```$", re.S | re.M)
PAGES = ["strategies.md", "simulated-backend.md", "local-backend.md"]
TIMING = re.compile(r"\b\d+(?:\.\d+)?s\b|\b(wall|CPU) \d+(?:\.\d+)? s\b")


def scripts(page: str) -> list[tuple[str, str | None]]:
    """(script, the output shown after it or ``None``) of each whole script of ``page``."""
    found = []
    blocks = FENCE.findall((DOCS / page).read_text())
    for i, (lang, body) in enumerate(blocks):
        if lang == "python" and body.startswith('"""'):
            after = blocks[i + 1] if i + 1 < len(blocks) else ("", "")
            found.append((body, after[1] if after[0] == "text" else None))
    return found


CASES = [
    pytest.param(body, shown, id=f"{page}:{body.splitlines()[0][3:50]}")
    for page in PAGES
    for body, shown in scripts(page)
]


def masked(text: str) -> list[str]:
    return [
        TIMING.sub(lambda m: f"{m.group(1) or ''} <time>", line).rstrip()
        for line in text.strip().splitlines()
    ]


def test_the_guides_have_whole_scripts() -> None:
    assert len(CASES) >= 6


@pytest.mark.slow
@pytest.mark.parametrize(("script", "shown"), CASES)
def test_a_guide_script_runs_and_prints_what_the_page_shows(
    script: str, shown: str | None, tmp_path: Path
) -> None:
    runs: list[tuple[list[str], str | None]] = [([], shown)]
    if shown is not None and shown.startswith("$ python "):
        name = shown.split()[2]
        runs = [
            (command.split(), output)
            for command, output in re.findall(r"^\$ python (.*)\n((?:(?!\$ ).*\n)*)", shown, re.M)
        ]
        assert all(args[0] == name for args, _ in runs), shown
        runs = [(args[1:], output) for args, output in runs]
    (tmp_path / "script.py").write_text(script)
    for args, output in runs:
        proc = subprocess.run(
            [sys.executable, "script.py", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        if output is not None:
            assert masked(proc.stdout) == masked(output), args
