"""Viewer and API features built on embeddings: similar images, teaching a tag (duplicates: tagger.web.duplicates).

A blueprint of its own, so that the pages and API it adds to stay as they were.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for
from werkzeug.exceptions import BadRequest, Forbidden, NotFound, ServiceUnavailable
from werkzeug.wrappers import Response as BaseResponse

from tagger.errors import StoreError, TaggerError
from tagger.index import Index
from tagger.vectors.learned import Learned, learn, set_threshold, unlearn
from tagger.library.keywording import Retagger
from tagger.vectors.similar import similar_to
from tagger.web.api import int_arg
from tagger.web.context import CSRF_FIELD, csrf_token, indexed_file, same_site_post, store, viewer

blueprint = Blueprint("vectors", __name__)

STRIP_SIZE = 12
MAX_SIMILAR = 200


def similar_items(sha256: str | None, limit: int) -> list[dict[str, object]]:
    """The contents most like a content, best first, each once: its first file's path, sha256, score,
    copies (the files holding it) and links."""
    if not sha256:
        return []
    try:
        matches = similar_to(store(), sha256, limit)
    except TaggerError:
        return []  # no embedding yet: nothing to compare
    first = store().vectors.first_paths([m.sha256 for m in matches])
    found = []
    for m in matches:  # each content once, by its first file: copies would crowd the strip
        if m.sha256 not in first:
            continue
        path, copies = first[m.sha256]
        raw = path.lstrip("/")
        found.append({
            "path": path, "sha256": m.sha256, "score": round(m.score, 4), "copies": copies,
            "links": {"page": url_for("pages.image", raw=raw), "self": url_for("api.image", raw=raw),
                      "thumbnail": url_for("media.thumbnail", sha256=m.sha256)},
        })
    return found[:limit]


@blueprint.app_template_global()
def similar_strip(sha256: str | None) -> list[dict[str, object]]:
    """For the image page's "similar" strip."""
    return similar_items(sha256, STRIP_SIZE)


@blueprint.get("/api/images/<fspath:raw>/similar")
def similar_api(raw: str) -> Response:
    """?limit=N (default 20): the most similar images, best first, each content once (`copies`: the
    files holding it), with their cosine similarity."""
    detail = indexed_file(raw)
    limit = int_arg("limit", 20, 1, MAX_SIMILAR)
    return jsonify({"path": detail.path, "similar": similar_items(detail.sha256, limit)})


@blueprint.app_template_global()
def form_token() -> tuple[str, str]:
    """(field, value) of this browser's form token, for the forms this module adds."""
    return CSRF_FIELD, csrf_token()


def require_same_site_post() -> None:
    """Every form here writes to the index: only from the viewer's own pages (form token)."""
    if not same_site_post():
        raise Forbidden("this form must be sent from the viewer's own pages (reload the page and try again)")


def writer(command: str) -> Retagger:
    """The viewer's write connection (hold viewer().write_lock); 503 naming the command to use instead."""
    try:
        return viewer().writer()
    except StoreError as exc:
        raise ServiceUnavailable(f"learned tags cannot be changed from this viewer: {exc} (use `{command}`)") from None


@blueprint.post("/learn")
def teach() -> BaseResponse:
    """The viewer's "teach a tag": form fields name, path (one or more: the selected images) and
    side ("yes": examples, "no": counter-examples). Then the tag's page, with its proposals."""
    require_same_site_post()
    name = request.form.get("name", "").strip()
    raws = request.form.getlist("path")
    if not name or not raws:
        raise BadRequest("give a tag name and select at least one image")
    paths = [indexed_file(raw.lstrip("/")).path for raw in raws]
    positive = request.form.get("side", "yes") != "no"
    with viewer().write_lock:  # the viewer's one write connection, as for keyword corrections
        retagger = writer("tagger learn")
        writable = retagger.index
        shas = [record.sha256 for p in paths if (record := writable.file_record(p)) is not None and record.sha256]
        result = _relearn(retagger, lambda index: learn(index, name, shas if positive else [], [] if positive else shas))
    return redirect(url_for(".learned_page", name=result.tag.name), code=303)


def _relearn(retagger: Retagger, change: Callable[[Index], Learned]) -> Learned:
    """A learned tag changed on the viewer's write connection (hold its lock): the user's mistakes
    are 400s, a failing index is not; then the keywords and sidecars of the images that changed."""
    try:
        result = change(retagger.index)
    except StoreError:
        raise
    except TaggerError as exc:
        raise BadRequest(str(exc)) from None
    retagger.rekeyword(result.changed, "the keywords of a learned tag")
    return result


@blueprint.get("/learned")
def learned_list() -> str:
    """Every learned tag, with the images it matches and its best match, each leading to its page."""
    tags = {t.name: t for t in store().vectors.learned()}
    counts = viewer().tag_counts.browser(store()).learned
    return render_template("learned_list.html", learned=[(c, tags[c.name]) for c in counts if c.name in tags])


@blueprint.get("/learned/<name>")
def learned_page(name: str) -> str:
    """A learned tag: its examples and its proposals (matches not yet examples), best first,
    each with "yes" and "no" buttons that add it as an example or a counter-example."""
    rows = store().vectors
    tag = rows.learned_tag(name)
    if tag is None:
        raise NotFound(f"no learned tag {name!r}: teach it from an image page or with `tagger learn`")
    examples = dict(rows.examples(name))
    matches = rows.matches_of(name)
    proposals = sorted(((s, p) for s, p in matches.items() if s not in examples), key=lambda m: -m[1])[:60]
    paths = rows.paths_of([s for s, _ in proposals] + list(examples))

    def first(sha: str) -> str | None:
        found = paths.get(sha)
        return found[0] if found else None

    return render_template(
        "learned.html",
        tag=tag,
        matches=len(matches),
        proposals=[(first(s), s, p) for s, p in proposals if first(s)],
        examples=[(first(s), s, side) for s, side in examples.items() if first(s)],
        name_of=lambda path: Path(path).name,
    )


@blueprint.post("/learned/<name>/threshold")
def threshold(name: str) -> BaseResponse:
    """The tag page's threshold form (field threshold, 0 < T < 1): re-applied to the library, then
    the keywords and sidecars of the images that gained or lost the tag. Back to the tag's page."""
    require_same_site_post()
    try:
        value = float(request.form.get("threshold", ""))
    except ValueError:
        raise BadRequest("give the threshold as a number between 0 and 1, such as 0.7") from None
    with viewer().write_lock:
        retagger = writer(f"tagger learn {name} --threshold T")
        if retagger.index.vectors.learned_tag(name) is None:
            raise NotFound(f"no learned tag {name!r}")
        result = _relearn(retagger, lambda index: set_threshold(index, name, value))
    return redirect(url_for(".learned_page", name=result.tag.name), code=303)


@blueprint.post("/learned/<name>/forget")
def forget(name: str) -> BaseResponse:
    """The tag page's "Forget this tag": the tag, its examples and matches go, and its keyword
    leaves every image and sidecar. Then the grid (the tag's page is gone)."""
    require_same_site_post()
    with viewer().write_lock:
        retagger = writer(f"tagger unlearn {name}")
        if retagger.index.vectors.learned_tag(name) is None:
            raise NotFound(f"no learned tag {name!r}")
        retagger.rekeyword(unlearn(retagger.index, name), "the keywords of a learned tag")
    return redirect(url_for("pages.grid"), code=303)
