"""A killed driver's script, run again with ``resume``, gets recorded values without re-runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from conftest import alive

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from matensemble import Ensemble
    from matensemble.backends.local import LocalBackend
    from call_targets import add, count_and_return, wait_unless

    run_dir, counter, flag = Path(sys.argv[1]), sys.argv[2], sys.argv[3]

    async def main():
        resume = (run_dir / "journal.jsonl").exists()
        ens = Ensemble(backend=LocalBackend(cores=2, kill_grace=1.0),
                       **({"resume": run_dir} if resume else {"run_dir": run_dir}))
        async with ens:
            a = ens.call(count_and_return, counter, "a")
            b = ens.call(count_and_return, counter, "b")
            print("first", await a, await b, flush=True)
            slow = ens.call(wait_unless, flag, counter)
            last = ens.call(add, [a, b], [slow])
            print("last", await last, flush=True)

    asyncio.run(main())
    """
)


def test_a_killed_driver_resumes_with_recorded_values_and_no_rerun(tmp_path: Path) -> None:
    script = tmp_path / "steer.py"
    script.write_text(SCRIPT)
    run_dir, counter, flag = tmp_path / "run", tmp_path / "count.txt", tmp_path / "go"
    argv = [sys.executable, str(script), str(run_dir), str(counter), str(flag)]
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    driver = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env, cwd=tmp_path)
    assert driver.stdout is not None
    assert driver.stdout.readline().split() == ["first", "a", "b"]
    # The slow call has started (its line is in the counter) when the driver is killed.
    deadline = time.monotonic() + 60
    while "slow" not in counter.read_text():
        assert driver.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)
    driver.wait(timeout=30)
    assert not alive(driver.pid, grace=0)

    flag.touch()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[:2] == ["first a b", "last ['a', 'b', 'slow done']"]
    # a and b ran once (their recorded values were reused); the killed slow call ran again.
    assert sorted(counter.read_text().split()) == ["a", "b", "slow", "slow"]


def test_a_resumed_script_with_changed_arguments_is_refused_clearly(tmp_path: Path) -> None:
    script = tmp_path / "steer.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, sys
            from pathlib import Path
            from matensemble import Ensemble, TaskRejected
            from matensemble.backends.local import LocalBackend
            from call_targets import add

            run_dir, value = Path(sys.argv[1]), int(sys.argv[2])

            async def main():
                resume = (run_dir / "journal.jsonl").exists()
                kw = {"resume": run_dir} if resume else {"run_dir": run_dir}
                async with Ensemble(backend=LocalBackend(cores=2), **kw) as ens:
                    try:
                        print(await ens.call(add, value, 1))
                    except TaskRejected as exc:
                        print(exc)

            asyncio.run(main())
            """
        )
    )
    env = {**os.environ, "PYTHONPATH": str(TESTS)}
    run = [sys.executable, str(script), str(tmp_path / "run")]
    first = subprocess.run([*run, "1"], capture_output=True, text=True, env=env, timeout=120)
    assert first.stdout.strip() == "2", first.stderr
    same = subprocess.run([*run, "1"], capture_output=True, text=True, env=env, timeout=120)
    assert same.stdout.strip() == "2", same.stderr
    changed = subprocess.run([*run, "5"], capture_output=True, text=True, env=env, timeout=120)
    assert "task 'add-1' rejected: this id is recorded for another call" in changed.stdout
    assert "give a changed call its own id=" in changed.stdout
