"""The futures a ``FluxReactorBridge`` makes: libflux's own, run by one cffi callback.

The futures of every job (its submit, the journal stream) are libflux's own: one cffi callback
runs them all, with no Python wrapper object per future (the bindings' ``Future`` costs some
sixty Python calls per job between its construction, ``then``, its callback trampoline and
``reset``), and they are read straight from libflux (the bindings' getters wrap each call in a
blocking-wait guard: a new handle object and two ``signal()`` calls per get, about 0.2 ms per
message under asyncio, where the future is always ready already).

``take_answer`` lets the bridge run the callback of the future a message has just fulfilled
right after the reactor iteration that dispatched the message (see ``flux_reactor``).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable
from typing import Any

import msgspec

__all__ = ["OwnFutures", "RawCallback"]

_decode = msgspec.json.Decoder().decode  # a few times faster than json.loads

_LOOK_AHEAD = 8  # futures looked at for the one a message answered (answers come in order)

RawCallback = Callable[[Any, Any], None]
"""Called with (the ``flux_future_t *``, the argument given with it) once it is fulfilled."""


class OwnFutures:
    """The futures waiting for an answer, by the key their callback is given (loop thread).

    Args:
        ffi, lib: the bindings' cffi objects.
        on_error: called with an exception a callback raised (none leaves a Flux callback).
    """

    def __init__(self, ffi: Any, lib: Any, on_error: Callable[[BaseException], None]) -> None:
        self._ffi = ffi
        self._lib = lib
        self._on_error = on_error
        self._text: Any = ffi.new("char *[1]")  # out-parameters, reused (one thread)
        self._jobid: Any = ffi.new("flux_jobid_t[1]")
        self.answered = 0  # how many callbacks have run, ever (progress, for the drain)
        self.again = False  # a callback left a streaming future ready (see next_response)
        self._resets = 0  # how many times next_response was called, ever
        # (the flux_future_t *, callback, its argument, whether it streams)
        self._thens: dict[int, tuple[Any, RawCallback, Any, bool]] = {}
        self._streams: list[int] = []  # keys of the streams still answering, looked at first
        self._keys = itertools.count(1)
        try:
            self._on_future: Any = ffi.callback("void(flux_future_t *, void *)", self._fulfilled)
        except MemoryError:  # no write+execute memory here: see ``_then_through_bindings``
            self._on_future = None
        self._wrappers: dict[int, Any] = {}  # the bindings' futures of that fallback, by key

    def payload(self, future: Any) -> Any:
        """The decoded JSON payload of a fulfilled RPC future (a ``flux_future_t *``; the
        bindings' ``Future`` holds it as ``.handle``); ``OSError`` if it failed."""
        out = self._text
        if self._lib.flux_rpc_get(future, out) < 0:
            raise self._error(future)
        return _decode(self._ffi.string(out[0])) if out[0] != self._ffi.NULL else None

    def next_response(self, future: Any) -> None:
        """Reset a streaming RPC future made by ``stream`` for its next response (after
        reading this one).

        A response already queued in the future fulfils it again at once; its callback then
        runs in the next reactor iteration, which the drain makes sure to run (``again``).
        """
        self._resets += 1
        self._lib.flux_future_reset(future)
        if self._lib.flux_future_is_ready(future):
            self.again = True

    def then(self, future: Any, fn: RawCallback, arg: Any, stream: bool = False) -> None:
        """Run ``fn(future, arg)`` once ``future`` is fulfilled (each time, for a stream); a
        future that is not a stream is destroyed after. ``OSError`` if it cannot be watched."""
        ffi, lib = self._ffi, self._lib
        if future == ffi.NULL:
            errno = ffi.errno
            raise OSError(errno, os.strerror(errno))
        key = next(self._keys)
        if self._on_future is None:
            self._then_through_bindings(future, key)
        elif lib.flux_future_then(future, -1.0, self._on_future, ffi.cast("void *", key)) < 0:
            errno = ffi.errno
            lib.flux_future_destroy(future)
            raise OSError(errno, os.strerror(errno))
        self._thens[key] = (future, fn, arg, stream)
        if stream:
            self._streams.append(key)

    def _then_through_bindings(self, future: Any, key: int) -> None:
        """Where ``ffi.callback`` cannot get write+execute memory for its closure (SELinux's
        ``deny_execmem``, a process with ``PR_SET_MDWE``), run the future's callback through
        the bindings' ``Future.then``: its trampoline is compiled into the bindings. The
        bindings' ``Future`` owns a reference of its own (``incref``), dropped when it is
        collected, so ``_fulfilled`` and ``close`` destroy the future as on the fast path; the
        cost is that wrapper per future (some sixty Python calls per job)."""
        from flux.future import Future

        self._lib.flux_future_incref(future)
        wrapper = Future(future)
        try:
            wrapper.then(self._wrapper_fulfilled, key)
        except OSError:
            self._lib.flux_future_destroy(future)  # ours; the wrapper drops its own
            raise
        self._wrappers[key] = wrapper

    def _wrapper_fulfilled(self, wrapper: Any, key: int) -> None:
        self._answered(wrapper.pimpl.handle, key)

    def _fulfilled(self, future: Any, key: Any) -> None:
        """The one cffi callback of every future made by ``_then`` (no exception may leave
        it: cffi would only print it)."""
        self._answered(future, int(self._ffi.cast("intptr_t", key)))

    def _answered(self, future: Any, key: int) -> None:
        self.answered += 1
        try:
            entry = self._thens.get(key)
            if entry is None:
                return
            _, fn, arg, stream = entry
            if stream:
                resets = self._resets
                try:
                    fn(future, arg)
                finally:
                    if self._resets == resets and key in self._streams:
                        # Not reset for a next response: the stream has ended (an error ends
                        # it). Unfulfilled, its callback cannot run again, from the reactor
                        # (a call from ``take_answer`` left it due there) or from us.
                        self._streams.remove(key)
                        self._lib.flux_future_reset(future)
                return
            del self._thens[key]
            self._wrappers.pop(key, None)
            try:
                fn(future, arg)
            finally:
                self._lib.flux_future_destroy(future)
        except Exception as exc:
            self._on_error(exc)

    def waiting(self) -> int:
        """How many futures made here wait for an answer (a stream counts until ``close``)."""
        return len(self._thens)

    def job_id(self, future: Any) -> int:
        """The job id of a fulfilled submit future; ``OSError`` if Flux refused the job."""
        out = self._jobid
        if self._lib.flux_job_submit_get_id(future, out) < 0:
            raise self._error(future)
        return int(out[0])

    def matchtag(self, future: Any) -> int:
        """The match tag of an RPC sent by ``stream`` (to cancel a streaming RPC by)."""
        return int(self._lib.flux_rpc_get_matchtag(future))

    def _error(self, future: Any) -> OSError:
        errno = self._ffi.errno
        text = self._lib.flux_future_error_string(future)
        message = self._ffi.string(text).decode() if text != self._ffi.NULL else os.strerror(errno)
        return OSError(errno, message)

    def take_answer(self) -> bool:
        """Run now, not in the next reactor iteration, the callback of the future of ours that
        the message just dispatched has fulfilled; ``False`` if none was found among the
        streams and the oldest few others (the message was for a future of the bindings').

        Its reactor watchers are stopped as the callback resets the future (a stream) or as
        the future is destroyed (any other), so the reactor does not run it a second time.
        """
        is_ready = self._lib.flux_future_is_ready
        thens = self._thens
        for key in self._streams:
            future = thens[key][0]
            if is_ready(future):
                self._answered(future, key)
                return True
        for looked, (key, (future, _, _, stream)) in enumerate(thens.items()):
            if looked == _LOOK_AHEAD:
                break
            if not stream and is_ready(future):
                self._answered(future, key)
                return True
        return False

    def destroy_all(self) -> None:
        """Destroy every future still waiting (its callback will not run)."""
        thens = list(self._thens.values())
        self._thens.clear()
        self._streams.clear()
        self._wrappers.clear()
        for future, *_ in thens:
            self._lib.flux_future_destroy(future)
