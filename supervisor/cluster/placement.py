"""Where a process runs: rendezvous (highest random weight) hashing over the live members.

Every member computes the same answer from the same member list, without talking to the
others: a survivor takes exactly the dead member's processes that rank it first, and when a
member leaves only its own processes move (each to the survivor that ranked second for it),
about an equal share to each. Members whose views differ for a moment (one has not seen a
departure yet) may both try to take a process; the store's compare-and-set lets one win.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def weight(key: str, member: str) -> int:
    """``member``'s rank for ``key``: 64 bits of a keyed hash (stable across runs and machines,
    unlike ``hash()``)."""
    digest = hashlib.blake2b(key.encode(), digest_size=8, key=member.encode()[:64]).digest()
    return int.from_bytes(digest, "big")


def place(key: str, members: Iterable[str]) -> str | None:
    """The member ``key`` belongs on, or None when there is none; ties (never in practice) go
    to the smaller name, so every member agrees."""
    best: tuple[int, str] | None = None
    for member in members:
        rank = (weight(key, member), member)
        if best is None or rank[0] > best[0] or (rank[0] == best[0] and member < best[1]):
            best = rank
    return None if best is None else best[1]
