"""What the core asks of a checkpoint store: the write-ahead rule's other half.

A process hands its encoded checkpoint (:class:`~supervisor._core.codec.Checkpoint`) to a
:class:`Checkpointer` before anything its transition described leaves it. The embedded SQLite
store, a cluster store and a simulation's store all implement this protocol; the core knows
none of them.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from .codec import Checkpoint


class Checkpointable(Protocol):
    """What :meth:`Checkpointer.mark_dirty` takes: a process, as far as a store cares."""

    @property
    def pid(self) -> str: ...

    @property
    def dirty(self) -> bool:
        """Committed changes not handed to the store yet."""
        ...

    def checkpoint(self) -> Checkpoint:
        """The encoded checkpoint of the last committed state (taken when the store writes)."""
        ...


class Checkpointer(Protocol):
    """Makes processes' committed states durable.

    Three ways in, by what the caller needs:

    * ``save`` returns once the checkpoint is durable (the caller waits: an ending, a retry);
    * ``submit`` queues it and returns at once a future that resolves once it is durable, so
      a process may go on to its next input while its effects wait (pipelining; used only
      where ``pipelined`` is true);
    * ``mark_dirty`` asks for the process's latest checkpoint in the next group commit, taken
      then: nobody waits, and a process that commits many effect-free transitions in a row is
      written once.
    """

    @property
    def pipelined(self) -> bool:
        """Whether ``submit`` may be used: a store that hands out a future per checkpoint."""
        ...

    async def save(self, checkpoint: Checkpoint) -> None: ...

    def submit(self, checkpoint: Checkpoint) -> asyncio.Future[None]: ...

    def mark_dirty(self, process: Checkpointable) -> None: ...
