"""Starting one process for the local backend: ``vfork``/``exec`` without ``subprocess.Popen``.

``Popen`` costs the driver about twice what the ``vfork``/``exec`` itself does: it encodes the
whole environment again on every call (two ``os.fsencode`` calls per variable) and builds a
``Popen`` object the backend does not use (it reaps by ``pidfd`` and ``waitpid``). ``spawn``
hands CPython's own ``_posixsubprocess.fork_exec`` (what ``Popen`` calls, with the same
arguments: a new session, descriptors above 2 closed, ``vfork`` where CPython allows it) an
environment the planner encoded once. Where the argument order of that private function has
not been checked (a CPython other than 3.11 to 3.13), ``spawn`` goes through ``Popen`` instead;
both raise the same errors.

The call releases the GIL while the child runs up to its ``exec``, so it may be made from
a worker thread; the child inherits that thread's CPU affinity.
"""

from __future__ import annotations

import builtins
import os
import sys

__all__ = ["DIRECT", "spawn"]

from _posixsubprocess import fork_exec as _fork_exec

# The argument order of fork_exec is checked against subprocess.py of these versions.
DIRECT = (3, 11) <= sys.version_info[:2] <= (3, 13)


def spawn(
    argv: list[str],
    executable: str | None,
    env: list[bytes],
    cwd: str,
    fds: tuple[int, int, int],
    *,
    direct: bool = DIRECT,
) -> int:
    """Start ``argv`` in a new session with stdin, stdout, stderr on ``fds``; its pid.

    ``executable`` is the file to run (``None``: ``argv[0]`` looked up on the ``PATH`` in
    ``env``, from ``cwd``); ``env`` holds ``b"NAME=value"`` entries.

    Raises:
        OSError: as ``Popen`` raises it: ``filename`` is ``cwd`` when entering it failed,
            else the program (e.g. ``FileNotFoundError`` for a missing executable); nothing
            is left running.
        ValueError: an argument holds a NUL byte.
    """
    if not direct:
        return _spawn_with_popen(argv, executable, env, cwd, fds)
    program = executable or argv[0]
    if os.sep in program:
        candidates: tuple[bytes, ...] = (os.fsencode(program),)
    else:
        path = next((e[5:] for e in env if e.startswith(b"PATH=")), None)
        dirs = os.get_exec_path({"PATH": os.fsdecode(path)} if path is not None else {})
        candidates = tuple(os.path.join(os.fsencode(d), os.fsencode(program)) for d in dirs)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    try:
        try:
            pid = _fork_exec(
                argv, candidates, True, (write_end,), cwd, env,
                fds[0], -1, -1, fds[1], -1, fds[2],
                read_end, write_end,
                True, True, -1,  # restore_signals, call_setsid, pgid_to_set
                None, None, None, -1,  # gid, extra_groups, uid, umask
                None, True,  # type: ignore[arg-type]  # preexec_fn, allow_vfork
            )  # fmt: skip
        finally:
            os.close(write_end)
        # Under vfork the child has exec'd or failed by now: EOF, or why it failed.
        report = os.read(read_end, 50_000)
    finally:
        os.close(read_end)
    if report:
        os.waitpid(pid, 0)  # the child exited (code 255) after writing why
        raise _child_error(report, cwd, program)
    return pid


def _child_error(report: bytes, cwd: str, program: str) -> Exception:
    """The exception the child described in ``report`` (``Type:hex errno:detail``), worded as
    ``Popen`` words it."""
    import subprocess  # here: a spawner helper starts faster without it

    try:
        name, hex_errno, detail_bytes = report.split(b":", 2)
        kind = getattr(builtins, name.decode("ascii"), subprocess.SubprocessError)
        detail = detail_bytes.decode(errors="replace")
    except ValueError:
        return subprocess.SubprocessError(f"bad exception data from the child: {report!r}")
    if not (isinstance(kind, type) and issubclass(kind, Exception)):
        kind = subprocess.SubprocessError
    if issubclass(kind, OSError) and hex_errno:
        number = int(hex_errno, 16)
        filename: str | None = program
        if detail == "noexec:chdir" or (detail == "noexec" and sys.version_info < (3, 13)):
            filename = cwd  # (3.11 and 3.12 say only "noexec" when chdir failed)
        elif detail == "noexec":
            filename = None
        return OSError(number, os.strerror(number), filename)
    return kind(detail)


def _spawn_with_popen(
    argv: list[str], executable: str | None, env: list[bytes], cwd: str, fds: tuple[int, int, int]
) -> int:
    import subprocess

    process = subprocess.Popen(
        argv,
        executable=executable,
        stdin=fds[0],
        stdout=fds[1],
        stderr=fds[2],
        close_fds=True,
        cwd=cwd,
        env=dict(entry.split(b"=", 1) for entry in env),
        start_new_session=True,
    )
    # The backend reaps by pid; a returncode keeps Popen's finaliser from reaping it first.
    process.returncode = 0
    return process.pid
