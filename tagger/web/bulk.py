"""Keywords added to or removed from many images at once: the grid's selection bar.

Each image is corrected as on its own page (tagger.library.corrections, through the viewer's
one write connection), so a bulk edit is many single edits, each whole: a file that cannot be
corrected is named with its reason, and the others still are.
"""
from __future__ import annotations

from flask import Blueprint, Response, jsonify, redirect, request, url_for
from werkzeug.exceptions import BadRequest, Forbidden, HTTPException
from werkzeug.wrappers import Response as BaseResponse

from tagger.fileio import shown
from tagger.web.context import correct_keywords, indexed_file, same_site_post
from tagger.web.guard import local_target
from tagger.tags.querylang import MAX_TERMS
from tagger.web.query import TERM_SEPARATORS

blueprint = Blueprint("bulk", __name__)

MAX_SELECTED = 500  # images per bulk edit: each is a transaction and a sidecar rewrite
SEARCH_PREFIX = 16  # characters of each content's hash in an "Open as a search" query (a short, unique URL)


def _selection_query(raws: list[str]) -> str:
    """`sha:` terms for the selected images' contents: the selection as a search, shareable by its URL."""
    if not raws:
        raise BadRequest("select at least one image")
    if len(raws) > MAX_TERMS:
        raise BadRequest(f"a search holds at most {MAX_TERMS} images; select fewer")
    contents = dict.fromkeys(d.sha256[:SEARCH_PREFIX] for raw in raws if (d := indexed_file(raw.lstrip("/"))).sha256)
    return " ".join(f"sha:{content}" for content in contents)


@blueprint.post("/keywords")
def keywords() -> BaseResponse | tuple[Response, int]:
    """Form fields: path (repeated: the selected images), keywords (comma-separated), action
    (add or remove), next (the grid to return to). JSON for the page's script, else back to `next`.
    Action "search" opens the selection as a search instead (`sha:` terms)."""
    if not same_site_post():
        raise Forbidden("this form must be sent from the viewer's own pages (reload the page and try again)")
    action = request.form.get("action", "")
    if action == "search":
        return redirect(url_for("pages.grid", q=_selection_query(request.form.getlist("path"))), code=303)
    if action not in ("add", "remove"):
        raise BadRequest("action must be add, remove or search")
    words = [w.strip() for w in TERM_SEPARATORS.split(request.form.get("keywords", "")) if w.strip()]
    if not words:
        raise BadRequest("give a keyword to add or to remove (several: separated by commas)")
    raws = request.form.getlist("path")
    if not raws:
        raise BadRequest("select at least one image")
    if len(raws) > MAX_SELECTED:
        raise BadRequest(f"at most {MAX_SELECTED} images at once; select fewer")
    done, problems, contents = 0, [], set()
    for raw in raws:
        try:
            detail = indexed_file(raw.lstrip("/"))
            if detail.sha256 in contents:
                done += 1  # a copy: its content was corrected with the first
                continue
            correct_keywords(detail.path, words if action == "add" else [], words if action == "remove" else [])
            contents.add(detail.sha256)
            done += 1
        except HTTPException as exc:
            if exc.code == 503:
                raise  # the viewer cannot write at all: one answer, not one per file
            problems.append(f"{shown(raw)}: {exc.description}")
    if request.accept_mimetypes.best == "application/json":
        return jsonify({"action": action, "keywords": words, "changed": done, "problems": problems}), 200
    return redirect(local_target(request.form.get("next", "")) or url_for("pages.grid"), code=303)
