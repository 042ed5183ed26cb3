"""A warm worker: one long-lived interpreter that runs Python calls one after another.

``python -m matensemble.functions.warm_worker <reply-fd>`` reads one JSON request per line on
stdin (``argv`` for ``matensemble.worker``, the call's environment, working directory and
cores), pins itself to those cores, points its stdout and stderr at the task's files, runs the
call exactly as a fresh ``python -m matensemble.worker`` would (same files, same result
protocol), and answers with the exit code on ``<reply-fd>``. Modules the calls import stay
imported, which is the point. End of input (the driver closed the pipe or died) ends it.
"""

from __future__ import annotations

import json
import os
import sys

from matensemble.functions.worker import main as run_call


def _serve(reply_fd: int) -> int:
    for line in sys.stdin.buffer:
        request = json.loads(line)
        cores = request.get("cores")
        if cores and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC
        out = os.open(request["stdout"], flags, 0o644)
        err = os.open(request["stderr"], flags, 0o644)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(out, 1)
        os.dup2(err, 2)
        try:
            code = run_call(request["argv"])
        except BaseException as exc:  # SystemExit or worse from the call: this worker is spent
            code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) else 1
            os.write(reply_fd, f"{code or 1}\n".encode())
            return 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in (*saved, out, err):
                os.close(fd)
        os.write(reply_fd, f"{code}\n".encode())
    return 0


if __name__ == "__main__":
    sys.exit(_serve(int(sys.argv[1])))
