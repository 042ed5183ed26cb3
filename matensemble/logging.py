"""structlog loggers, one per ensemble: JSON lines in the run directory, optional console.

No global configuration is touched, so two ensembles in one process never mix their logs and
the host application's own structlog/logging setup is left alone.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import IO, Any

import structlog

__all__ = ["EnsembleLogger", "make_logger"]

LOG_NAME = "ensemble.log"
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40}


class _Tee:
    """A structlog logger that writes each rendered line to several streams."""

    def __init__(self, streams: list[IO[str]]) -> None:
        self._streams = streams

    def msg(self, message: str) -> None:
        for stream in self._streams:
            try:
                stream.write(message + "\n")
                stream.flush()
            except OSError:
                # A full disk: the journal, which is the record, stops the run; the log must
                # not raise in the middle of a state change, so it drops the line.
                continue

    debug = info = warning = error = critical = msg


class EnsembleLogger:
    """Owns the run's log file; ``log`` is the bound structlog logger to use."""

    def __init__(self, log: Any, file: IO[str]) -> None:
        self.log = log
        self._file = file

    def close(self) -> None:
        with contextlib.suppress(OSError):  # a full disk: unwritten lines are lost (see _Tee)
            self._file.close()


def make_logger(
    run_dir: Path, run_id: str, *, level: str = "info", console: bool = False
) -> EnsembleLogger:
    """A logger writing JSON lines to ``<run-dir>/ensemble.log`` (and to stderr if ``console``)."""
    file = (run_dir / LOG_NAME).open("a", encoding="utf-8")
    json_log = structlog.wrap_logger(
        _Tee([file]),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
    )
    log: Any = json_log
    if console:
        log = _Both(json_log, _console_logger(level))
    return EnsembleLogger(log.bind(run_id=run_id), file)


def _console_logger(level: str) -> Any:
    return structlog.wrap_logger(
        _Tee([sys.stderr]),
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="%H:%M:%S"),
            structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty()),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(max(_LEVELS[level], 30)),
    )


class _Both:
    """Sends each call to the JSON log and the (warnings-only) console log."""

    def __init__(self, a: Any, b: Any) -> None:
        self._a, self._b = a, b

    def bind(self, **kw: Any) -> _Both:
        return _Both(self._a.bind(**kw), self._b.bind(**kw))

    def __getattr__(self, level: str) -> Any:
        fa, fb = getattr(self._a, level), getattr(self._b, level)

        def call(event: str, **kw: Any) -> None:
            fa(event, **kw)
            fb(event, **kw)

        return call
