"""The browser's own files (scripts, styles, vendored libraries) under content-versioned URLs, gzip-compressed.

A fresh browser's first page load was dominated by the plotting library
(4.8 MB, sent uncompressed, re-validated hourly). Here each file's URL
carries a digest of its bytes (``/assets/<digest>/<name>``), so it can be
cached for a year as ``immutable``: a new version of a file is a new URL,
never a stale cache. Each file is gzipped once, on its first request, and
kept in memory (the whole set is under 2 MB).
"""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
import threading
from dataclasses import dataclass
from pathlib import Path

IMMUTABLE = "public, max-age=31536000, immutable"
_TYPES = {".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8",
          ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8"}


@dataclass(frozen=True)
class Asset:
    """One file's bytes as served: its digest (the URL's version) and content type."""

    body: bytes
    digest: str
    mimetype: str


class Assets:
    """Every file under ``root``, read once at start (they ship with the package and do not change while it runs)."""

    def __init__(self, root: Path) -> None:
        self._files: dict[str, Asset] = {}
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                body = path.read_bytes()
                name = path.relative_to(root).as_posix()
                mimetype = _TYPES.get(path.suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
                self._files[name] = Asset(body, hashlib.sha256(body).hexdigest()[:16], mimetype)
        self._gzipped: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def url(self, name: str) -> str:
        """The versioned URL of ``name`` (a KeyError for a file that does not exist: a template bug, found at once)."""
        return f"/assets/{self._files[name].digest}/{name}"

    def get(self, digest: str, name: str) -> Asset | None:
        """The file, if ``digest`` is its current version (an old page's URL after an upgrade gets a 404)."""
        asset = self._files.get(name)
        return asset if asset is not None and asset.digest == digest else None

    def gzipped(self, name: str) -> bytes:
        """The file gzipped (level 9, once: it is served many times, compressed once)."""
        with self._lock:
            if name not in self._gzipped:
                self._gzipped[name] = gzip.compress(self._files[name].body, compresslevel=9, mtime=0)
            return self._gzipped[name]


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header allows gzip (``gzip;q=0`` refuses it)."""
    for part in accept_encoding.split(","):
        token, _, params = part.strip().partition(";")
        if token.strip().lower() in ("gzip", "*"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False
