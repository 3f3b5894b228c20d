"""A user's own process kind: a greeter.

A greeter process is spawned with ``{"who": "world"}``. It asks its executor to compose a
greeting (a tracked action: the result comes back as an input), keeps it, and answers calls:
``"greeting"`` with the greeting, ``"count"`` with how many times it was asked. A cast
``["rename", who]`` composes a new one. Its state survives a daemon's crash, like any
process's; its executor is an ``async def`` registered as the ``greeter.compose`` action.
"""

from __future__ import annotations

from typing import Any, ClassVar

from supervisor import ActionSucceeded, Call, Cast, Context, Control, Input, Machine, SettingsError, TrackedAction


class Greeter(Machine[dict[str, Any]]):
    """Greets whoever its settings name."""

    kind = "greeter"
    action_types: ClassVar[tuple[str, ...]] = ("greeter.compose",)

    @classmethod
    def check_settings(cls, settings: Any) -> None:
        who = settings.get("who", "world")
        if not isinstance(who, str) or not who:
            raise SettingsError("who", f"expected a non-empty string; got {who!r}")

    async def transition(self, state: dict[str, Any], input: Input, ctx: Context) -> None:
        match input:
            case Control():
                state.setdefault("who", "world")
                state["asked"] = 0
                state["composing"] = ctx.track("greeter.compose", {"who": state["who"]})
            case ActionSucceeded(action_id=action_id, value=greeting) if action_id == state.get("composing"):
                state["greeting"] = greeting
                state["composing"] = None
            case Cast(["rename", str(who)]):
                state["who"] = who
                state["composing"] = ctx.track("greeter.compose", {"who": who})
            case Call("greeting"):
                state["asked"] += 1
                ctx.reply(input, state.get("greeting"))
            case Call("count"):
                ctx.reply(input, state["asked"])


async def compose(action: TrackedAction) -> str:
    """The ``greeter.compose`` executor: a greeting for ``action.payload["who"]``."""
    return f"Hello, {action.payload['who']}!"
