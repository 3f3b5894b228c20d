"""Shell processes on a node of your own, built as the daemon builds the kind.

A command runs in its own process group under the run monitor, writes its own log files, and its
result (exit code, CPU, the last lines of output) is the process's result.
"""

import asyncio
import tempfile
from pathlib import Path

from processes.shell import KIND as SHELL
from supervisor import Node, ProcessFailed
from supervisor.lowlevel import KindSetup


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory)
        machine, executors = SHELL.build(KindSetup(config_dir=base, log_dir=base / "logs", run_dir=base / "runs"))
        node = Node(machines=[machine], executors=executors, store=str(base / "store.db"))
        await node.start()

        hello = await node.spawn("shell", {"argv": ["sh", "-c", "echo hello; echo oops >&2"]}, name="hello")
        result = (await hello.wait(timeout=30)).result
        print("exit code:", result["exit_code"], "| stdout:", result["stdout_tail"], "| stderr:", result["stderr_tail"])
        print("its log:", await hello.logs("stdout"))  # the file the command wrote itself

        failing = await node.spawn("shell", {"argv": ["false"]})
        await failing.wait(timeout=30)
        try:
            failing.result()
        except ProcessFailed as exc:
            print("failed:", exc)
        await node.shutdown()


asyncio.run(main())
