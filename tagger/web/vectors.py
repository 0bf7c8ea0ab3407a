"""Viewer and API features built on embeddings: similar images, duplicates, teaching a tag.

A blueprint of its own, so that the pages and API it adds to stay as they were.
"""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template, url_for

from tagger.duplicates import find_duplicates
from tagger.errors import TaggerError
from tagger.similar import similar_to
from tagger.vectorindex import VectorRows
from tagger.web.api import int_arg
from tagger.web.context import indexed_file, store

blueprint = Blueprint("vectors", __name__)

STRIP_SIZE = 12
MAX_SIMILAR = 200


def similar_items(sha256: str | None, limit: int) -> list[dict[str, object]]:
    """The files most like a content, best first: path, sha256, score and links."""
    if not sha256:
        return []
    try:
        matches = similar_to(store(), sha256, limit)
    except TaggerError:
        return []  # no embedding yet: nothing to compare
    paths = VectorRows(store().conn).paths_of([m.sha256 for m in matches])
    found = []
    for m in matches:
        for path in paths.get(m.sha256, [])[:1]:  # one file per content: copies would crowd the strip
            raw = path.lstrip("/")
            found.append({
                "path": path, "sha256": m.sha256, "score": round(m.score, 4),
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
    """?limit=N (default 20): the most similar images, best first, with their cosine similarity."""
    detail = indexed_file(raw)
    limit = int_arg("limit", 20, 1, MAX_SIMILAR)
    return jsonify({"path": detail.path, "similar": similar_items(detail.sha256, limit)})


@blueprint.get("/api/duplicates")
def duplicates_api() -> Response:
    """Groups of copies, each a list of paths, the largest copy first."""
    return jsonify({"groups": [[c.path for c in group] for group in find_duplicates(store())]})


@blueprint.get("/duplicates")
def duplicates_page() -> str:
    return render_template("duplicates.html", groups=find_duplicates(store()))
