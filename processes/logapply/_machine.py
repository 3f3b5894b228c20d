"""The log-apply process type, and the client that proposes and reads through any handle.

The process is thin: it starts its replica (``logapply.serve``, in flight for the process's
whole life) and turns calls into tracked actions, replying when they complete. Because a
proposal is a tracked action, it is checkpointed before it is appended, and re-issued under the
same id after a crash: the log's deduplication makes it land once. Everything heavy (the log,
the applied state, snapshots) lives in the replica, outside the process's checkpoint.
"""

from __future__ import annotations

from typing import Any

from supervisor import (
    ActionFailed,
    ActionSucceeded,
    Call,
    Context,
    Control,
    ControlEvent,
    Input,
    Machine,
    SettingsError,
)

from ._executor import PROPOSE, READ, SERVE, STATUS
from ._settings import KEYS, parse
from .errors import ApplyFailed

_OPS = {"propose": PROPOSE, "read": READ, "status": STATUS}


class LogApply(Machine[dict[str, Any]]):
    """A log-apply machine: settings in state (``app``, ``log``, ...), see ``_settings``."""

    kind = "logapply"
    action_types = (SERVE, PROPOSE, READ, STATUS)
    local_paths = ("path",)

    @classmethod
    def check_settings(cls, settings: Any) -> None:
        parse(settings)

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control(event=ControlEvent.STARTED):
                try:
                    parse(state)
                except SettingsError as exc:
                    ctx.fail(f"invalid settings: {exc}")
                    return
                settings = {k: v for k, v in state.items() if k in KEYS}
                ctx.track(SERVE, {"name": ctx.name or ctx.pid, "settings": settings})
                state["_calls"] = {}
            case Call(message={"op": str(op), **rest}) if op in _OPS:
                action = ctx.track(_OPS[op], rest)
                state["_calls"][action] = input.ref
            case Call(message=message):
                ctx.reply(
                    input,
                    {"ok": False, "error": f"unknown request {message!r:.80}; expected op propose, read or status"},
                )
            case ActionSucceeded(action_type="logapply.serve"):
                ctx.fail("the replica stopped")
            case ActionFailed(action_type="logapply.serve"):
                ctx.fail(f"{input.error_type}: {input.message}")
            case ActionSucceeded(action_id=action, value=value):
                ref = state["_calls"].pop(action, None)
                if ref is not None:
                    ctx.reply(ref, {"ok": True, "value": value})
            case ActionFailed(action_id=action):
                ref = state["_calls"].pop(action, None)
                if ref is not None:
                    ctx.reply(ref, {"ok": False, "error": f"{input.error_type}: {input.message}"})

    def moves(self, state: dict[str, Any]) -> bool:
        """A replica of a JetStream log moves to another daemon (its log is the stream); one of
        an embedded log is bound to the machine whose file holds it."""
        return bool(state.get("log", "sqlite") == "jetstream")

    def view(self, state: dict[str, Any]) -> Any:
        return {k: v for k, v in state.items() if not k.startswith("_")} | {
            "requests_in_flight": len(state.get("_calls", {}))
        }


class LogApplyClient:
    """``propose``/``read``/``status`` over a handle: in-process or remote, the same code."""

    def __init__(self, handle: Any, *, timeout: float | None = 60.0) -> None:
        self.handle = handle
        self.timeout = timeout

    async def _ask(self, message: dict[str, Any]) -> Any:
        reply = await self.handle.call(message, timeout=self.timeout)
        if not reply["ok"]:
            from .errors import EntryLogError

            raise EntryLogError(str(getattr(self.handle, "name", "?")), reply["error"])
        return reply["value"]

    async def propose_indexed(self, entry: Any) -> tuple[int, Any]:
        """Append ``entry``; once committed and applied here: (its index, its result)."""
        done = await self._ask({"op": "propose", "entry": entry})
        if not done["ok"]:
            raise ApplyFailed(done["index"], done["value"])
        return done["index"], done["value"]

    async def propose(self, entry: Any) -> Any:
        """Append ``entry``; its apply result once committed and applied (a linearizable write).

        Raises :class:`ApplyFailed` if apply raised on it (the entry stays in the log).
        """
        return (await self.propose_indexed(entry))[1]

    async def read(self, query: Any, *, sync: bool = False) -> Any:
        """Answer ``query`` from the applied state; ``sync``: after catching up with the log's end."""
        return await self._ask({"op": "read", "query": query, "sync": sync})

    async def status(self) -> dict[str, Any]:
        """applied, commit, lag, snapshot index and age, apply errors, and the state's hash."""
        result: dict[str, Any] = await self._ask({"op": "status"})
        return result

    def __repr__(self) -> str:
        return f"<LogApplyClient {self.handle!r}>"
