"""Exit 0 when URL answers within SECONDS, 1 otherwise: the installer's quick network check.

pip itself would retry an unreachable index for minutes; this decides in seconds.
Usage: python scripts/reachable.py URL SECONDS
"""
from __future__ import annotations

import sys
import urllib.error
import urllib.request


def main() -> int:
    url, seconds = sys.argv[1], float(sys.argv[2])
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=seconds):
            return 0
    except (urllib.error.URLError, OSError, ValueError):
        return 1


if __name__ == "__main__":
    sys.exit(main())
