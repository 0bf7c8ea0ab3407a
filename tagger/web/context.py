"""What every request shares: this thread's read-only connection to the index, and the
viewer's one write connection (as in datasette: read-only readers, one writer behind a lock)."""
from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from flask import current_app, g, request
from werkzeug.exceptions import (
    BadRequest,
    Forbidden,
    NotFound,
    RequestEntityTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)

from tagger.config import Config
from tagger.library.corrections import correct
from tagger.errors import DamagedIndex, DiskError, StoreBusy, StoreError, TaggerError
from tagger.index import LATEST, ImageDetail, Index
from tagger.index.identity import refuse_if_damaged
from tagger.library.keywording import Retagger
from tagger.library.thumbcache import thumbnail_folder
from tagger.tags.terms import Action, KeywordRow
from tagger.web.check import Checker
from tagger.web.files import Library
from tagger.web.guard import SignInThrottle, allowed_hosts, host_name, session_value
from tagger.web.grid import Timeline
from tagger.web.tagcounts import TagCounts
from tagger.web.thumbs import Thumbnails

if TYPE_CHECKING:
    from tagger.engine.classify import Classifier

TOKEN_COOKIE = "tagger_token"
CSRF_COOKIE = "tagger_csrf"
CSRF_FIELD = "csrf"
BODY_TOO_LARGE = "tagger.body_too_large"  # set in the WSGI environ by tagger.web.server
BUSY_RETRY_AFTER = 5  # seconds a correction refused by a busy index is tried again after
MMAP_BYTES = 1 << 30  # of the index read through memory mapping, per connection (address space, not RAM)


class Viewer:
    """The config, the folders the viewer may serve, its caches, the model, and one read-only
    connection to the index per serving thread (kept: SQLite's page cache and memory map stay warm)."""

    def __init__(self, config: Config, classifier: Classifier | None) -> None:
        self.config = config
        self.library = Library(config.folders)
        self.thumbnails = Thumbnails(thumbnail_folder(config.index), config.decode.max_pixels, config.decode.max_file_bytes)
        self.tag_counts = TagCounts(config.index, config.model.min_score)
        self.timeline = Timeline(config.index)
        self.checker = Checker(config, classifier)
        self.rules = config.rule_set
        self.hosts = allowed_hosts(config.web.host, config.web.allowed_hosts)
        self.throttle = SignInThrottle()
        self._local = threading.local()
        self._opened: list[Index] = []
        self._lock = threading.Lock()
        self._writer: Retagger | None = None
        self.write_lock = threading.Lock()  # one correction at a time, through one connection

    def store(self) -> Index:
        """This thread's connection; an index that still needs a migration is refused with a hint."""
        refuse_if_damaged(self.config.index)  # noted by any command since this thread's connection opened
        opened: Index | None = getattr(self._local, "store", None)
        if opened is None:
            opened = Index.open(self.config.index, readonly=True)
            version = opened.schema_version()
            if version < LATEST:
                opened.close()
                raise StoreError(
                    f"index schema {version} predates this viewer ({LATEST}): "
                    "restart `tagger serve`, or run `tagger scan` once, to upgrade it"
                )
            opened.map_memory(MMAP_BYTES)
            self._local.store = opened
            with self._lock:
                self._opened.append(opened)
        return opened

    def writer(self) -> Retagger:
        """The viewer's one writable connection, opened (and the schema checked) at the first
        correction and kept; call holding `write_lock`."""
        if self._writer is None:
            self._writer = Retagger(self.config, Index.open(self.config.index))
        return self._writer

    def close(self) -> None:
        """Close every thread's connection and the writer (the server has stopped)."""
        with self._lock:
            for opened in self._opened:
                opened.close()
            self._opened.clear()
        self._local = threading.local()
        with self.write_lock:
            if self._writer is not None:
                self._writer.index.close()
                self._writer = None


def viewer() -> Viewer:
    state: Viewer = current_app.extensions["tagger"]
    return state


def store() -> Index:
    return viewer().store()


def indexed_file(raw: str) -> ImageDetail:
    """The index's record of the file a URL names (refused outside the folders, 404 if not indexed)."""
    detail = store().image_detail(viewer().library.url_path(raw))
    if detail is None:
        raise NotFound("that file is not in the index")
    return detail


def has_term(term: str) -> bool:
    """Some stored keyword is found by this word (the index is only opened when a query needs it)."""
    return store().has_term(term)


def index_busy() -> ServiceUnavailable:
    """503 with Retry-After: another program (a `tagger retag`, sqlite3) holds the index's write lock
    for longer than SQLite waits; the correction was not made, and can be tried again."""
    return ServiceUnavailable(
        "the index is busy (another program holds its write lock); try again in a moment",
        retry_after=BUSY_RETRY_AFTER,
    )


def correct_keywords(path: str, add: Sequence[str], remove: Sequence[str]) -> list[KeywordRow]:
    """The viewer's one write: a user's corrections, through the viewer's write connection;
    the sidecars (JSON, XMP) of this image's content are rewritten, as by `tagger tag`."""
    add, remove = [w.strip() for w in add if w.strip()], [w.strip() for w in remove if w.strip()]
    if not add and not remove:
        raise BadRequest("give a keyword to add or to remove")
    changes: tuple[tuple[list[str], Action], ...] = ((add, "add"), (remove, "remove"))
    with viewer().write_lock:
        try:
            retagger = viewer().writer()
        except StoreBusy:
            raise index_busy() from None
        except (DiskError, DamagedIndex) as exc:
            raise ServiceUnavailable(f"keywords cannot be corrected now: {exc}") from None
        except StoreError as exc:
            raise ServiceUnavailable(
                f"keywords cannot be corrected from this viewer: {exc} (as tagger-web.service it reads the index "
                "only; use `tagger tag add|remove`)"
            ) from None
        try:
            sha256 = ""
            for words, action in changes:
                if words:
                    sha256 = correct(retagger, Path(path), words, action)
        except StoreBusy:
            raise index_busy() from None
        except StoreError:
            raise
        except TaggerError as exc:
            raise BadRequest(str(exc)) from None
        return retagger.index.keywords(sha256)


def csrf_token() -> str:
    """This browser's form token: a random value kept in a SameSite=Strict cookie and echoed by
    every form (double submit). Another site can neither read it nor make the browser send it."""
    if "csrf" not in g:
        g.csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
    token: str = g.csrf
    return token


def same_site_post() -> bool:
    """A form POST from this viewer's own pages: its form token matches the cookie, and no
    foreign Origin is announced."""
    if cross_origin():
        return False
    cookie = request.cookies.get(CSRF_COOKIE, "")
    given = request.form.get(CSRF_FIELD, "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), given.encode())


def cross_origin() -> bool:
    """The browser says this request comes from another site's page."""
    origin = request.headers.get("Origin")
    return origin not in (None, "null") and urlsplit(origin).netloc != request.host


def refuse_foreign_uploads() -> None:
    """Uploads cost CPU: taken from this viewer's own pages and from scripts, not from another
    site's page (which cannot send an Authorization header without a CORS preflight)."""
    if request.headers.get("Authorization", "").startswith("Bearer "):
        return
    if cross_origin() or request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
        raise Forbidden("uploads are taken from this viewer's own pages and from scripts, not from another site")


def upload_too_large() -> RequestEntityTooLarge:
    """One refusal for every over-size manual check, whoever noticed it (waitress or the form parser)."""
    web = viewer().config.web
    return RequestEntityTooLarge(
        f"the upload is over this viewer's limits: {web.max_upload_mb} MB (web.max_upload_mb) and "
        f"{web.max_upload_files} files (web.max_upload_files) per request; send fewer or smaller files"
    )


def check_host() -> None:
    """Only the configured names are answered (DNS rebinding: another site's name pointed here)."""
    if host_name(request.host) not in viewer().hosts:
        raise BadRequest(
            f"this viewer does not answer to the host name {host_name(request.host)[:100]!r} "
            "(add it to web.allowed_hosts in its config)"
        )


def _credential(expected: str) -> tuple[str, str] | None:
    """(offered, wanted) for the credential this request carries: a Bearer token is compared with
    the token, the sign-in cookie with the value derived from it; None when it carries neither."""
    header = request.headers.get("Authorization", "")
    if header.startswith("Bearer "):
        return header[len("Bearer ") :], expected
    cookie = request.cookies.get(TOKEN_COOKIE)
    return None if cookie is None else (cookie, session_value(expected))


def _same(offered: str, wanted: str) -> bool:
    return hmac.compare_digest(offered.encode(errors="replace"), wanted.encode())


def token_ok() -> bool:
    """No token configured, or the request carries it (Bearer header, or the sign-in cookie)."""
    expected = viewer().config.web.token
    if expected is None:
        return True
    credential = _credential(expected)
    return credential is not None and _same(*credential)


def require_token() -> None:
    """401 without the token; a wrong one counts as a guess, and a client guessing too fast gets
    429 with Retry-After, without its guess being looked at and without a thread waiting."""
    expected = viewer().config.web.token
    if expected is None:
        return
    credential = _credential(expected)
    if credential is None:
        raise Unauthorized("this viewer needs its access token (web.token in its config)")
    client = request.remote_addr or ""
    throttle = viewer().throttle
    wait = throttle.retry_after(client)
    if wait:
        raise TooManyRequests(f"too many wrong tokens from this address: try again in {wait} s", retry_after=wait)
    if _same(*credential):
        throttle.succeeded(client)
        return
    throttle.failed(client, credential[0])
    raise Unauthorized("this viewer needs its access token (web.token in its config)")


def cookie_secure() -> bool:
    """web.secure_cookie: auto marks cookies Secure when this request came over HTTPS."""
    setting = viewer().config.web.secure_cookie
    return setting == "always" or (setting == "auto" and request.is_secure)


def style_nonce() -> str:
    """Pages shown before sign-in carry their style inline: /static needs the token too."""
    if "style_nonce" not in g:
        g.style_nonce = secrets.token_urlsafe(16)
    nonce: str = g.style_nonce
    return nonce


def wants_json() -> bool:
    """The API, and a page's script that asks for JSON (the grid's bulk edit): errors as JSON."""
    if request.path == "/api" or request.path.startswith(("/api/", "/health")):
        return True
    return request.accept_mimetypes.best == "application/json"
