"""Our one streaming ``job-manager.events-journal`` RPC in a Flux instance.

The job manager sends every job's events there, filtered to the names we ``allow`` before
they cost a message: first the backlog of jobs that exist already, then a sentinel (job id
``-1``), then live events until we cancel the stream. ``FluxChannel`` routes the events of each
answer to the job they belong to; this module only keeps the stream: its start, whether it is
still outstanding, and its orderly end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from typing import Any

from matensemble.backends.flux_reactor import FluxReactorBridge

__all__ = ["EventsJournal"]

JobEventsHandler = Callable[[int, list[Mapping[str, Any]], Mapping[str, Any]], None]


class EventsJournal:
    """The stream of our job events from one instance.

    Args:
        flux: the imported ``flux`` package.
        handle: the instance's handle (used only from the loop's thread).
        bridge: the reactor bridge of that handle.
        allow: the event names to receive.
        on_events: called with (job id, events, the whole answer) for each answer after the
            backlog's sentinel and within it.
        on_lost: called with the error when the stream ends by itself once it was ready
            (before that, ``start``'s future raises it instead).
    """

    def __init__(
        self,
        flux: Any,
        handle: Any,
        bridge: FluxReactorBridge,
        allow: Mapping[str, int],
        on_events: JobEventsHandler,
        on_lost: Callable[[OSError], None],
    ) -> None:
        self._flux = flux
        self._handle = handle
        self._bridge = bridge
        self._allow = allow
        self._on_events = on_events
        self._on_lost = on_lost
        self._future: Any = None
        self._ready: asyncio.Future[None] | None = None
        self._ended = asyncio.Event()

    def start(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[None]:
        """Send the RPC; the future is done once the backlog is read (or the RPC failed)."""
        self._ready = ready = loop.create_future()
        self._future = self._bridge.stream(
            "job-manager.events-journal", {"full": False, "allow": self._allow}, self._answer
        )
        return ready

    @property
    def streaming(self) -> bool:
        """Whether the RPC is outstanding (so Flux's message dispatcher is active)."""
        return self._future is not None and not self._ended.is_set()

    def refuse(self, error: BaseException) -> None:
        """Make ``start``'s future raise ``error`` if it is still waiting for the backlog."""
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(error)

    async def end(self) -> None:
        """Ask the job manager to end the stream, and wait until it has."""
        if self._future is None or self._ended.is_set() or self._bridge.lost:
            return
        self._handle.rpc(
            "job-manager.events-journal-cancel",
            {"matchtag": self._bridge.matchtag(self._future)},
            flags=self._flux.constants.FLUX_RPC_NORESPONSE,
        )
        self._bridge.kick()
        await self._ended.wait()

    def forget(self) -> None:
        """The handle is closing: the stream goes with it."""
        self._future = None

    def _answer(self, future: Any, _: Any) -> None:
        try:
            payload = self._bridge.payload(future)
        except OSError as exc:
            self._ended.set()
            ready = self._ready
            if ready is not None and not ready.done():
                ready.set_exception(exc)
            else:
                self._on_lost(exc)
            return
        self._bridge.next_response(future)
        jobid = payload["id"]
        if jobid == -1:  # the sentinel after the backlog: we are following live events now
            if self._ready is not None and not self._ready.done():
                self._ready.set_result(None)
            return
        self._on_events(jobid, payload["events"], payload)
