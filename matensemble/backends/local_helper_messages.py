"""What the local backend's driver and its spawner helper processes say to each other.

Each message is a msgspec ``Struct`` of a tagged union, encoded with msgpack behind a 4-byte
length, so that a reader can take whole frames out of whatever a pipe gives it.
"""

from __future__ import annotations

import struct

import msgspec

__all__ = [
    "Book",
    "Drop",
    "Exited",
    "Frames",
    "FromHelper",
    "KillAll",
    "Signal",
    "Started",
    "ToHelper",
    "frame",
]

_LENGTH = struct.Struct("<I")


class Book(msgspec.Struct, tag=True, array_like=True):
    """Start these processes (a launch's copies: ``local_failures.Process``), in ``cwd``, with
    stdout and stderr in ``task_dir``; with ``after`` >= 0, once the one process of launch
    ``after`` has exited."""

    seq: int
    plan: list[tuple[list[str], str | None, list[bytes], list[int]]]
    cwd: str
    task_dir: str
    after: int = -1


class Signal(msgspec.Struct, tag=True, array_like=True):
    """Signal the process group of ``pid``, if that process has not been reaped."""

    pid: int
    signum: int


class Drop(msgspec.Struct, tag=True, array_like=True):
    """Launch ``seq`` was stopped: if it still waits for its ``after``, it never starts."""

    seq: int


class KillAll(msgspec.Struct, tag=True, array_like=True):
    """SIGKILL every process group now, and every process started from now on."""


class Started(msgspec.Struct, tag=True, array_like=True):
    """What became of a booking: the (rank, pid) of each copy started, when the first one
    started, and why the next copy did not (``None``: all started). No process and no failure:
    it was dropped."""

    seq: int
    processes: list[tuple[int, int]]
    start_time: float | None
    failure: str | None


class Exited(msgspec.Struct, tag=True, array_like=True):
    """``pid`` was reaped at ``when`` (what it left in its group was killed first): its exit code,
    negative for a signal, ``None`` if its status was lost."""

    pid: int
    code: int | None
    when: float


ToHelper = Book | Signal | Drop | KillAll
FromHelper = Started | Exited


def frame(payload: bytes) -> bytes:
    """``payload`` with its length in front."""
    return _LENGTH.pack(len(payload)) + payload


class Frames:
    """The complete frames in what was read so far."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, chunk: bytes) -> list[bytes]:
        buffer = self._buffer
        buffer += chunk
        out = []
        start = 0
        while len(buffer) - start >= 4:
            (size,) = _LENGTH.unpack_from(buffer, start)
            if len(buffer) - start - 4 < size:
                break
            out.append(bytes(buffer[start + 4 : start + 4 + size]))
            start += 4 + size
        del buffer[:start]
        return out
