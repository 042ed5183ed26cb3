"""What the local backend's driver and its spawner helper processes say to each other.

A message is one of the small classes below. On a pipe it is a tuple, its kind's number then
its fields, written with ``marshal`` behind a 4-byte length, so that a reader can take whole
frames out of whatever a pipe gives it (``encode``, ``Frames``, ``decode``).

``marshal``, not msgspec as elsewhere in the package: a helper then imports nothing but the
standard library's built-in modules and the few modules of this package it runs. Importing
msgspec (and ``typing_extensions`` with it) was two thirds of a helper's start-up, 0.09 s of
CPU per helper where no bytecode cache is written, which a short run of small tasks pays in
full. Both ends are the same interpreter (a helper runs ``sys.executable``), so they read one
``marshal`` format; the pipes are the driver's and its helpers' only (close-on-exec, and closed
in every task), so nothing else writes what ``marshal`` reads.
"""

from __future__ import annotations

import marshal
import struct

TYPE_CHECKING = False  # not from typing: a helper starts faster without it

if TYPE_CHECKING:
    from typing import Any

    from matensemble.backends.local_failures import Process

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
    "decode",
    "encode",
]

_LENGTH = struct.Struct("<I")


class _Message:
    __slots__ = ()

    def wire(self) -> tuple[Any, ...]:
        """What goes on the pipe: the kind's number (its place in ``_KINDS``), then the
        arguments of ``__init__`` in their order."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Message) and other.wire() == self.wire()

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self.wire()[1:]!r}"


class Book(_Message):
    """Start these processes (a launch's copies: ``local_failures.Process``), in ``cwd``, with
    stdout and stderr in ``task_dir``; with ``after`` >= 0, once launch ``after`` is over: its
    one process has exited, or it started none (dropped, or it could not start), or at once if
    it is over already."""

    __slots__ = ("after", "cwd", "plan", "seq", "task_dir")

    def __init__(
        self, seq: int, plan: list[Process], cwd: str, task_dir: str, after: int = -1
    ) -> None:
        self.seq, self.plan, self.cwd, self.task_dir, self.after = seq, plan, cwd, task_dir, after

    def wire(self) -> tuple[Any, ...]:
        return (0, self.seq, self.plan, self.cwd, self.task_dir, self.after)


class Signal(_Message):
    """Signal the process group of ``pid``, if that process has not been reaped."""

    __slots__ = ("pid", "signum")

    def __init__(self, pid: int, signum: int) -> None:
        self.pid, self.signum = pid, signum

    def wire(self) -> tuple[Any, ...]:
        return (1, self.pid, self.signum)


class Drop(_Message):
    """Launch ``seq`` was stopped: if it still waits for its ``after``, it never starts."""

    __slots__ = ("seq",)

    def __init__(self, seq: int) -> None:
        self.seq = seq

    def wire(self) -> tuple[Any, ...]:
        return (2, self.seq)


class KillAll(_Message):
    """SIGKILL every process group now, and every process started from now on."""

    __slots__ = ()

    def wire(self) -> tuple[Any, ...]:
        return (3,)


class Started(_Message):
    """What became of a booking: the (rank, pid) of each copy started, when the first one
    started, and why the next copy did not (``None``: all started). No process and no failure:
    it was dropped."""

    __slots__ = ("failure", "processes", "seq", "start_time")

    def __init__(
        self,
        seq: int,
        processes: list[tuple[int, int]],
        start_time: float | None,
        failure: str | None,
    ) -> None:
        self.seq, self.processes, self.start_time, self.failure = (
            seq,
            processes,
            start_time,
            failure,
        )

    def wire(self) -> tuple[Any, ...]:
        return (4, self.seq, self.processes, self.start_time, self.failure)


class Exited(_Message):
    """``pid`` was reaped at ``when`` (what it left in its group was killed first): its exit code,
    negative for a signal, ``None`` if its status was lost."""

    __slots__ = ("code", "pid", "when")

    def __init__(self, pid: int, code: int | None, when: float) -> None:
        self.pid, self.code, self.when = pid, code, when

    def wire(self) -> tuple[Any, ...]:
        return (5, self.pid, self.code, self.when)


ToHelper = Book | Signal | Drop | KillAll
FromHelper = Started | Exited
_KINDS: tuple[type[ToHelper | FromHelper], ...] = (Book, Signal, Drop, KillAll, Started, Exited)


def encode(message: ToHelper | FromHelper) -> bytes:
    """``message`` as a frame: its length, then its kind and fields.

    Raises:
        ValueError: a field holds what is not a number, string, bytes, ``None`` or a list or
            tuple of them.
    """
    wire = message.wire()
    try:
        payload = marshal.dumps(wire)
    except ValueError:  # marshal takes no subclass: an IntEnum signal, a StrEnum in an argv
        payload = marshal.dumps(_plain(wire))
    return _LENGTH.pack(len(payload)) + payload


def _plain(value: Any) -> Any:
    """``value`` with each subclass of a built-in type in it made that type."""
    if isinstance(value, list | tuple):
        items = [_plain(item) for item in value]
        return items if isinstance(value, list) else tuple(items)
    # Each base type's own method makes a copy of the value (str(E.A) would be "E.A").
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int.__int__(value)
    if isinstance(value, float):
        return float.__float__(value)
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, bytes):
        return bytes(value)
    return value


def decode(payload: bytes) -> ToHelper | FromHelper:
    """The message in a frame's ``payload`` (as ``Frames.feed`` returns it)."""
    wire = marshal.loads(payload)
    message: ToHelper | FromHelper = _KINDS[wire[0]](*wire[1:])
    return message


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
