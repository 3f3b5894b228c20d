"""An example process kind for the shipped configuration: the ticker (statevisor's real kinds,
shell commands, batch jobs, cloud pods and log-apply machines, come in packages of their own)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from supervisor import Call, Context, Control, Input, Machine, SettingsError, TimerFired


class Ticker(Machine[dict[str, Any]]):
    """Counts ticks every ``interval`` seconds; a call "ticks" replies the count.

    Its state and its timer are checkpointed, so it keeps counting where it left off after a
    restart of the daemon.
    """

    kind = "ticker"

    @classmethod
    def check_settings(cls, settings: Mapping[str, Any]) -> None:
        for key in settings:
            if key != "interval":
                raise SettingsError(key, "unknown setting; expected interval")
        interval = settings.get("interval", 5.0)
        if isinstance(interval, bool) or not isinstance(interval, int | float) or not interval > 0:
            raise SettingsError("interval", f"expected a number of seconds > 0; got {interval!r}")

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state.setdefault("interval", 5.0)
                state["ticks"] = 0
                ctx.timeout("tick", float(state["interval"]))
            case TimerFired("tick"):
                state["ticks"] += 1
                ctx.timeout("tick", float(state["interval"]))
            case Call("ticks"):
                ctx.reply(input, state["ticks"])


KINDS: dict[str, type[Machine[Any]]] = {Ticker.kind: Ticker}
