"""The web viewer and JSON API: browse, search and check one image, over the index read-only.

`create_app(config)` builds the Flask app and `tagger serve` runs it under waitress.
Each serving thread reads the index through its own read-only connection (SQLite
connections are not shared across threads); views call Index functions, never SQL.
"""
from __future__ import annotations

import io
import logging
import sqlite3
from typing import IO, TYPE_CHECKING, Any

from flask import Flask, Request, Response, g, request
from flask.json.provider import DefaultJSONProvider
from markupsafe import Markup
from werkzeug.exceptions import HTTPException, InternalServerError, ServiceUnavailable, Unauthorized

from tagger.config import Config
from tagger.errors import StoreError
from tagger.fileio import shown
from tagger.index import store_failure
from tagger.web import api, bulk, duplicates, media, pages, vectors
from tagger.web.context import (
    BODY_TOO_LARGE,
    CSRF_COOKIE,
    Viewer,
    check_host,
    cookie_secure,
    require_token,
    upload_too_large,
    viewer,
    wants_json,
)
from tagger.web.files import FsPathConverter

if TYPE_CHECKING:
    from tagger.engine.classify import Classifier

log = logging.getLogger(__name__)

OPEN_ENDPOINTS = frozenset({"pages.health", "pages.login", "pages.favicon"})
FORM_FIELDS = 8  # form parts besides the files of a manual check (csrf, top_k, ...)


class _InMemoryRequest(Request):
    """Uploads stay in memory (bounded by MAX_CONTENT_LENGTH): a manual check writes nothing
    anywhere, not even a temporary file."""

    def _get_file_stream(
        self, total_content_length: int | None, content_type: str | None, filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


def create_app(config: Config, classifier: Classifier | None = None) -> Flask:
    """The viewer of `config`'s index; `classifier` is loaded on the first manual check unless given."""
    app = Flask(__name__)
    app.request_class = _InMemoryRequest
    app.url_map.merge_slashes = False  # "//etc/passwd" is refused as it is, not redirected
    upload_bytes = config.web.max_upload_mb * 1024 * 1024
    app.config.update(
        MAX_CONTENT_LENGTH=upload_bytes,
        MAX_FORM_MEMORY_SIZE=upload_bytes,
        MAX_FORM_PARTS=config.web.max_upload_files + FORM_FIELDS,
    )
    app.json.ensure_ascii = False  # type: ignore[attr-defined]
    app.json.sort_keys = False  # type: ignore[attr-defined]
    app.json = _NamesJSONProvider(app)
    app.jinja_env.finalize = _readable
    app.url_map.converters["fspath"] = FsPathConverter
    app.extensions["tagger"] = Viewer(config, classifier)
    app.register_blueprint(pages.blueprint)
    app.register_blueprint(media.blueprint)
    app.register_blueprint(api.blueprint, url_prefix="/api")
    app.register_blueprint(vectors.blueprint)
    app.register_blueprint(duplicates.blueprint)
    app.register_blueprint(bulk.blueprint)
    app.before_request(_refuse_unread_body)
    app.before_request(check_host)
    app.before_request(_require_token)
    app.after_request(_security_headers)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(StoreError, _store_error)
    app.register_error_handler(sqlite3.Error, _index_error)
    app.register_error_handler(Exception, _unexpected_error)
    return app


class _NamesJSONProvider(DefaultJSONProvider):
    """UTF-8 JSON, keys in the order given; a name's undecodable bytes as \\udcXX escapes
    (tagger.fileio.json_text), where the default provider would fail to encode the response."""

    ensure_ascii = False
    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return super().dumps(obj, **kwargs).encode("utf-8", "backslashreplace").decode("utf-8")

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        """A body nested a few thousand brackets deep is malformed JSON (a 400), not a RecursionError (a 500)."""
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("JSON nested too deeply") from None


def _readable(value: Any) -> Any:
    """Every value a template prints: a name with undecodable bytes shows them as \\xff."""
    if isinstance(value, str) and not isinstance(value, Markup) and not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return shown(value)
    return value


def _refuse_unread_body() -> None:
    """waitress stopped reading a body over its limit and asks the app to answer (tagger.web.server)."""
    if request.environ.get(BODY_TOO_LARGE):
        raise upload_too_large()


def _require_token() -> None:
    if request.endpoint not in OPEN_ENDPOINTS:
        require_token()


def security_headers(style_nonce: str | None = None) -> dict[str, str]:
    """Every answer's headers, the server's own error answers included (tagger.web.server)."""
    style = f"'self' 'nonce-{style_nonce}'" if style_nonce else "'self'"
    return {
        "Content-Security-Policy": (
            f"default-src 'self'; img-src 'self' blob: data:; style-src {style}; script-src 'self'; "
            "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",  # the image page knows its grid (Back); other sites learn nothing
        "X-Frame-Options": "DENY",
    }


def _security_headers(response: Response) -> Response:
    response.headers.update(security_headers(g.get("style_nonce")))
    response.headers.setdefault("Cache-Control", _cache_control(response))
    if "csrf" in g and request.cookies.get(CSRF_COOKIE) != g.csrf:
        response.set_cookie(
            CSRF_COOKIE, g.csrf, httponly=True, samesite="Strict", path="/", secure=cookie_secure()
        )
    return response


def _cache_control(response: Response) -> str:
    """Pages may be kept for Back (the browser's back-forward cache needs them storable) but are
    asked for again before reuse; the API's answers and the sign-in exchange are never stored."""
    if response.mimetype == "text/html" and response.status_code != 401 and request.endpoint != "pages.login":
        return "private, no-cache"
    return "no-store"


def _http_error(exc: HTTPException) -> Response:
    code = exc.code or 500
    message = exc.description or exc.name
    if wants_json():
        response = api.error_response(code, message)
    else:
        try:
            response = pages.error_page(code, exc.name, message)
        except Exception:  # noqa: BLE001 - an error page must not fail into a traceback
            log.exception("the error page for %s failed", request.path)
            response = Response(f"{code} {exc.name}\n", status=code, mimetype="text/plain")
    for name, value in exc.get_headers():  # Allow (405), Retry-After (429)
        if name.lower() != "content-type":
            response.headers[name] = value
    if isinstance(exc, Unauthorized):
        response.headers["WWW-Authenticate"] = 'Bearer realm="tagger"'
    return response


def _store_error(exc: StoreError) -> Response:
    log.error("index unavailable: %s", exc)
    return _http_error(ServiceUnavailable(f"the index cannot be read: {exc}"))


def _index_error(exc: sqlite3.Error) -> Response:
    """An SQLite error met while reading (a malformed page): the same one line as the CLI's, as a 503."""
    return _store_error(store_failure(viewer().config.index, exc))


def _unexpected_error(exc: Exception) -> Response:
    """The traceback goes to the log; the client only learns that something went wrong."""
    log.exception("%s %s failed", request.method, request.path)
    return _http_error(InternalServerError("something went wrong on the server; the details are in its log"))
