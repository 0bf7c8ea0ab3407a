"""tagger: an offline image auto-tagger (watch, decode, classify, sidecar + SQLite index)."""
from __future__ import annotations

__version__ = "0.1.0"
