"""What the viewer checks about a request before a view runs, in one place.

Which Host names it answers to (DNS rebinding), where it may send a browser after
sign-in (never to another site), what the session cookie holds (a value derived from
the token, never the token), and how fast one client may guess the token: a back-off
answered with 429 by the front door, so no serving thread ever sleeps on a guess.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from urllib.parse import quote, urlsplit

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARD_ADDRESSES = frozenset({"", "0.0.0.0", "::"})
MAX_TARGET = 2048
SESSION_CONTEXT = b"tagger session cookie v1"
# Sign-in back-off: a few free mistakes, then each new wrong guess doubles the wait, up to a cap.
FREE_GUESSES = 5
LONGEST_WAIT = 900.0
REMEMBERED_CLIENTS = 4096
REMEMBERED_GUESSES = 8


def host_name(header: str) -> str:
    """The name part of a Host header: no port, no IPv6 brackets, lower case, no final dot."""
    header = header.strip().lower()
    if header.startswith("["):
        name = header[1 : header.find("]")] if "]" in header else header[1:]
    else:
        name = header.rsplit(":", 1)[0] if header.count(":") == 1 else header
    return name.rstrip(".")


def allowed_hosts(bind: str, configured: Iterable[str]) -> frozenset[str]:
    """web.allowed_hosts, or by default the loopback names and the address the viewer is bound to."""
    names = {_bare(name) for name in configured}
    if not names:
        names = set(LOOPBACK_NAMES)
        if _bare(bind) not in WILDCARD_ADDRESSES:
            names.add(_bare(bind))
    return frozenset(names)


def _bare(name: str) -> str:
    """A configured host name or address as host_name() gives it: `[::1]` is `::1`."""
    return name.strip().lower().strip("[]").rstrip(".")


def local_target(raw: str) -> str | None:
    """`raw` when it is a path on this viewer, else None.

    Browsers drop TAB and newlines from a URL and read a backslash as a slash, so
    `/<TAB>/evil.example` and `/\\evil.example` lead to another site: refused, with any
    other control character, a scheme or a host.
    """
    if not raw or len(raw) > MAX_TARGET or not raw.startswith("/") or raw.startswith("//") or "\\" in raw:
        return None
    if any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in raw):
        return None
    parts = urlsplit(raw)
    if parts.scheme or parts.netloc:
        return None
    return quote(raw, safe="/?&=%#:@!$'()*+,;~-._[]")


def session_value(token: str) -> str:
    """What the sign-in cookie holds: a stolen cookie is no use as a Bearer token, and the
    token never sits in the browser's cookie store."""
    return hmac.new(token.encode(), SESSION_CONTEXT, hashlib.sha256).hexdigest()


def client_key(address: str) -> str:
    """Guesses are counted per IPv4 address, and per /64 for IPv6 (one host holds a whole /64)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


@dataclass
class _Guesses:
    failures: int = 0
    last: float = 0.0
    seen: list[str] = field(default_factory=list)  # digests of the latest wrong guesses


class SignInThrottle:
    """Per-client back-off for wrong tokens (Bearer, cookie or the sign-in form alike).

    A guess is counted once: a browser that keeps sending an old cookie with every thumbnail
    makes one mistake, not forty, while a guessing script, which must vary its guess, pays
    for each. Bounded: the least recently seen clients are forgotten first.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._clients: OrderedDict[str, _Guesses] = OrderedDict()
        self._lock = threading.Lock()

    def retry_after(self, address: str) -> int:
        """Seconds this client must wait before its next guess is looked at (0: go ahead)."""
        with self._lock:
            guesses = self._clients.get(client_key(address))
            if guesses is None or guesses.failures < FREE_GUESSES:
                return 0
            wait = min(2.0 ** (guesses.failures - FREE_GUESSES), LONGEST_WAIT)
            return max(0, math.ceil(guesses.last + wait - self._clock()))

    def failed(self, address: str, guess: str) -> None:
        digest = hashlib.sha256(guess.encode(errors="replace")).hexdigest()
        key = client_key(address)
        with self._lock:
            guesses = self._clients.pop(key, None) or _Guesses()
            self._clients[key] = guesses
            while len(self._clients) > REMEMBERED_CLIENTS:
                self._clients.popitem(last=False)
            if digest in guesses.seen:
                return
            guesses.seen = [*guesses.seen, digest][-REMEMBERED_GUESSES:]
            guesses.failures += 1
            guesses.last = self._clock()

    def succeeded(self, address: str) -> None:
        with self._lock:
            self._clients.pop(client_key(address), None)
