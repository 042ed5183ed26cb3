"""Drive a Flux handle's reactor from the asyncio event loop: no thread, no timer, no polling.

A Flux handle owns a libev reactor whose watchers fulfil futures and call their ``then``
callbacks. ``flux_pollfd(3)`` gives a file descriptor that turns readable when the handle has
something to do, so ``loop.add_reader`` can wake us exactly then; we answer by running the
reactor with ``FLUX_REACTOR_NOWAIT`` (one non-blocking libev iteration per call).

One iteration is not enough, and "no message pending" is the wrong place to stop:

- the handle watcher dispatches one message per iteration;
- a future fulfilled by that message runs its ``then`` callback in the *next* iteration (the
  future's check watcher was started during this iteration's check phase);
- the pollfd is edge-triggered: once ``flux_pollevents`` has consumed an edge, messages already
  queued inside the handle do not make it readable again.

So ``FluxReactorBridge.run`` repeats iterations until one leaves nothing behind: it received
no message (the handle's receive counters did not move; a message received runs its future's
callback in the next iteration), no callback of ours reset a streaming future that was at once
fulfilled again by a response already queued in it (``next_response`` tells), and
``flux_pollevents`` reports nothing to read. The last thing a drain does is that
``flux_pollevents`` call, which re-arms the edge: anything that arrives later makes the pollfd
readable and asyncio calls us again. Nothing can be left behind, because every way a callback
can become due is covered: a message (counted, or pending in ``pollevents``) or a streaming
future made ready again by its reset (``next_response``). The one case without any fd
activity, a ``then`` registered on a future that is already fulfilled, is covered by
``kick()``, which callers use after touching the handle outside a drain.

Each iteration costs the handle's watchers and us several ``epoll_wait``/``poll`` calls, so a
message for a future of our own does not wait for the next one: when an iteration received one
message, the drain looks for the future of ours it fulfilled (``OwnFutures.take_answer``: the
streams, then the oldest few others, as submits are answered in order) and runs its callback
at once, which stops the future's
reactor watchers (a stream is reset for its next response, any other future is destroyed). If
``flux_pollevents`` then reports nothing to read, that message was all and the drain ends: one
iteration per message instead of two (dispatch, callback). A message for a future of the
bindings' (a cancel's answer), or one the look finds nothing for, takes the two as before.

Input that no iteration consumes (two in a row without progress while ``pollevents`` still
says POLLIN) means no message handler is active: Flux stops dispatching when no RPC is
outstanding. Spinning on it would burn the CPU, so the drain ends; the next RPC re-activates
the dispatcher and its caller's ``kick()`` drains again.

The rule holds for plain RPC futures whose callbacks are wrapped by ``callback()`` or run by
``then()``. Flux's composite futures (``flux_job_result``, ``flux_future_and_then``) run an
internal callback between a message and ours; the backend does not use them.

The futures of every job (its submit, the journal stream) are libflux's own, made through
``submit``, ``request`` and ``stream`` and run by one cffi callback (``flux_futures``).

A Python exception escaping a Flux callback is caught by the bindings, stored in a
thread-local slot and the reactor is stopped with an error; ``callback()`` catches ours before
that, and ``Flux.raise_if_exception()`` after each iteration re-raises anything else, so no
error is lost. ``FLUX_POLLERR`` (the broker went away) ends the watching and is reported once,
so a dead connection can neither spin nor hang.

We call ``flux_reactor_run`` directly rather than ``Flux.reactor_run()``, which installs a
SIGINT watcher on every call; instead each drain marks the thread as running a reactor
(``Flux.reactor_enter``), which keeps the bindings from swapping the SIGINT handler around every
``get()`` (a Ctrl-C in that window would kill the driver before it cancels its jobs).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import msgspec

from matensemble.backends.flux_futures import OwnFutures, RawCallback

__all__ = ["BridgeLost", "FluxReactorBridge"]


class BridgeLost(Exception):
    """The connection to the broker failed (``FLUX_POLLERR``); the handle is unusable."""


_encode = msgspec.json.Encoder().encode


class FluxReactorBridge:
    """Runs ``handle``'s reactor whenever its pollfd turns readable on ``loop``.

    Args:
        handle: an open ``flux.Flux`` handle, used only from ``loop``'s thread.
        loop: the running asyncio loop.
        on_error: called with an exception raised by a wrapped callback, or with
            ``BridgeLost`` once when the broker connection fails (the reader is then removed).
    """

    def __init__(
        self,
        handle: Any,
        loop: asyncio.AbstractEventLoop,
        on_error: Callable[[BaseException], None],
    ) -> None:
        from flux.core.handle import Flux
        from flux.core.inner import ffi, lib

        self._lib: Any = lib
        self._flux_class: Any = Flux
        self._handle = handle
        self._raw: Any = handle.handle  # the flux_t *, for direct calls into libflux
        self._reactor: Any = handle.get_reactor()
        self._ffi: Any = ffi
        self._counters: Any = ffi.new("flux_msgcounters_t *")
        self._loop = loop
        self._on_error = on_error
        self._fd: int = handle.pollfd()
        self._callbacks = 0  # how many wrapped callbacks have run, ever
        self._draining = False
        self._kicked = False
        self._lost = False
        self.wakeups = 0  # statistics for benchmarks: drains, and reactor iterations in them
        self.iterations = 0
        self._futures = futures = OwnFutures(ffi, lib, on_error)
        # Reading fulfilled futures (see ``OwnFutures``): ``payload`` and ``next_response`` for
        # ``stream``'s responses, ``job_id`` for ``submit``'s answer, ``matchtag``.
        self.payload = futures.payload
        self.next_response = futures.next_response
        self.job_id = futures.job_id
        self.matchtag = futures.matchtag
        self.waiting = futures.waiting
        loop.add_reader(self._fd, self.run)

    @property
    def lost(self) -> bool:
        """Whether the broker connection has failed."""
        return self._lost

    def callback(self, fn: Callable[..., None]) -> Callable[..., None]:
        """Wrap a ``then`` callback: count it as progress and keep its exceptions from Flux."""

        def wrapped(*args: Any) -> None:
            self._callbacks += 1
            try:
                fn(*args)
            except Exception as exc:
                self._on_error(exc)

        return wrapped

    def submit(self, jobspec: bytes, urgency: int, flags: int, fn: RawCallback, arg: Any) -> None:
        """``flux_job_submit`` on the handle; ``fn(future, arg)`` runs with its answer (read it
        with ``job_id``), after which the future is destroyed. ``OSError`` if it cannot be
        sent."""
        self._futures.then(self._lib.flux_job_submit(self._raw, jobspec, urgency, flags), fn, arg)

    def request(self, topic: str, payload: Any = None) -> asyncio.Future[Any]:
        """Send an RPC to the instance; the returned future gets its decoded response (or
        ``OSError``)."""
        done: asyncio.Future[Any] = self._loop.create_future()

        def on_response(future: Any, _: Any) -> None:
            if done.done():
                return
            try:
                done.set_result(self.payload(future))
            except OSError as exc:
                done.set_exception(exc)

        self._futures.then(self._rpc(topic, payload, 0), on_response, None)
        self.kick()
        return done

    def stream(self, topic: str, payload: Any, fn: RawCallback) -> Any:
        """Send a streaming RPC; ``fn(future, None)`` runs with each response, and calls
        ``next_response`` after reading it. Returns the ``flux_future_t *`` (it lives until
        ``close``). ``OSError`` if it cannot be sent."""
        future = self._rpc(topic, payload, self._lib.FLUX_RPC_STREAMING)
        self._futures.then(future, fn, None, stream=True)
        self.kick()
        return future

    def _rpc(self, topic: str, payload: Any, flags: int) -> Any:
        body = self._ffi.NULL if payload is None else _encode(payload)
        return self._lib.flux_rpc(self._raw, topic.encode(), body, self._lib.FLUX_NODEID_ANY, flags)

    def kick(self) -> None:
        """Drain soon (once per loop iteration, however often it is called).

        Needed after registering a ``then`` on a future that may already be fulfilled: no
        message will arrive for it, so the pollfd will not wake us.
        """
        if not self._kicked and not self._lost:
            self._kicked = True
            self._loop.call_soon(self._kick)

    def _kick(self) -> None:
        self._kicked = False
        self.run()

    def _received(self) -> int:
        self._lib.flux_get_msgcounters(self._raw, self._counters)
        c = self._counters
        return int(c.request_rx + c.response_rx + c.event_rx + c.control_rx)

    def run(self) -> None:
        """Run reactor iterations until one makes no progress (see the module docstring)."""
        if self._draining or self._lost:
            return  # a callback re-entered us; the outer drain finishes the work
        lib, futures = self._lib, self._futures
        self._draining = True
        self.wakeups += 1
        # Tell the bindings that callbacks run inside a reactor: otherwise each future.get()
        # swaps the SIGINT handler for SIG_DFL around the call (so that a blocking wait can be
        # interrupted), and a Ctrl-C landing then would kill the driver before it can cancel
        # its jobs. It also saves two signal() calls per get().
        self._flux_class.reactor_enter()
        try:
            stalled = 0
            futures.again = False
            received = self._received()
            while True:
                callbacks = self._callbacks + futures.answered
                self.iterations += 1
                if lib.flux_reactor_run(self._reactor, lib.FLUX_REACTOR_NOWAIT) < 0:
                    # The reactor was stopped with an error: by a callback we did not wrap
                    # (the bindings keep its exception for us), or by the dispatcher when the
                    # connection failed (pollevents below says POLLERR).
                    try:
                        self._flux_class.raise_if_exception()
                    except Exception as exc:
                        self._on_error(exc)
                now = self._received()
                if now != received:
                    took = now == received + 1 and futures.take_answer()
                    received = self._received()
                    stalled = 0
                    if not took or futures.again:
                        continue  # its future's callback runs in the next iteration
                    # The one message this iteration dispatched has been answered (a callback
                    # that counts as progress below): another iteration only if input waits.
                elif futures.again:  # a streaming future holds the next response already
                    futures.again = False
                    stalled = 0
                    continue
                events = lib.flux_pollevents(self._raw)
                if events < 0 or events & lib.FLUX_POLLERR:
                    self._fail_lost()
                    return
                if not events & lib.FLUX_POLLIN:
                    return
                if callbacks != self._callbacks + futures.answered:
                    stalled = 0
                else:
                    # Input but no progress: it may have arrived after this iteration's check
                    # phase (the next one takes it), or no handler is listening (the dispatcher
                    # is idle without outstanding RPCs). Two stalls in a row mean the latter;
                    # the next RPC we send re-activates it, and kick() drains again.
                    stalled += 1
                    if stalled >= 2:
                        return
        finally:
            self._flux_class.reactor_exit()
            self._draining = False

    def _fail_lost(self) -> None:
        self._lost = True
        self.close()
        self._on_error(BridgeLost("lost the connection to the Flux broker"))

    def close(self) -> None:
        """Stop watching the handle and destroy the futures still waiting (idempotent). The
        handle itself stays open."""
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            self._fd = -1
        self._futures.destroy_all()
