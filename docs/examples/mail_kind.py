"""A process kind of your own: a machine, its executor, its errors and a configuration table.

As a package it would reach a daemon through an entry point of group ``statevisor.kinds``
(``mail = "mymail:KIND"``) or a configuration's ``[kinds]`` table. Here it is built the way a
daemon builds it, from a KindSetup, and run on a node.
"""

import asyncio
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor import (
    ActionFailed,
    ActionSucceeded,
    BackendError,
    Context,
    Control,
    Input,
    Machine,
    Node,
    SettingsError,
    TrackedAction,
    UntrackedAction,
)
from supervisor.lowlevel import KindSetup, private_directory

SEND = "mail.send"


class OutboxError(BackendError):
    """The kind's own error, on the core's base: a process receives it as ActionFailed."""


class Mail(Machine[dict[str, Any]]):
    """Sends one message, then finishes with where it went."""

    kind = "mail"
    action_types = (SEND,)  # a daemon checks that something executes each of them

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        for key in ("to", "text"):
            if not isinstance(settings.get(key), str):
                raise SettingsError(key, f"expected a string; got {settings.get(key)!r}")

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control():
                ctx.track(SEND, {"to": state["to"], "text": state["text"]})
            case ActionSucceeded(value=where):
                ctx.finish(where)
            case ActionFailed(error_type=error, message=message):
                ctx.fail(f"{error}: {message}")


class Outbox:
    """The executor: one file per action id, made with O_EXCL, so a re-issued id sends nothing twice."""

    idempotent = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def execute(self, action: TrackedAction | UntrackedAction) -> str:
        assert isinstance(action, TrackedAction)
        path = self.directory / f"{action.id.replace(':', '_')}.eml"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return str(path)  # sent already, under this id: the first outcome
        except OSError as exc:
            raise OutboxError(f"cannot write to {self.directory}: {exc.strerror}") from None
        with os.fdopen(fd, "w") as message:
            message.write(f"To: {action.payload['to']}\n\n{action.payload['text']}\n")
        return str(path)

    async def cancel(self, action: TrackedAction) -> None:
        return None


class MailKind:
    """The kind as a daemon loads it (supervisor.lowlevel.Kind): it owns the [outbox] table."""

    machine = Mail
    tables = ("outbox",)
    action_types = (SEND,)

    def check_tables(self, tables: Mapping[str, Any], base: Path) -> None:
        directory = tables.get("outbox", {}).get("directory")
        if not isinstance(directory, str):
            raise SettingsError("outbox.directory", f"expected a directory; got {directory!r}")

    def build(self, setup: KindSetup) -> tuple[Machine[Any], Mapping[str, Any]]:
        directory = setup.config_dir / setup.tables["outbox"]["directory"]
        private_directory(directory)  # messages are their owner's alone, whatever the umask
        return Mail(), {SEND: Outbox(directory)}


KIND = MailKind()


async def main() -> None:
    with tempfile.TemporaryDirectory() as directory:
        base = Path(directory)
        tables = {"outbox": {"directory": "outbox"}}  # [outbox] directory = "outbox"
        KIND.check_tables(tables, base)
        machine, executors = KIND.build(KindSetup(base, base / "logs", base / "runs", tables))
        node = Node(machines=[machine], executors=executors)
        await node.start()
        welcome = await node.spawn("mail", {"to": "ada@example.org", "text": "welcome"})
        sent = Path((await welcome.wait(timeout=10)).result)
        print(sent.name, "|", (await asyncio.to_thread(sent.read_text)).splitlines())
        try:
            await node.spawn("mail", {"to": "ada@example.org"})
        except SettingsError as exc:
            print("refused:", exc)
        await node.shutdown()


asyncio.run(main())
