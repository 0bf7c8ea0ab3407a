"""The HTML pages: the grid (browse and search), the tag browser, one image, the manual check, sign-in."""
from __future__ import annotations

import hmac
import shlex
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from flask import (
    Blueprint,
    Response,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from werkzeug.exceptions import BadRequest, Forbidden
from werkzeug.wrappers import Response as BaseResponse

from tagger import __version__
from tagger.errors import StoreError, TaggerError
from tagger.engine.explain import LEARNED_PREFIX, seen_box
from tagger.fileio import is_video_name, url_text
from tagger.index import SORTS, GridItem, ImageDetail
from tagger.engine.labels import Tag
from tagger.tags.terms import KeywordRow
from tagger.library.corrections import restore
from tagger.web.api import CHECK_TOP_K, check_uploads, received_uploads
from tagger.web.check import CheckResult
from tagger.web.context import (
    CSRF_FIELD,
    TOKEN_COOKIE,
    cookie_secure,
    correct_keywords,
    csrf_token,
    has_term,
    indexed_file,
    same_site_post,
    store,
    style_nonce,
    token_ok,
    viewer,
)
from tagger.web.files import exif_facts
from tagger.web.grid import tiles
from tagger.web.guard import local_target, session_value
from tagger.web.media import sidecar_text
from tagger.engine.weights import MODELS
from tagger.web.query import TERM_SEPARATORS, Query, default_sort, fetch_page, parse_query, term_for
from tagger.web.vectors import similar_items, writer

blueprint = Blueprint("pages", __name__)

MIN_SCORE_CHOICES = (0.1, 0.25, 0.5, 0.75, 0.9)
TOP_TAGS_SHOWN = 40
TOKEN_COOKIE_SECONDS = 30 * 24 * 3600
SIMILAR_SHOWN = 12
# Cosine similarity of two embeddings from which the image page shows a photo as "similar". On the
# shipped photos and 34 distinct views of them, 95% of the pairs of views of one subject score 0.63 or
# more, and 99% of the pairs of different subjects less than 0.48 (most 0.1 to 0.3): below 0.5 the
# strip would fill with whatever is least unlike.
SIMILAR_MIN_SCORE = 0.5
SORT_NAMES = {"newest": "Newest first", "oldest": "Oldest first", "score": "Most confident", "name": "Name"}


@blueprint.get("/health")
def health() -> tuple[Response, int]:
    """For monitoring: open without the token, and it says nothing about the library."""
    try:
        store()
    except StoreError:
        return jsonify({"status": "unavailable", "reason": "the index cannot be read"}), 503
    return jsonify({"status": "ok", "version": __version__}), 200


@blueprint.get("/")
def grid() -> str:
    current = _query()
    page = fetch_page(store(), current, viewer().config.web.page_size)
    counts = viewer().tag_counts.get(store())
    folder = current.listing.folder
    library = viewer().library
    return render_template(
        "grid.html",
        query=current,
        page=page,
        tiles=tiles(store(), page, current),
        months=viewer().timeline.months(store(), current),
        counts=counts,
        in_folder=store().tagged_count(folder) if folder else counts.images,
        top_tags=counts.tags[:TOP_TAGS_SHOWN],
        crumbs=library.crumbs(folder) if folder else [],
        subfolders=library.subfolders(folder) if folder else [s for root in library.roots for s in library.subfolders(root)],
        roots=library.roots,
        min_scores=MIN_SCORE_CHOICES,
        search_min_score=viewer().config.model.min_score,
        csrf=(CSRF_FIELD, csrf_token()),
    )


@blueprint.get("/tags")
def tags() -> str:
    """The tag browser: the keyword hierarchy, the user's own keywords, learned tags, raw classes."""
    counts = viewer().tag_counts.get(store())
    browser = viewer().tag_counts.browser(store())
    return render_template(
        "tags.html", counts=counts, browser=browser, query=_query(), min_score=viewer().config.model.min_score
    )


@blueprint.get("/image/<fspath:raw>")
def image(raw: str) -> str:
    detail = indexed_file(raw)
    exists = viewer().library.stays_inside(detail.path)
    current = _query()
    previous, following = _neighbours(current, detail.path)
    folder = detail.path.rsplit("/", 1)[0]
    tagged = bool(detail.sha256) and detail.status == "tagged"
    keywords = store().keywords(detail.sha256) if tagged and detail.sha256 else []
    corrections = store().corrections(detail.sha256) if tagged and detail.sha256 else []
    return render_template(
        "image.html",
        detail=detail,
        exists=exists,
        query=current,
        previous=previous,
        following=following,
        crumbs=viewer().library.crumbs(folder),
        exif=exif_facts(viewer().library.readable(detail.path)) if exists else {},
        sidecar=sidecar_text(detail) if exists else None,
        keywords=keywords,
        removed=[c.keyword for c in corrections if c.action == "remove"],
        explained_keywords=_explained_keywords(detail.tags, keywords, detail.sha256),
        seen=_seen(detail),
        video=is_video_name(detail.path),
        frames=_frames(detail),
        csrf=(CSRF_FIELD, csrf_token()),
    )


def _explained_keywords(tags: Sequence[Tag], keywords: Sequence[KeywordRow], sha256: str | None) -> dict[str, str]:
    """The tag term each model keyword's "Why?" explains: its best-scoring class, or its learned tag
    (learned/NAME, found by the keyword a `learned:` rule may have renamed it to; the best one when several merge)."""
    rules = viewer().rules
    terms = {k.keyword: str(max(k.class_ids, key=lambda i: next(t.score for t in tags if t.class_id == i)))
             for k in rules.apply(tags, viewer().config.model.min_score)}
    shown = {k.keyword for k in keywords if k.source == "model"}
    learned = store().vectors.learned_of(sha256) if sha256 and shown else []
    for name, _ in sorted(learned, key=lambda m: m[1]):
        display = rules.learned_display(name)
        if display is not None and display.name in shown:
            terms[display.name] = f"{LEARNED_PREFIX}{name}"
    return terms


def _frames(detail: ImageDetail) -> dict[str, int]:
    """A clip's tag terms (class ids) -> the millisecond of the frame behind each; a learned tag is
    explained on the poster (the top tag's frame). Empty for a still image."""
    frames = {str(t.class_id): int(round(t.frame_s * 1000)) for t in detail.tags if t.frame_s is not None}
    poster = next(iter(frames.values()), None)
    return {**frames, "": poster} if poster is not None else {}


def _seen(detail: ImageDetail) -> str | None:
    """Where the model's centre crop lies in the photo, in percent (left top width height), for
    the image page's heatmap; None when the photo cannot be explained."""
    spec = MODELS.get(detail.model or "")
    if spec is None or not detail.width or not detail.height or detail.status != "tagged":
        return None
    box = seen_box(detail.width, detail.height, spec.preprocess)
    w, h = detail.width, detail.height
    parts = (box.left / w, box.top / h, (box.right - box.left) / w, (box.bottom - box.top) / h)
    return " ".join(f"{100 * p:.3f}" for p in parts)


@blueprint.post("/image/<fspath:raw>/keywords")
def correct(raw: str) -> BaseResponse:
    """The image page's add, remove and restore forms; refused unless posted from this viewer's own
    page. `restore` takes back a removal (the undo): see tagger.library.corrections.restore."""
    if not same_site_post():
        raise Forbidden("this form must be sent from the viewer's own image page (reload the page and try again)")
    detail = indexed_file(raw)
    restored = [w.strip() for w in request.form.getlist("restore") if w.strip()]
    if restored:
        with viewer().write_lock:
            try:
                restore(writer("tagger tag add"), Path(detail.path), restored)
            except StoreError:
                raise
            except TaggerError as exc:
                raise BadRequest(str(exc)) from None
        return redirect(url_for(".image", raw=raw), code=303)
    add = TERM_SEPARATORS.split(request.form.get("add", ""))
    correct_keywords(detail.path, add, request.form.getlist("remove"))
    return redirect(url_for(".image", raw=raw), code=303)


def _neighbours(current: Query, path: str) -> tuple[GridItem | None, GridItem | None]:
    """The images before and after this one in the listing or search it was opened from (for ← and →)."""
    if current.problems:
        return None, None
    if current.search is not None:
        return store().search_neighbours(current.search, path)
    here = store().browse(current.listing, 1, only=path)
    if not here:
        return None, None
    before = store().browse(current.listing, 1, here[0].key, backwards=True)
    after = store().browse(current.listing, 1, here[0].key)
    return (before[0] if before else None), (after[0] if after else None)


@blueprint.route("/check", methods=["GET", "POST"])
def check() -> str | tuple[str, int]:
    """Upload images and see their top 3; the page's script does it in place, this is the no-script way."""
    results: list[CheckResult] = check_uploads(received_uploads(), CHECK_TOP_K) if request.method == "POST" else []
    status = 422 if results and all(r.error for r in results) else 200
    return render_template("check.html", results=results, query=_query()), status


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> BaseResponse | tuple[str, int] | Response:
    expected = viewer().config.web.token
    if expected is None:
        return redirect(url_for(".grid"))
    target = local_target(request.values.get("next", "")) or url_for(".grid")
    if request.method == "POST":
        client, throttle = request.remote_addr or "", viewer().throttle
        wait = throttle.retry_after(client)
        if wait:
            refused = make_response(sign_in_page(f"Too many wrong tokens: try again in {wait} seconds.", target), 429)
            refused.headers["Retry-After"] = str(wait)
            return refused
        given = request.form.get("token", "").strip()
        if hmac.compare_digest(given.encode(errors="replace"), expected.encode()):
            throttle.succeeded(client)
            response = redirect(target, code=303)
            response.set_cookie(
                TOKEN_COOKIE, session_value(expected), max_age=TOKEN_COOKIE_SECONDS, httponly=True,
                samesite="Strict", path="/", secure=cookie_secure(),
            )
            return response
        throttle.failed(client, given)
        return sign_in_page("That token is not right.", target), 401
    return sign_in_page(None, target), (200 if token_ok() else 401)


@blueprint.post("/logout")
def logout() -> BaseResponse:
    response = redirect(url_for(".login"), code=303)
    response.delete_cookie(TOKEN_COOKIE, path="/")
    return response


@blueprint.app_template_global()
def signs_in() -> bool:
    """The viewer asks for its token: the header offers to sign out."""
    return viewer().config.web.token is not None


@blueprint.get("/favicon.ico")
def favicon() -> Response:
    """Browsers ask for it on every site, before reading the page's own icon link."""
    return send_from_directory(blueprint.root_path + "/static", "favicon.svg", mimetype="image/svg+xml", max_age=86400)


def sign_in_page(problem: str | None, target: str) -> str:
    return render_template("login.html", problem=problem, target=target, nonce=style_nonce())


def error_page(code: int, name: str, message: str) -> Response:
    """An error as a page. Its way out is the library, unless the library is what failed: then
    a link to try the same page again (a link back to it would lead to the same error)."""
    here = quote(request.path) + (f"?{request.query_string.decode('latin-1')}" if request.query_string else "")
    if code == 401:
        target = (local_target(here) if request.method == "GET" else None) or url_for("pages.grid")
        return make_response(sign_in_page(None, target), 401)
    at_library = request.method == "GET" and request.path == url_for("pages.grid")
    retry = (local_target(here) or url_for("pages.grid")) if at_library else None
    return make_response(render_template("error.html", code=code, name=name, message=message, retry=retry), code)


def _query() -> Query:
    return parse_query(request.args, viewer().library, viewer().config.model.min_score, viewer().rules, has_term)


@blueprint.app_template_global()
def grid_url(current: Query, **changes: Any) -> str:
    return url_for("pages.grid", **current.args(**changes))


@blueprint.app_template_global()
def image_url(path: str, current: Query | None = None) -> str:
    return url_for("pages.image", raw=path.lstrip("/"), **(current.args() if current else {}))


@blueprint.app_template_global()
def keyword_url(name: str) -> str:
    """The grid's search for a keyword, a category or a learned tag (a tag: term: its categories and
    aliases find it too)."""
    return url_for("pages.grid", q=f"tag:{shlex.quote(name)}")


@blueprint.app_template_global()
def similar_shown(sha256: str | None) -> list[dict[str, object]]:
    """The image page's "similar" strip: at most SIMILAR_SHOWN, each content once, none below
    SIMILAR_MIN_SCORE."""
    return [item for item in similar_items(sha256, SIMILAR_SHOWN)
            if isinstance(score := item["score"], float) and score >= SIMILAR_MIN_SCORE]


@blueprint.app_template_filter()
def plural(count: int, one: str, many: str | None = None) -> str:
    """`3 | plural("example")` -> "3 examples"; 1 example."""
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


@blueprint.app_template_global()
def tag_url(tag: Tag) -> str:
    """A raw guess of the model links to the images with the same guess (a class: search)."""
    return class_url(tag.class_id)


@blueprint.app_template_global()
def class_url(class_id: int) -> str:
    return url_for("pages.grid", q=f"class:{shlex.quote(term_for(class_id))}")


@blueprint.app_template_global()
def sort_names(current: Query) -> dict[str, str]:
    """The sort menu; "Most confident" reads "Best match" while searching."""
    names = dict(SORT_NAMES)
    if current.searching:
        names["score"] = "Best match"
    return {key: names[key] for key in SORTS}


@blueprint.app_template_global()
def as_query(terms: Sequence[str]) -> str:
    """Tag terms written in the query language, for the search box."""
    return " ".join(shlex.quote(term) for term in terms)


blueprint.add_app_template_global(default_sort, "default_sort")
blueprint.add_app_template_filter(url_text, "url_text")
blueprint.add_app_template_global(term_for, "term_for")
blueprint.add_app_template_global(is_video_name, "is_video")


@blueprint.app_template_filter()
def filesize(size: int) -> str:
    value = float(size)
    for unit in ("bytes", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "bytes" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


@blueprint.app_template_filter()
def local_time(mtime_ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime_ns / 1e9))


@blueprint.app_template_filter()
def clock(seconds: float | None) -> str:
    """A moment or a length of a clip as a player shows it: 0:07, 1:02:03."""
    whole = int(seconds or 0)
    hours, rest = divmod(whole, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


@blueprint.app_template_filter()
def percent(score: float) -> str:
    return f"{score * 100:.1f}%" if score < 0.995 else f"{score * 100:.0f}%"
