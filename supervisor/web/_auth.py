"""Who may read and who may act: the daemon's token, sessions made from it, and forgery checks.

The console knows one credential, the daemon's token (``daemon.token_file``, the control API's
on TCP). A person logs in by giving it once; the console then sets a session cookie signed with
a key derived from the token (HMAC-SHA256), holding a random session id, the name the person
gave for the log, and when it was made. Nothing is stored per session, except the ids of those
that logged out until they would have expired anyway; a new token ends every session. A program
may send the token itself instead, as ``Authorization: Bearer <token>``.

A request that acts (pause, resume, kill, nudge, spawn, log out) must also carry the session's
forgery token (a form field, or the ``X-CSRF-Token`` header htmx sends), derived from the session
id with the same key, and, when the browser names one, come from the console's own origin. The
cookie is ``SameSite=Strict`` and ``HttpOnly`` (and ``Secure`` over TLS), so another site can
neither send it nor read it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass

SESSION_COOKIE = "statevisor_session"
SESSION_SECONDS = 12 * 3600.0
"""How long a session lasts from its login."""
NAME_LIMIT = 64
"""Characters of the name a person gives at login (for the log)."""

LOGIN_FAILURES = 5
"""Failed logins one peer may make within LOGIN_WINDOW seconds; more are refused until it passes."""
LOGIN_WINDOW = 60.0


@dataclass(frozen=True, slots=True)
class Session:
    """A logged-in person (or a program that sent the token)."""

    sid: str
    name: str
    issued: float
    bearer: bool = False

    @property
    def who(self) -> str:
        """How the log names whoever acts: the name given at login and the session's id."""
        if self.bearer:
            return "token (Authorization header)"
        name = self.name or "unnamed"
        return f"{name} (session {self.sid[:8]})"


class Sessions:
    """Sessions signed with a key derived from the daemon's token (see the module's text)."""

    def __init__(self, token: str, *, lifetime: float = SESSION_SECONDS) -> None:
        self._token = token.encode()
        self._key = hmac.new(self._token, b"statevisor web console sessions", hashlib.sha256).digest()
        self.lifetime = lifetime
        self._ended: dict[str, float] = {}  # sid -> when it would have expired (logged out)
        self._failures: dict[str, list[float]] = {}  # peer -> times of its recent failed logins

    def token_matches(self, offered: str) -> bool:
        """Constant time, as the control API compares it."""
        return hmac.compare_digest(offered.strip().encode(), self._token)

    def issue(self, name: str, now: float | None = None) -> tuple[Session, str]:
        """A new session and its cookie's value."""
        now = time.time() if now is None else now
        session = Session(secrets.token_urlsafe(16), _clean_name(name), now)
        body = json.dumps({"sid": session.sid, "name": session.name, "at": round(now, 3)}, separators=(",", ":"))
        payload = base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
        return session, f"{payload}.{self._sign(payload)}"

    def verify(self, cookie: str, now: float | None = None) -> Session | None:
        """The session a cookie holds, if it is signed by this token and current."""
        now = time.time() if now is None else now
        payload, _, signature = cookie.partition(".")
        if not payload or not hmac.compare_digest(signature.encode(), self._sign(payload).encode()):
            return None
        try:
            fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
            session = Session(str(fields["sid"]), _clean_name(str(fields["name"])), float(fields["at"]))
        except (ValueError, KeyError, TypeError, binascii.Error):
            return None
        if not session.issued <= now < session.issued + self.lifetime or session.sid in self._ended:
            return None
        return session

    def bearer(self, header: str) -> Session | None:
        """The session of a request that sent the token as ``Authorization: Bearer``."""
        scheme, _, offered = header.partition(" ")
        if scheme.lower() != "bearer" or not self.token_matches(offered):
            return None
        return Session("bearer", "", time.time(), bearer=True)

    def end(self, session: Session, now: float | None = None) -> None:
        """Log out: the session's cookie is refused from now on."""
        now = time.time() if now is None else now
        self._ended = {sid: until for sid, until in self._ended.items() if until > now}
        self._ended[session.sid] = session.issued + self.lifetime

    def csrf(self, session: Session) -> str:
        """The session's forgery token: forms and htmx requests send it back."""
        if session.bearer:
            return ""
        return hmac.new(self._key, b"csrf:" + session.sid.encode(), hashlib.sha256).hexdigest()[:32]

    def csrf_matches(self, session: Session, offered: str) -> bool:
        if session.bearer:
            return True  # no cookie, nothing ambient: another site cannot make a browser send it
        return hmac.compare_digest(offered.encode(), self.csrf(session).encode())

    # --- failed logins ------------------------------------------------------------------

    def login_allowed(self, peer: str, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        recent = [at for at in self._failures.get(peer, ()) if at > now - LOGIN_WINDOW]
        if recent:
            self._failures[peer] = recent
        else:
            self._failures.pop(peer, None)
        return len(recent) < LOGIN_FAILURES

    def login_failed(self, peer: str, now: float | None = None) -> None:
        now = time.time() if now is None else now
        if len(self._failures) > 10_000:  # many peers failing: forget the oldest rather than grow
            self._failures.pop(next(iter(self._failures)))
        self._failures.setdefault(peer, []).append(now)

    def _sign(self, payload: str) -> str:
        return hmac.new(self._key, payload.encode(), hashlib.sha256).hexdigest()

    def __repr__(self) -> str:
        ended, failing = len(self._ended), len(self._failures)
        return f"<Sessions lifetime={self.lifetime:g}s, {ended} logged out, {failing} peers failing>"


def _clean_name(name: str) -> str:
    """A name given at login as the log may carry it: printable, one line, bounded."""
    return "".join(c for c in name if c.isprintable()).strip()[:NAME_LIMIT]
