"""The console's static files, every one shipped inside the package: nothing is fetched at run time.

Its own stylesheet and script are in ``static/``; the third-party ones (htmx, its SSE extension,
Mermaid) are in ``static/vendor/``, unmodified files of pinned npm releases, named with their
versions and sha256 in ``static/vendor/MANIFEST.json`` (licenses in ``LICENSES.txt`` beside it).
They are checked against the manifest when the console loads them. Mermaid's bundle is shipped
gzip-compressed (a sixth of its size) and served as it is to browsers that accept gzip (every
one does), decompressed once for a client that does not.

Each file is served under a URL that carries its digest (``/static/htmx.min.js?v=...``), so a
browser may keep it for good: an upgrade changes the URL.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from .._errors import ConfigurationError

STATIC = Path(__file__).resolve().parent / "static"
VENDOR = STATIC / "vendor"
MANIFEST = VENDOR / "MANIFEST.json"

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}


@dataclass(slots=True)
class Asset:
    """One static file as served: ``body`` as shipped (gzip-compressed when ``compressed``)."""

    name: str
    body: bytes
    content_type: str
    compressed: bool
    digest: str  # the first 16 hex digits of the body's sha256: its URL's version and its ETag
    _plain: bytes | None = field(default=None, repr=False)

    def plain(self) -> bytes:
        """The file uncompressed (made once, for a client that does not accept gzip)."""
        if not self.compressed:
            return self.body
        if self._plain is None:
            self._plain = gzip.decompress(self.body)
        return self._plain


def vendor_manifest() -> dict[str, dict[str, str]]:
    """The pinned third-party files: shipped name -> package, version, file, license, sha256."""
    loaded: dict[str, dict[str, str]] = json.loads(MANIFEST.read_text(encoding="utf-8"))
    return loaded


class Assets:
    """Every static file the console serves, read once (about 1.8 MB, Mermaid's most of it)."""

    def __init__(self) -> None:
        self._assets: dict[str, Asset] = {}
        for path in sorted(STATIC.iterdir()):
            if path.is_file():
                self._add(path.name, path.read_bytes(), compressed=False)
        for name, entry in vendor_manifest().items():
            body = (VENDOR / name).read_bytes()
            if hashlib.sha256(body).hexdigest() != entry["shipped_sha256"]:
                raise ConfigurationError(
                    f"the web console's {name} does not match its manifest ({MANIFEST}): the installed package "
                    "was changed; reinstall statevisor"
                )
            compressed = entry.get("compressed") == "gzip"
            self._add(name.removesuffix(".gz") if compressed else name, body, compressed=compressed)
        self._add("LICENSES.txt", (VENDOR / "LICENSES.txt").read_bytes(), compressed=False)

    def _add(self, name: str, body: bytes, *, compressed: bool) -> None:
        content_type = _TYPES.get(Path(name).suffix, "application/octet-stream")
        self._assets[name] = Asset(name, body, content_type, compressed, hashlib.sha256(body).hexdigest()[:16])

    def get(self, name: str) -> Asset | None:
        return self._assets.get(name)

    def url(self, name: str) -> str:
        """Where the page loads ``name`` from, its digest in the URL."""
        return f"/static/{name}?v={self._assets[name].digest}"

    def __repr__(self) -> str:
        size = sum(len(a.body) for a in self._assets.values())
        return f"<Assets {len(self._assets)} files, {size} bytes>"
