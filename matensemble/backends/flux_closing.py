"""Closing the Flux backend: every job of ours cancelled and clean, every partition ended.

``FluxBackend.close`` comes here once it refuses new launches. Every job in flight in every
instance is cancelled (a launch parked in the driver ends at once, without a job); the close
waits until every launch has reported and every job is ``clean``, so that nothing of ours is
left in any instance; then the journal streams end (the partitions' first), and each
partition's own job is cancelled in the enclosing instance and waited for until it is clean
there, which ends the child instance.

If that wait is itself cancelled (the driver is being stopped), the cancel requests are
already with Flux (a send on a handle is complete when it returns): the partitions are
cancelled without waiting too, and every launch still open is reported cancelled at once,
without waiting for Flux to confirm.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from matensemble.backends.flux_channel import FluxChannel
from matensemble.backends.flux_partitions import Partition

__all__ = ["close_instances", "end_partitions"]

_CLOSED = "the matensemble driver closed"


async def close_instances(
    parent: FluxChannel,
    channels: Sequence[FluxChannel],
    partitions: Sequence[Partition],
    drained: Callable[[], Awaitable[None]],
) -> None:
    """Cancel every job in ``channels`` (``parent``'s and the partitions'), wait until
    ``drained()`` returns (every launch reported, every job clean), end the journals and
    the ``partitions``."""
    try:
        for channel in channels:
            channel.closing = True
            channel.cancel_all()
        await drained()
        for channel in channels:
            if channel is not parent:
                await channel.end_journal()
        await end_partitions(parent, partitions, _CLOSED)
        await parent.end_journal()
    except BaseException:
        for partition in partitions:
            partition.cancel(_CLOSED)
        for channel in channels:
            channel.abandon("backend closed (Flux asked to cancel the job)")
        raise


async def end_partitions(
    parent: FluxChannel | None, partitions: Sequence[Partition], reason: str
) -> None:
    """Cancel every child instance and wait until each is clean in the enclosing one
    (``parent``), unless the driver lost touch with that one."""
    for partition in partitions:
        if partition.channel is not None:
            partition.channel.closing = True
        partition.cancel(reason)
    for partition in partitions:
        if parent is not None and not parent.bridge.lost:
            await partition.wait_clean()
