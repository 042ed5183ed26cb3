"""``WarmLocalBackend``: the local backend with a pool of warm Python workers.

A Python call (a one-rank, non-MPI task running ``python -m matensemble.worker``) goes to an
idle warm worker instead of a new interpreter: the request (argv, environment, working
directory, the cores the engine allocated) travels over a pipe, the worker pins itself to those
cores, runs the call as a fresh worker would (same files, same result protocol, so durability
and resume are unchanged) and answers with the exit code. Everything else (commands, MPI and
multi-rank calls, calls made with ``warm=False``) goes to the wrapped ``LocalBackend``.

Failure handling: a worker that dies mid-call fails that call (``warm worker died``) and is not
reused; a timeout or a cancel kills the worker (its whole process group) and a new one is
started for the next call, never stopping the run; a worker whose resident memory grew past
``max_rss_mb`` or that has served ``max_calls`` calls is retired after its call. Waiting is
event-driven: each worker's reply pipe is watched with ``loop.add_reader``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from anyio.abc import TaskGroup

from matensemble.backends.base import (
    Backend,
    Launch,
    LaunchKey,
    Outcome,
    Reporter,
    Sink,
    task_environment,
)
from matensemble.backends.local import LocalBackend
from matensemble.backends.local_failures import describe_exit
from matensemble.backends.local_inventory import kill_group
from matensemble.backends.task_files import prepare_task_outputs
from matensemble.errors import BackendError
from matensemble.functions.worker import WORKER_ARGV
from matensemble.model import TaskState
from matensemble.resources import NodeSpec

__all__ = ["WarmLocalBackend"]

# The worker's command (calls.py, file_calls.py), and the one runs made before it changed.
_WORKER_ARGVS = (WORKER_ARGV, ("-m", "matensemble.worker"))


class _Worker:
    def __init__(self, proc: subprocess.Popen[bytes], stdin: int, replies: int) -> None:
        self.proc = proc
        self.stdin = stdin
        self.replies = replies
        self.buffer = b""
        self.calls = 0
        self.busy: _Call | None = None


class _Call:
    def __init__(self, launch: Launch, worker: _Worker) -> None:
        self.launch = launch
        self.worker = worker
        self.start_time = time.time()
        self.timer: asyncio.TimerHandle | None = None
        self.verdict: tuple[TaskState, str] | None = None


class WarmLocalBackend(Backend):
    """The local backend, with Python calls served by persistent, pinned worker processes.

    Args:
        *args, **kwargs: for the wrapped ``LocalBackend`` (``cores``, ``gpus``, ...).
        warm: whether calls are warm unless made with ``warm=False`` (``True``), or cold
            unless made with ``warm=True`` (``False``).
        max_calls: retire a worker after this many calls.
        max_rss_mb: retire a worker whose resident memory exceeds this after a call.
    """

    name = "local"

    def __init__(
        self,
        *args: Any,
        warm: bool = True,
        max_calls: int = 10_000,
        max_rss_mb: float | None = 2048,
        **kwargs: Any,
    ) -> None:
        self.inner = LocalBackend(*args, **kwargs)
        self.warm_by_default = warm
        self.max_calls = max_calls
        self.max_rss_mb = max_rss_mb
        self._loop: asyncio.AbstractEventLoop | None = None
        self._reporter: Reporter | None = None
        self._base_env: dict[str, str] = {}
        self._idle: list[_Worker] = []
        self._workers: set[_Worker] = set()
        self._calls: dict[LaunchKey, _Call] = {}
        self._closing = False
        self.started_workers = 0  # how many interpreters were started (for tests, benchmarks)

    # -- the Backend protocol, delegated where the call is not warm -------------------------------

    @property
    def job_ids(self) -> Callable[[LaunchKey, str], None] | None:
        return self.inner.job_ids

    @job_ids.setter
    def job_ids(self, value: Callable[[LaunchKey, str], None] | None) -> None:
        self.inner.job_ids = value

    def now(self) -> float:
        return self.inner.now()

    def deadline(self) -> float | None:
        return self.inner.deadline()

    def idle(self) -> None:
        self.inner.idle()

    async def adopt(self, launches: Sequence[tuple[Launch, str]]) -> set[LaunchKey]:
        return await self.inner.adopt(launches)

    async def recover(self, run_id: str, keys: Sequence[LaunchKey]) -> None:
        await self.inner.recover(run_id, keys)

    async def open(self, sink: Sink, task_group: TaskGroup) -> Sequence[NodeSpec]:
        nodes = await self.inner.open(sink, task_group)
        self._loop = asyncio.get_running_loop()
        self._reporter = Reporter(sink, self._loop, lambda: len(self._calls))
        self._base_env = dict(os.environ)
        return nodes

    def launch(self, launch: Launch) -> None:
        if not self._is_warm(launch):
            self.inner.launch(launch)
            return
        if self._loop is None or self._reporter is None:
            raise BackendError("WarmLocalBackend.launch() before open()")
        if self._closing:
            self._reporter.soon(
                Outcome(key=launch.key, state=TaskState.CANCELLED, reason="backend closed")
            )
            return
        try:
            worker = self._idle.pop() if self._idle else self._start_worker(launch.run_id)
            self._send(worker, launch)
        except OSError as exc:
            self._reporter.soon(
                Outcome(
                    key=launch.key,
                    state=TaskState.FAILED,
                    reason=f"cannot use a warm worker: {exc}",
                )
            )
            return
        call = worker.busy = self._calls[launch.key] = _Call(launch, worker)
        worker.calls += 1
        if launch.task.timeout is not None:
            why = f"timed out after {launch.task.timeout:g}s"
            call.timer = self._loop.call_later(
                launch.task.timeout, self._stop, call, TaskState.TIMED_OUT, why
            )

    def cancel(self, key: LaunchKey) -> None:
        call = self._calls.get(key)
        if call is None:
            self.inner.cancel(key)
        else:
            self._stop(call, TaskState.CANCELLED, "cancelled")

    async def close(self) -> None:
        self._closing = True
        for call in list(self._calls.values()):
            self._stop(call, TaskState.CANCELLED, "cancelled")
        try:
            await self.inner.close()
            if self._reporter is not None:
                await self._reporter.wait_drained()
        finally:
            for worker in list(self._workers):
                self._retire(worker)

    def kill(self) -> None:
        self.inner.kill()
        for worker in list(self._workers):
            kill_group(worker.proc.pid)

    # -- the pool ---------------------------------------------------------------------------------

    def _is_warm(self, launch: Launch) -> bool:
        command, res = launch.task.command, launch.task.resources
        if tuple(command[1:3]) not in _WORKER_ARGVS or res.ranks != 1 or res.mpi or res.nodes:
            return False
        if "--warm" in command:
            return True
        return self.warm_by_default and "--cold" not in command

    def _start_worker(self, run_id: str) -> _Worker:
        assert self._loop is not None
        read_replies, write_replies = os.pipe()
        env = {**self._base_env, "MATENSEMBLE_RUN_ID": run_id}  # found by recover()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "matensemble.functions.warm_worker", str(write_replies)],
                stdin=subprocess.PIPE,
                pass_fds=(write_replies,),
                start_new_session=True,
                env=env,
            )
        finally:
            os.close(write_replies)
        assert proc.stdin is not None
        worker = _Worker(proc, proc.stdin.fileno(), read_replies)
        self._workers.add(worker)
        self.started_workers += 1
        self._loop.add_reader(read_replies, self._on_reply, worker)
        return worker

    def _send(self, worker: _Worker, launch: Launch) -> None:
        env = task_environment(launch, self._base_env)
        cores = [c for slot in launch.placement for c in slot.cores]
        gpus = [g for slot in launch.placement for g in slot.gpus]
        if gpus or "CUDA_VISIBLE_DEVICES" in env:  # a call given no GPUs sees none
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        prepare_task_outputs(launch.task_dir)  # no links followed: the worker opens ours
        request = {
            "argv": list(launch.task.command[3:]),
            "env": env,
            "cwd": os.path.abspath(launch.task.cwd or launch.task_dir),
            "cores": cores,
            "stdout": os.path.abspath(launch.stdout),
            "stderr": os.path.abspath(launch.stderr),
        }
        assert worker.proc.stdin is not None
        worker.proc.stdin.write(json.dumps(request).encode() + b"\n")
        worker.proc.stdin.flush()

    def _on_reply(self, worker: _Worker) -> None:
        try:
            data = os.read(worker.replies, 4096)
        except OSError:
            data = b""
        if not data:  # the worker is gone (killed, crashed, or it ended after a SystemExit)
            self._retire(worker)
            code = worker.proc.returncode
            call = worker.busy
            if call is not None:
                reason = (
                    f"warm worker died: {describe_exit(code, '')[2]}"
                    if call.verdict is None
                    else call.verdict[1]
                )
                self._end(call, TaskState.FAILED, code, reason)
            return
        worker.buffer += data
        while b"\n" in worker.buffer:
            line, worker.buffer = worker.buffer.split(b"\n", 1)
            call = worker.busy
            if call is None:
                continue
            worker.busy = None
            code = int(line)
            state = TaskState.SUCCEEDED if code == 0 else TaskState.FAILED
            self._end(call, state, code, None if code == 0 else f"exit code {code}")
            if self._closing or worker.calls >= self.max_calls or self._too_big(worker):
                self._retire(worker)
            elif call.verdict is None:
                self._idle.append(worker)

    def _end(self, call: _Call, state: TaskState, code: int | None, reason: str | None) -> None:
        if call.timer is not None:
            call.timer.cancel()
        if call.verdict is not None:
            state, reason = call.verdict
        del self._calls[call.launch.key]
        assert self._reporter is not None
        self._reporter.now(
            Outcome(
                key=call.launch.key,
                state=state,
                returncode=code if code is None or code >= 0 else None,
                signal=-code if code is not None and code < 0 else None,
                reason=reason,
                start_time=call.start_time,
                end_time=time.time(),
            )
        )

    def _stop(self, call: _Call, state: TaskState, reason: str) -> None:
        """Kill the call's worker (the call's verdict stands); the next call gets a new one."""
        if call.verdict is None:
            call.verdict = (state, reason)
        kill_group(call.worker.proc.pid)

    def _too_big(self, worker: _Worker) -> bool:
        if self.max_rss_mb is None:
            return False
        try:
            with open(f"/proc/{worker.proc.pid}/statm") as statm:
                pages = int(statm.read().split()[1])
        except (OSError, ValueError, IndexError):
            return False
        return pages * os.sysconf("SC_PAGE_SIZE") > self.max_rss_mb * 2**20

    def _retire(self, worker: _Worker) -> None:
        """Stop watching a worker, end it (close its input, kill its group) and reap it."""
        if worker not in self._workers:
            return
        self._workers.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        assert self._loop is not None
        self._loop.remove_reader(worker.replies)
        os.close(worker.replies)
        with contextlib.suppress(OSError):
            worker.proc.stdin.close()  # type: ignore[union-attr]
        kill_group(worker.proc.pid)
        worker.proc.wait()
