"""The duplicates task: groups of copies, computed in the background and kept until the index
changes, shown a page at a time with the copy to keep suggested, and "keep this, move the rest
to the trash" (tagger.library.trash).

Computing the groups is quadratic (51 s at 150,000 embeddings: bench/bench_duplicates.py): one
background thread at a time does it, at a low CPU priority, and a request waits for it at most
WAIT_SECONDS; after that it answers at once that the groups are being computed (202 with
Retry-After). What is kept
is the groups as tuples of paths and contents (tagger.vectors.duplicates.Group), never records;
a page reads the facts of its own copies from the index.
"""
from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Response, jsonify, make_response, redirect, render_template, request, url_for
from flask.blueprints import BlueprintSetupState
from werkzeug.exceptions import BadRequest, Conflict, Forbidden, NotFound, ServiceUnavailable
from werkzeug.wrappers import Response as BaseResponse

from tagger.errors import StoreError
from tagger.index import Index
from tagger.index.duplicates import CopyFacts, DuplicateRows
from tagger.inputs import InputError, is_whole_number, whole_number
from tagger.library.trash import TRASH_FOLDER, Refusal, Trashed, move_to_trash, unchanged, writable
from tagger.vectors.duplicates import Duplicates, Group, find_groups, format_of, regroup
from tagger.web.context import CSRF_FIELD, csrf_token, same_site_post, store, viewer

log = logging.getLogger(__name__)

blueprint = Blueprint("duplicates", __name__)

PAGE_SIZE = 20  # groups on a page
API_LIMIT, MAX_API_LIMIT = 100, 500  # groups in an API answer: by default, at most
WAIT_SECONDS = 2.0  # the longest a request waits for the groups before answering "being computed"
CHECK_SECONDS = 5.0  # how often the index is asked whether the groups are out of date
RETRY_AFTER = 3  # seconds, told to a client while the groups are computed
OUTCOMES = 32  # results of moves to the trash kept for the page they redirect to
NICE = 10  # the computing thread's CPU priority: serving threads come first


@dataclass(frozen=True)
class Progress:
    """Where the task stands: the groups (None before the first computation), whether a
    computation runs and how far it is, and the last one's error."""

    found: Duplicates | None
    computing: bool
    done: float
    error: str | None


class DuplicatesTask:
    """The groups of one index, made by one background thread at a time and kept until the index changes."""

    def __init__(self, index: Path) -> None:
        self.index = index
        self._lock = threading.Lock()
        self._found: Duplicates | None = None
        self._thread: threading.Thread | None = None
        self._done = 0.0
        self._error: str | None = None
        self._checked = float("-inf")
        self.outcomes: OrderedDict[str, Trashed] = OrderedDict()

    def progress(self, reader: Index, wait: float = 0.0) -> Progress:
        """The groups as they are; a computation is started when there are none or the index changed
        (asked every CHECK_SECONDS), and waited for at most `wait` seconds."""
        now = time.monotonic()
        with self._lock:
            if self._thread is None and now - self._checked >= CHECK_SECONDS:
                self._checked = now
                if self._found is None or DuplicateRows(reader.conn).state_key() != self._found.key:
                    self._start()
            thread = self._thread
        if thread is not None and wait > 0:
            thread.join(wait)
        with self._lock:
            return Progress(self._found, self._thread is not None, self._done, self._error)

    def _start(self) -> None:
        self._done = 0.0
        self._thread = threading.Thread(target=self._compute, name="duplicates", daemon=True)
        self._thread.start()

    def _compute(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), NICE)  # this thread only, on Linux
        except (AttributeError, OSError):
            pass
        try:
            with Index.open(self.index, readonly=True) as reader:
                found = find_groups(reader, self._report)
            with self._lock:
                self._found, self._error = found, None
        except Exception as exc:  # noqa: BLE001 - the page says so; the next check tries again
            log.exception("the duplicates could not be computed")
            with self._lock:
                self._error = str(exc) or type(exc).__name__
        finally:
            with self._lock:
                self._thread = None
                self._checked = time.monotonic()

    def _report(self, done: float) -> None:
        self._done = done

    def replace(self, old: Group, new: Group | None, before: tuple[object, ...], after: tuple[object, ...]) -> None:
        """A group changed by a move to the trash: kept as the index is now when nothing else changed
        it meanwhile (`before`, `after`: its state keys around the move), else marked out of date."""
        with self._lock:
            if self._found is not None and old in self._found.groups:
                self._found = self._found.replaced(old, new, after if self._found.key == before else ())

    def remember(self, outcome: Trashed) -> str:
        """An id for the page that shows this outcome (the last OUTCOMES are kept)."""
        token = secrets.token_urlsafe(12)
        with self._lock:
            self.outcomes[token] = outcome
            while len(self.outcomes) > OUTCOMES:
                self.outcomes.popitem(last=False)
        return token


def _set_up(state: BlueprintSetupState) -> None:
    """The app's task."""
    app = state.app
    app.extensions["tagger.duplicates"] = DuplicatesTask(Path(app.extensions["tagger"].config.index))


blueprint.record_once(_set_up)


def task() -> DuplicatesTask:
    from flask import current_app

    found: DuplicatesTask = current_app.extensions["tagger.duplicates"]
    return found


def page_arg(name: str, default: int, high: int) -> int:
    """A whole number from 1 to `high` (blank: `default`); anything else is a 400 naming it."""
    raw = request.args.get(name, "")
    if not raw.strip():
        return default
    try:
        return whole_number(name, raw, 1, high)
    except InputError as exc:
        raise BadRequest(str(exc)) from None


def _pages(found: Duplicates, size: int) -> int:
    return max(1, -(-len(found.groups) // size))


def _page_of(found: Duplicates, number: int, size: int) -> tuple[Group, ...]:
    pages = _pages(found, size)
    if number > pages:
        raise NotFound(f"there is no page {number}: the duplicates fill {pages} page{'s' if pages > 1 else ''} of {size}")
    return found.groups[(number - 1) * size : number * size]


@dataclass(frozen=True)
class Shown:
    """One copy as the page shows it (facts None: no longer in the index)."""

    path: str
    sha256: str
    folder: str
    name: str
    format: str
    facts: CopyFacts | None
    suggested: bool


def _shown(group: Group, facts: dict[str, CopyFacts]) -> list[Shown]:
    return [
        Shown(path, sha, os.path.dirname(path), os.path.basename(path), format_of(path), facts.get(path), i == group.keep)
        for i, (path, sha) in enumerate(zip(group.paths, group.shas))
    ]


def _facts(groups: tuple[Group, ...]) -> dict[str, CopyFacts]:
    return DuplicateRows(store().conn).copies_at([p for g in groups for p in g.paths])


@blueprint.get("/duplicates")
def page() -> BaseResponse:
    """?page=N (from 1): PAGE_SIZE groups, most space to free first, with their totals."""
    number = page_arg("page", 1, 10**9)
    state = task().progress(store(), WAIT_SECONDS)
    outcome = task().outcomes.get(request.args.get("done", ""))
    if state.found is None:
        status = 503 if state.error and not state.computing else 202
        response = make_response(render_template("duplicates.html", state=state, outcome=outcome), status)
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response
    groups = _page_of(state.found, number, PAGE_SIZE)
    facts = _facts(groups)
    return make_response(render_template(
        "duplicates.html", state=state, outcome=outcome, found=state.found, number=number,
        pages=_pages(state.found, PAGE_SIZE), groups=[(g, _shown(g, facts)) for g in groups],
        token=(CSRF_FIELD, csrf_token()), trash_folder=TRASH_FOLDER,
    ))


@blueprint.get("/api/duplicates")
def api() -> Response:
    """?page=N&limit=L (L up to MAX_API_LIMIT): `groups`, each a list of paths, the largest copy first
    (as ever); `details` of the same groups (the suggestion, each copy's facts); `totals`; `next`.
    202 with Retry-After while the groups are first computed."""
    number = page_arg("page", 1, 10**9)
    limit = page_arg("limit", API_LIMIT, MAX_API_LIMIT)
    state = task().progress(store(), WAIT_SECONDS)
    if state.found is None:
        code = 503 if state.error and not state.computing else 202
        body = {"state": "failed" if code == 503 else "computing", "progress": round(state.done, 3),
                "message": _waiting_message(state)}
        response = jsonify(body)
        response.status_code = code
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response
    found = state.found
    groups = _page_of(found, number, limit)
    facts = _facts(groups)
    more = number < _pages(found, limit)
    return jsonify({
        "state": "updating" if state.computing else "ready",
        "totals": {"groups": len(found.groups), "files": found.files, "freed_bytes": found.freed},
        "page": number, "pages": _pages(found, limit),
        "next": url_for("duplicates.api", page=number + 1, limit=limit) if more else None,
        "groups": [list(g.paths) for g in groups],
        "details": [_group_json(g, facts) for g in groups],
    })


def _group_json(group: Group, facts: dict[str, CopyFacts]) -> dict[str, object]:
    copies = []
    for copy in _shown(group, facts):
        known = copy.facts
        copies.append({
            "path": copy.path, "sha256": copy.sha256, "folder": copy.folder, "name": copy.name, "format": copy.format,
            "size": known.size if known else None, "width": known.width if known else None,
            "height": known.height if known else None, "mtime_ns": known.mtime_ns if known else None,
            "suggested": copy.suggested,
        })
    return {"keep": group.paths[group.keep], "freed_bytes": group.freed, "copies": copies}


def _waiting_message(state: Progress) -> str:
    if state.computing:
        return f"the groups of copies are being computed ({state.done:.0%}): ask again in a few seconds"
    return f"the groups of copies could not be computed: {state.error} (the viewer's log has the details)"


@blueprint.post("/duplicates/keep")
def keep() -> BaseResponse:
    """A group's "keep this, move the rest to the trash": form fields keep (a path), trash (the
    paths to move, each in keep's group), page, and confirmed=yes (else a confirmation step).
    Then the page again, saying what was moved and what was refused, and why."""
    if not same_site_post():
        raise Forbidden("this form must be sent from the viewer's own pages (reload the page and try again)")
    kept, paths = request.form.get("keep", ""), request.form.getlist("trash")
    number = request.form.get("page", "1")
    if not kept or not paths:
        raise BadRequest("give the copy to keep (keep) and at least one copy to move to the trash (trash)")
    state = task().progress(store())
    if state.found is None:
        raise ServiceUnavailable("the groups of copies are being computed: reload the page in a few seconds",
                                 retry_after=RETRY_AFTER)
    group = state.found.group_of(kept)
    if group is None:
        raise BadRequest(f"{kept} is not in a group of copies (any more): reload the page")
    if not writable(viewer().config, kept):
        raise ServiceUnavailable(
            f"the library is read-only for this viewer ({TRASH_FOLDER} cannot be made beside {kept}); as "
            "tagger-web.service it reads the library only: move the copies yourself, the next scan forgets them"
        )
    sha_of = dict(zip(group.paths, group.shas))
    wanted = {p: sha_of[p] for p in dict.fromkeys(paths) if p in sha_of and p != kept}
    strangers = [p for p in dict.fromkeys(paths) if p not in wanted]
    if request.form.get("confirmed") != "yes":
        facts = DuplicateRows(store().conn).copies_at(list(wanted))
        return make_response(render_template(
            "duplicates.html", state=state, confirm=True, kept=kept, wanted=list(wanted), strangers=strangers,
            bytes=sum(f.size for f in facts.values()), number=number, token=(CSRF_FIELD, csrf_token()),
            trash_folder=TRASH_FOLDER,
        ))
    before = DuplicateRows(store().conn).state_key()
    with viewer().write_lock:
        try:
            writer = viewer().writer().index
        except StoreError as exc:
            raise ServiceUnavailable(f"copies cannot be moved to the trash from this viewer: {exc}") from None
        reason = unchanged(writer, kept, sha_of[kept])
        if reason is not None:
            raise Conflict(f"nothing was moved: the copy to keep, {kept}, is {reason}")
        outcome = move_to_trash(viewer().config, writer, wanted)
        outcome.refused[:0] = [Refusal(p, "not in this group of copies (or the copy kept): left as it is") for p in strangers]
        task().replace(group, regroup(writer, group, outcome.moved), before, DuplicateRows(store().conn).state_key())
    done = task().remember(outcome)
    found = task().progress(store()).found
    last = _pages(found, PAGE_SIZE) if found is not None else 1
    back = min(int(number), last) if is_whole_number(number) else 1
    return redirect(url_for("duplicates.page", page=max(back, 1), done=done), code=303)
