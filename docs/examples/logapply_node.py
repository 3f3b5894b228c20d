"""A log-apply machine of your own: an Applier, run over the embedded log on a node.

``apply`` is deterministic (no clock, no randomness, no I/O); statevisor owns the log, the
order, the applied index, snapshots and recovery. Proposals go through the process as tracked
actions, so a proposal re-issued after a crash lands once.
"""

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from processes.logapply import KIND as LOGAPPLY
from processes.logapply import Applier, ApplyFailed, LogApplyClient, register
from supervisor import Node
from supervisor.lowlevel import KindSetup


@register  # nameable as app = "counter" in settings and configurations
class Counter(Applier):
    name = "counter"

    def apply(self, state: dict[Any, Any], entry: Any) -> Any:
        if entry["by"] < 0:
            raise ValueError("counters only go up")  # this entry's result is the error, everywhere
        state[entry["key"]] = state.get(entry["key"], 0) + entry["by"]
        return state[entry["key"]]


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory)
        machine, executors = LOGAPPLY.build(KindSetup(config_dir=base, log_dir=base / "logs", run_dir=base / "runs"))
        node = Node(machines=[machine], executors=executors, store=str(base / "store.db"))
        await node.start()
        counters = LogApplyClient(await node.spawn("logapply", {"app": "counter"}, name="counters"))

        print(await counters.propose({"key": "a", "by": 2}))  # 2: committed and applied here
        print(await counters.propose({"key": "a", "by": 3}))  # 5
        try:
            await counters.propose({"key": "a", "by": -1})
        except ApplyFailed as exc:
            print("refused:", exc)
        print(await counters.read("a", sync=True))  # 5, after catching up with the log's end
        status = await counters.status()
        print({key: status[key] for key in ("applied", "commit", "lag")})
        await node.shutdown()


asyncio.run(main())
