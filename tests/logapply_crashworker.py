"""The child program of the log-apply crash test: proposes entries to an embedded log.

Usage: python -m tests.logapply_crashworker DIRECTORY FIRST TOTAL
Proposes ``{"op": "add", "key": "e<n>", "by": 1}`` for n in FIRST..TOTAL-1 under message id
``m<n>``, 64 in flight at a time, printing ``ack <n>`` as each is applied, and ``DONE`` at the
end. The parent SIGKILLs it at random moments and starts it again from its lowest unacknowledged
entry (re-proposing acknowledged ones above it under the same ids, which must not double them).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import uvloop

from processes.logapply import KeyValue, Replica, SnapshotStore, SQLiteEntryLog


async def main(directory: Path, first: int, total: int) -> None:
    replica = Replica(
        "crash", KeyValue(), SQLiteEntryLog(directory / "log.db"), SnapshotStore(directory / "snapshots"),
        snapshot_every=700,
    )  # fmt: skip
    await replica.start()
    window = asyncio.Semaphore(64)

    async def propose(n: int) -> None:
        async with window:
            await replica.propose({"op": "add", "key": f"e{n}", "by": 1}, msg_id=f"m{n}")
        sys.stdout.write(f"ack {n}\n")
        sys.stdout.flush()

    await asyncio.gather(*(propose(n) for n in range(first, total)))
    await replica.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    uvloop.run(main(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])))
