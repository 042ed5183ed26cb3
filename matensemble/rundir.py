"""A run directory has one owner: unique creation, and an OS lock held for the driver's life.

A new run with the default directory creates ``runs/<run-id>`` with a ``mkdir`` that fails if
the directory exists, and takes the next free name (``<run-id>-2``, ``-3``, ...) if it does, so
two drivers started in the same second never share a directory. Every driver (new run or
resume) then takes an exclusive POSIX record lock (``fcntl(F_SETLK)``, through
``fcntl.lockf``) on ``<run-dir>/driver.lock`` and holds it until it ends; the kernel drops it
when the process dies, however it dies. A second driver is refused with the owner named from
``<run-dir>/driver.json`` (pid, host, start time, run id), written beside the lock.

Why POSIX record locks and not ``flock(2)``: they are the locks that NFS (through NLM or NFSv4
state), Lustre (mounted with ``-o flock``) and GPFS keep coherent across nodes; ``flock`` is
emulated by them on NFS anyway. Where the file system does not give coherent locks (Lustre with
``-o localflock`` locks per node only; ``-o noflock`` or NFS ``nolock`` has none) the guarantee
shrinks as documented in ``docs/nothing-lost.md``. POSIX locks belong to the process, and
closing *any* descriptor of the file drops them, so this module never opens a lock file that
this process holds: it keeps a registry of the lock files it holds.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from matensemble.errors import RunDirectoryTaken
from matensemble.journal import JOURNAL_NAME

__all__ = [
    "LOCK_NAME",
    "OWNER_NAME",
    "DriverOwner",
    "RunDirectoryLock",
    "claim_run_dir",
    "create_unique_run_dir",
    "describe_phase",
    "driver_alive",
    "read_owner",
]

LOCK_NAME = "driver.lock"
OWNER_NAME = "driver.json"
_MAX_SUFFIX = 1000
# errno values of a file system that offers no (working) POSIX locks at all
_NO_LOCKS = frozenset({errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL})
_held: set[tuple[int, int]] = set()  # (st_dev, st_ino) of the lock files this process holds


class DriverOwner(msgspec.Struct, frozen=True, kw_only=True):
    """Who holds (or last held) a run directory: what ``driver.json`` holds."""

    pid: int
    host: str
    started: float
    run_id: str | None = None

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"driver pid {self.pid} on host {self.host} (started {when})"


def claim_run_dir(
    run_dir: Path | None, run_id: str, *, resume: bool, default_parent: Path = Path("runs")
) -> RunDirectoryLock | None:
    """Make (for a new run) and lock the run directory; its final path is ``lock.run_dir``.

    ``run_dir=None`` makes a new unique directory ``default_parent/<run_id>[-N]``. A new run in
    a given directory refuses one that holds a run. A resume of a directory that does not exist
    returns ``None``: there is nothing to own, and the journal replay refuses it.

    Raises:
        RunDirectoryTaken: a live driver owns it, or a new run was given a run's directory.
        OSError: the directory cannot be made (e.g. the path is a file).
    """
    if resume:
        assert run_dir is not None
        return RunDirectoryLock(run_dir, new_run=False) if run_dir.is_dir() else None
    created = _missing_ancestors(run_dir if run_dir is not None else default_parent)
    if run_dir is None:
        run_dir = create_unique_run_dir(default_parent, run_id)
        created.append(run_dir)
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
    return RunDirectoryLock(run_dir, new_run=True, created=created)


def create_unique_run_dir(parent: Path, stem: str) -> Path:
    """Create ``parent/stem``, or ``parent/stem-2``, ``-3``, ... whichever is free first.

    The ``mkdir`` fails if the directory exists, so two drivers never get the same directory;
    an existing directory is never reused.
    """
    parent.mkdir(parents=True, exist_ok=True)
    for n in range(1, _MAX_SUFFIX + 1):
        candidate = parent / (stem if n == 1 else f"{stem}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    candidate = parent / f"{stem}-{secrets.token_hex(4)}"
    candidate.mkdir()
    return candidate


def _missing_ancestors(path: Path) -> list[Path]:
    """``path`` and its parents that do not exist yet, outermost first."""
    missing = []
    for p in [path, *path.parents]:
        if p.exists() or p.is_symlink():
            break
        missing.append(p)
    return missing[::-1]


class RunDirectoryLock:
    """The exclusive lock on one run directory, held from ``acquire`` to ``release``.

    Args:
        run_dir: the run directory; it must exist.
        new_run: refuse a directory whose journal holds a run already (it must be resumed).
        created: the directories the caller made for this run (outermost first): removed
            again, if empty, when the run is refused before its journal is written.

    Raises:
        RunDirectoryTaken: another live driver holds it (named), or ``new_run`` and the
            directory holds a run.
    """

    def __init__(self, run_dir: Path, *, new_run: bool, created: Sequence[Path] = ()) -> None:
        self.run_dir = run_dir
        self.path = run_dir / LOCK_NAME
        self.owner_path = run_dir / OWNER_NAME
        self.supported = True  # False: the file system gives no locks (see the module doc)
        self._fd: int | None = None
        self._key: tuple[int, int] | None = None
        self._created_lock = False
        self._previous_owner: bytes | None = None
        self._created = list(created)
        try:
            self._acquire()
        except BaseException:
            self._remove_created()
            raise
        if new_run and (run_dir / JOURNAL_NAME).exists():
            self.release()
            raise RunDirectoryTaken(
                f"{run_dir} holds a run already; continue it with `matensemble resume {run_dir}` "
                "(Python: Ensemble(resume=...)), or give a new run directory"
            )

    def _acquire(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        while True:
            try:
                before = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                before = None
            if before is not None and (before.st_dev, before.st_ino) in _held:
                # This process holds it (another Ensemble): POSIX locks do not conflict within
                # a process, and opening then closing the file would drop our own lock.
                raise RunDirectoryTaken(self._refusal())
            fd = os.open(self.path, flags, 0o644)
            st = os.fstat(fd)
            key = (st.st_dev, st.st_ino)
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EACCES, errno.EAGAIN):
                    os.close(fd)
                    raise RunDirectoryTaken(self._refusal()) from None
                if exc.errno not in _NO_LOCKS:
                    os.close(fd)
                    raise
                self.supported = False
            # A driver that gave the directory up may have unlinked the file we opened: lock
            # the file that is there now.
            try:
                now = os.stat(self.path, follow_symlinks=False)
            except FileNotFoundError:
                now = None
            if now is None or (now.st_dev, now.st_ino) != key:
                os.close(fd)
                continue
            self._fd, self._key, self._created_lock = fd, key, before is None
            _held.add(key)
            return

    def _refusal(self) -> str:
        owner = read_owner(self.run_dir)
        who = owner.describe() if owner is not None else "another driver"
        return (
            f"{self.run_dir} is in use by {who}: one run directory has one live driver; "
            "wait for it to end (or stop it), then resume"
        )

    def write_owner(self, run_id: str | None) -> None:
        """Record this driver in ``driver.json`` (atomically; the previous one is kept in
        memory so that ``abandon`` can put it back)."""
        if self._previous_owner is None and self.owner_path.exists():
            self._previous_owner = self.owner_path.read_bytes()
        owner = DriverOwner(
            pid=os.getpid(), host=socket.gethostname(), started=time.time(), run_id=run_id
        )
        _write_atomically(self.owner_path, msgspec.json.encode(owner) + b"\n")

    def release(self) -> None:
        """Drop the lock (closing the descriptor releases it). Idempotent."""
        if self._fd is None:
            return
        if self._key is not None:
            _held.discard(self._key)
        os.close(self._fd)
        self._fd = None

    def abandon(self) -> None:
        """Undo what this driver added to the directory (refused before its journal was
        written): the owner record goes back to what it was, a lock file it made goes."""
        if self._fd is None:
            return
        if self._previous_owner is not None:
            _write_atomically(self.owner_path, self._previous_owner)
        else:
            self.owner_path.unlink(missing_ok=True)
        if self._created_lock:
            self.path.unlink(missing_ok=True)  # still held: no one else can have locked it
        self.release()
        self._remove_created()

    def _remove_created(self) -> None:
        for path in reversed(self._created):
            try:
                path.rmdir()
            except OSError:
                return  # not empty (someone else's files now): keep it


def read_owner(run_dir: Path) -> DriverOwner | None:
    """The driver recorded in ``driver.json``, or ``None`` if there is no (readable) record."""
    try:
        return msgspec.json.decode((run_dir / OWNER_NAME).read_bytes(), type=DriverOwner)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def driver_alive(run_dir: Path) -> bool | None:
    """Whether a live driver holds the run directory's lock: ``True``, ``False``, or ``None``
    when this cannot be told (no lock file, or a file system without locks).

    Probes with a shared lock taken and dropped at once. A lock held by this very process
    counts as alive without touching the file (closing it would drop our own lock).
    """
    path = run_dir / LOCK_NAME
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return None
    if (st.st_dev, st.st_ino) in _held:
        return True
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        return True if exc.errno in (errno.EACCES, errno.EAGAIN) else None
    finally:
        os.close(fd)
    return False


def describe_phase(run_dir: Path, phase: str, pid: int) -> str:
    """The phase of ``status.json`` told true: a run whose status says ``running`` but whose
    driver is gone is ``stopped``. ``pid`` is the status file's, for runs without an owner
    record.

    On this host the lock is the witness (the kernel dropped it when the driver died). For a
    driver on another host a free lock proves nothing where locks are per node (Lustre with
    ``localflock``), so it says it cannot tell.
    """
    if phase != "running":
        return phase
    owner = read_owner(run_dir)
    alive = driver_alive(run_dir)
    resume = f"resume with: matensemble resume {run_dir}"
    if owner is None:
        return f"running (driver pid {pid}; no owner record, liveness unknown)"
    who = f"driver pid {owner.pid} on host {owner.host}"
    if alive:
        return f"running ({who})"
    if owner.host != socket.gethostname():
        return f"running or stopped: cannot tell from here whether {who} is alive"
    if alive is None:
        return f"running or stopped: cannot tell whether {who} is alive (no lock to test)"
    return f"stopped ({who} is gone; {resume})"


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
