"""The JSON API: images by query (with a `next` cursor), one image, tags with counts, classify.

Errors are JSON too: {"error": "what went wrong", "status": 404}.
"""
from __future__ import annotations

from typing import Literal, get_args

from PIL import Image
from flask import Blueprint, Response, jsonify, request, url_for
from werkzeug.exceptions import BadRequest, Forbidden, RequestEntityTooLarge, ServiceUnavailable, UnprocessableEntity

from tagger.engine import explain as cam
from tagger.engine.decode import declared_pixels
from tagger.errors import DecodeError, WeightsError
from tagger.engine.video import frame_at
from tagger.fileio import is_video_name, open_regular, read_limited, shown, utc_text
from tagger.index import GridItem, ImageDetail
from tagger.inputs import InputError, whole_number
from tagger.web.check import CheckResult, ModelBusy
from tagger.web.context import (
    correct_keywords,
    cross_origin,
    has_term,
    indexed_file,
    refuse_foreign_uploads,
    store,
    upload_too_large,
    viewer,
)
from tagger.web.query import fetch_page, parse_query

blueprint = Blueprint("api", __name__)

MAX_LIMIT = 500
CHECK_TOP_K = 3
MAX_TAG_CHARS = 200
ExplainFormat = Literal["png", "layer", "json"]


def error_response(code: int, message: str) -> Response:
    response = jsonify({"error": message, "status": code})
    response.status_code = code
    return response


@blueprint.get("/images")
def images() -> Response:
    """?q=QUERY&tag=..&min_score=..&folder=..&sort=newest|oldest|score|name&after=CURSOR&limit=N.

    One vocabulary with the CLI: q is the query language, each tag a tag: term of it (best
    matches first); without either, or with class: terms alone, the library is listed in `sort`
    order. min_score and folder narrow either."""
    config = viewer().config
    query = parse_query(request.args, viewer().library, config.model.min_score, viewer().rules, has_term)
    if query.problems:
        raise BadRequest("; ".join(query.problems))
    limit = int_arg("limit", config.web.page_size, 1, MAX_LIMIT)
    page = fetch_page(store(), query, limit)
    next_url = url_for(".images", **query.args(after=page.next, limit=limit)) if page.next else None
    return jsonify({"images": [item_json(i) for i in page.items], "next": page.next, "next_url": next_url})


@blueprint.get("/images/<fspath:raw>")
def image(raw: str) -> Response:
    detail = indexed_file(raw)
    return jsonify(detail_json(detail, viewer().library.stays_inside(detail.path)))


@blueprint.post("/images/<fspath:raw>/keywords")
def keywords(raw: str) -> Response:
    """JSON {"add": [...], "remove": [...]}: the user's corrections; the image's keywords come back.

    Only JSON bodies are taken: another site cannot send one without a CORS preflight, which
    this viewer never grants.
    """
    if not request.is_json or cross_origin():
        raise Forbidden('send JSON, e.g. {"add": ["Chelsea"], "remove": ["lynx"]}, from a script or this viewer')
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k, []), list) and all(isinstance(w, str) for w in body.get(k, [])) for k in ("add", "remove")
    ):
        raise BadRequest('the body must be {"add": [keywords], "remove": [keywords]}')
    detail = indexed_file(raw)
    rows = correct_keywords(detail.path, body.get("add", []), body.get("remove", []))
    return jsonify({"path": detail.path, "keywords": [k.as_dict() for k in rows]})


def _frame_time(detail: ImageDetail, term: str | None) -> float:
    """The moment of a clip to explain: ?ms=MILLISECONDS, else the frame of the tag named (or of the top tag)."""
    given = request.args.get("ms")
    if given is not None:
        try:
            return float(whole_number("ms", given, 0, 10**10)) / 1000
        except InputError as exc:
            raise BadRequest(str(exc)) from None
    named = [t for t in detail.tags if term is not None and term.strip() in (str(t.class_id), t.label, t.label_zh, t.wnid)]
    chosen = (named or detail.tags)[:1]
    return chosen[0].frame_s or 0.0 if chosen else 0.0


@blueprint.get("/images/<fspath:raw>/explain")
def explain(raw: str) -> Response:
    """?tag=LABEL (English, Chinese or class id, or learned/NAME; default the top guess)&format=png|layer|json&size=N

    png: the photo with the heatmap (the part the model did not see greyed and striped); layer: the
    heatmap alone, transparent where not seen, to lay over the photo; json: the map as rows.
    """
    fmt = request.args.get("format", "png")
    if fmt not in get_args(ExplainFormat):
        raise BadRequest(f"format must be one of {', '.join(get_args(ExplainFormat))}, not {fmt[:40]!r}")
    term = request.args.get("tag")
    if term is not None and (len(term) > MAX_TAG_CHARS or not term.isprintable()):
        raise BadRequest(f"tag must be a label or class id of at most {MAX_TAG_CHARS} printable characters")
    size = int_arg("size", cam.OVERLAY_SIZE, 16, cam.OVERLAY_SIZE)
    detail = indexed_file(raw)
    config = viewer().config
    source = viewer().library.readable(detail.path)
    try:
        with viewer().checker.turn():
            if is_video_name(source):  # a clip: the frame its tag came from (?ms= picks another)
                moment = _frame_time(detail, term)
                fh, _ = open_regular(source)
                with fh:
                    data: bytes | Image.Image = frame_at(fh, moment, config.decode.max_pixels)
            else:
                data = read_limited(source, config.decode.max_file_bytes)
            explanation, photo = viewer().checker.explain(data, term, store().vectors.learned)
    except ModelBusy as exc:
        raise model_busy(exc) from None
    except (DecodeError, OSError) as exc:
        raise UnprocessableEntity(f"{shown(detail.path)}: {exc}") from None
    except cam.ExplainError as exc:
        raise BadRequest(str(exc)) from None
    except WeightsError as exc:
        raise ServiceUnavailable(f"the model cannot be loaded: {exc}") from None
    if fmt == "json":
        return jsonify({"path": detail.path, **explanation.as_dict()})
    image = cam.heat_layer(explanation, size) if fmt == "layer" else cam.overlay(explanation, photo, size)
    return Response(cam.png_bytes(image), mimetype="image/png")


@blueprint.get("/tags")
def tags() -> Response:
    """The model's classes (kind "class"), then the learned tags (kind "learned", with its `page`) and the
    keywords (kind "keyword": the model's, with `path`; "user": the user's own), each with its count of
    images: what the search box suggests, each name once. class_id and wnid are null for all but classes."""
    counts = viewer().tag_counts.get(store())
    browser = viewer().tag_counts.browser(store())
    classes = [
        {"kind": "class", "class_id": t.class_id, "wnid": t.wnid, "label": t.label, "label_zh": t.label_zh,
         "count": t.count}
        for t in counts.tags
    ]
    keywords = [
        {"kind": "keyword" if k.source == "model" else "user", "class_id": None, "wnid": None, "label": k.keyword,
         "label_zh": k.keyword_zh, "count": k.files, "path": k.path, "path_zh": k.path_zh}
        for k in browser.keywords
    ]
    learned = [
        {"kind": "learned", "class_id": None, "wnid": None, "label": t.name, "label_zh": t.name, "count": t.files,
         "page": url_for("vectors.learned_page", name=t.name)}
        for t in browser.learned
    ]
    named: set[str] = set()
    suggested = []
    for entry in classes + learned + keywords:  # a name already suggested is not repeated
        if str(entry["label"]).casefold() not in named or entry["kind"] == "class":
            named.add(str(entry["label"]).casefold())
            suggested.append(entry)
    return jsonify({"images": counts.images, "min_score": viewer().config.model.min_score, "tags": suggested})


@blueprint.post("/classify")
def classify() -> tuple[Response, int]:
    """Multipart files (any field name, several at once) -> each one's top tags. Nothing is stored."""
    uploads = received_uploads()
    results = check_uploads(uploads, int_arg("top_k", CHECK_TOP_K, 1, 20))
    status = 200 if any(r.error is None for r in results) else 422
    return jsonify({"model": viewer().checker.model_name, "results": [r.as_dict() for r in results]}), status


def received_uploads() -> list[tuple[str, bytes]]:
    """(name, bytes) of every file of this request, within the request's budget (web.max_upload_*):
    a request over it is refused whole with 413, before anything is decoded."""
    refuse_foreign_uploads()
    try:
        files = request.files
    except RequestEntityTooLarge:
        raise upload_too_large() from None
    uploads = [(f.filename or "upload", f.read()) for key in files for f in files.getlist(key) if f.filename]
    if not uploads:
        raise BadRequest("send one or more images as multipart/form-data files, e.g. curl -F file=@photo.jpg")
    web = viewer().config.web
    if len(uploads) > web.max_upload_files:
        raise upload_too_large()
    announced = [declared_pixels(data) for _, data in uploads]
    total = sum(p for p in announced if p <= web.max_upload_pixels)  # larger ones are refused undecoded
    if total > web.max_upload_total_pixels:
        raise RequestEntityTooLarge(
            f"these {len(uploads)} images hold {total:,} pixels together, over the {web.max_upload_total_pixels:,} "
            "one request may decode (web.max_upload_total_pixels): send them in smaller groups"
        )
    return uploads


def check_uploads(uploads: list[tuple[str, bytes]], top_k: int) -> list[CheckResult]:
    """Every file of this request, checked in turn; a model that cannot load, or busy, is a 503."""
    try:
        with viewer().checker.turn():
            return [viewer().checker.check(name, data, top_k) for name, data in uploads]
    except ModelBusy as exc:
        raise model_busy(exc) from None
    except WeightsError as exc:
        raise ServiceUnavailable(f"the model cannot be loaded: {exc}") from None


def model_busy(exc: ModelBusy) -> ServiceUnavailable:
    """503 with Retry-After: a request for the model past those that may wait for it (web.threads / 2)."""
    return ServiceUnavailable(str(exc), retry_after=exc.retry_after)


def int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.values.get(name, "")
    if not raw.strip():
        return default
    try:
        return whole_number(name, raw, low, high)
    except InputError as exc:
        raise BadRequest(str(exc)) from None


def _iso(mtime_ns: int) -> str:
    return utc_text(mtime_ns / 1e9)


def _links(path: str, sha256: str | None) -> dict[str, str]:
    raw = path.lstrip("/")
    links = {
        "self": url_for("api.image", raw=raw),
        "page": url_for("pages.image", raw=raw),
        "original": url_for("media.original", raw=raw),
    }
    if sha256:
        links["thumbnail"] = url_for("media.thumbnail", sha256=sha256)
    return links


def item_json(item: GridItem) -> dict[str, object]:
    return {
        "path": item.path,
        "sha256": item.sha256,
        "size": item.size,
        "modified": _iso(item.mtime_ns),
        "width": item.width,
        "height": item.height,
        "tag": item.tag.as_dict(),
        "links": _links(item.path, item.sha256),
    }


def detail_json(detail: ImageDetail, exists: bool) -> dict[str, object]:
    links = _links(detail.path, detail.sha256 if detail.status == "tagged" else None)
    if detail.sidecar:
        links["sidecar"] = url_for("media.sidecar", raw=detail.path.lstrip("/"))
    return {
        "path": detail.path,
        "exists": exists,
        "status": detail.status,
        "error": detail.error,
        "sha256": detail.sha256,
        "size": detail.size,
        "modified": _iso(detail.mtime_ns),
        "width": detail.width,
        "height": detail.height,
        "model": detail.model,
        "classified_at": detail.classified_at,
        "sidecar": detail.sidecar,
        "tags": [t.as_dict() for t in detail.tags],
        "keywords": [k.as_dict() for k in store().keywords(detail.sha256)] if detail.sha256 else [],
        "links": links,
    }
