"""The index's one search engine: which files match, in which order, one keyset page at a time.

A `Search` (tagger.tags.terms: keyword words, scores, folders, dates) is what the CLI
(`tagger query`), the viewer and the API all search by; a `Listing` is the plain listing
without search words (browse a folder, newest first). Both page by a cursor (the sort
key and path of the last file shown), never by OFFSET.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from tagger.index.db import Database, folder_range, marks, fs
from tagger.index.records import GridItem, SortKey, TaggedFile
from tagger.engine.labels import Tag
from tagger.tags.terms import Search

Sort = Literal["newest", "oldest", "score", "name"]

# The viewer's orders: key column and direction; ties are broken by path in the same direction.
SORTS: dict[Sort, tuple[str, str]] = {
    "newest": ("f.mtime_ns", "DESC"),
    "oldest": ("f.mtime_ns", "ASC"),
    "score": ("t.score", "DESC"),
    "name": ("f.path", "ASC"),
}
# A filter matching fewer rows than this (a rare tag, a small folder) is fetched whole and
# sorted; a wider one walks the sort's own index until a page is full. Around this size
# both take some tens of milliseconds at a million files; away from it, a few.
FEW_ROWS = 3_000
# A folder with fewer files than this is shown by time by sorting its (path, mtime) keys in
# a covering index, rather than by walking all the newer files of the library.
FOLDER_KEYS_FIRST = 200_000
# Previous and next of an image opened from a search: the matches are walked from the top,
# this many at a time, at most NEIGHBOURS_REACH deep.
NEIGHBOURS_PAGE = 500
NEIGHBOURS_REACH = 20_000


@dataclass(frozen=True)
class Listing:
    """Which files the viewer lists and in which order."""

    groups: tuple[tuple[int, ...], ...] = ()  # every group must match (a class: term -> its classes)
    min_score: float = 0.0  # for the tag a card shows: the first group's match, else the top tag
    folder: str | None = None  # only files under this folder
    sort: Sort = "newest"


class SearchEngine(Database):
    """Pages of the plain listing (browse) and of a keyword search, each with its cursor."""

    def browse(
        self,
        listing: Listing,
        limit: int,
        after: SortKey | None = None,
        *,
        backwards: bool = False,
        only: str | None = None,
    ) -> list[GridItem]:
        """The `limit` files that follow `after` in the listing's order.

        A keyset page (WHERE key < last key, never OFFSET): as fast a million files deep as on
        the first page, and nothing is skipped or repeated when files arrive meanwhile.
        `backwards` walks towards the start (the previous image); `only` keeps one path (to
        learn its key).
        """
        column, direction = SORTS[listing.sort]
        if backwards:
            direction = "ASC" if direction == "DESC" else "DESC"
        op = "<" if direction == "DESC" else ">"
        plan = self._plan(listing)
        file_terms, file_params = _file_filter(listing, only)
        if after is not None and column == "f.path":
            file_terms.append(f"f.path {op} CAST(? AS TEXT)")
            file_params.append(fs(after[1]))
        elif after is not None:
            file_terms.append(f"{column} {op}= ? AND ({column} {op} ? OR f.path {op} CAST(? AS TEXT))")
            file_params += [after[0], after[0], fs(after[1])]
        # How deep into the bound or the folder's keys to reach: a page's worth, more when other
        # terms will drop some; reached deeper until a page is full or there is no more.
        depth = limit if not listing.groups and listing.min_score == 0 else 4 * limit
        while True:
            bound = None  # how far down the scores this page can reach: found first, from the index alone
            if plan.merge_classes:
                bound = self._score_bound(plan.merge_classes, listing.min_score, after, direction, depth)
            tag_terms, tag_params = _tag_filter(listing, bound, direction)
            source, terms, params = plan.source, file_terms + tag_terms, file_params + tag_params
            if plan.folder_size:  # the folder's first `depth` keys, sorted in a covering index, then joined
                source = f"""(SELECT f.path AS key_path FROM files f INDEXED BY files_tagged_by_path
                              WHERE {" AND ".join(file_terms)} ORDER BY {column} {direction}, f.path {direction}
                              LIMIT ?) CROSS JOIN {source}"""
                terms, params = ["f.path = key_path", *tag_terms], [*file_params, depth, *tag_params]
            rows = self.conn.execute(
                f"""SELECT f.path, f.sha256, f.size, f.mtime_ns, i.width, i.height,
                           t.class_id, t.wnid, t.label, t.label_zh, t.score, {column}
                    FROM {source} CROSS JOIN images i WHERE {" AND ".join(["i.sha256 = f.sha256", *terms])}
                    ORDER BY {column} {direction}, f.path {direction} LIMIT ?""",
                [*params, limit],
            ).fetchall()
            reached_end = bound is None and depth >= plan.folder_size
            if len(rows) == limit or reached_end:
                break
            depth *= 8 if plan.folder_size else 2
        return [
            GridItem(path, sha, size, mtime, width, height, Tag(*tag), (key, path))
            for path, sha, size, mtime, width, height, *tag, key in rows
        ]

    def _plan(self, listing: Listing) -> _Plan:
        """Which index a page walks. It decides the speed, never the rows.

        A narrow filter (a rare tag, a small folder) is fetched whole and sorted; otherwise
        the sort's own index is walked, filtering as it goes, until the page is full.
        """
        by_path = "files f INDEXED BY sqlite_autoindex_files_1 CROSS JOIN tags t INDEXED BY sqlite_autoindex_tags_1"
        by_mtime = "files f INDEXED BY files_tagged_by_mtime CROSS JOIN tags t INDEXED BY sqlite_autoindex_tags_1"
        by_class = "tags t INDEXED BY tags_by_class CROSS JOIN files f"
        first = listing.groups[0] if listing.groups else ()
        in_folder = FOLDER_KEYS_FIRST
        if listing.folder is not None:
            in_folder = self._count_upto(
                """SELECT 1 FROM files INDEXED BY files_tagged_by_path
                   WHERE status = 'tagged' AND path >= CAST(? AS TEXT) AND path < CAST(? AS TEXT)""",
                folder_range(listing.folder),
                FOLDER_KEYS_FIRST,
            )
            if in_folder < FEW_ROWS:
                return _Plan(by_path)
        if listing.sort == "score" and first:
            return _Plan(by_class, merge_classes=first if len(first) > 1 else ())
        if listing.sort == "score":
            return _Plan("tags t INDEXED BY tags_top_by_score CROSS JOIN files f")
        matches = f"SELECT 1 FROM tags WHERE class_id IN ({marks(first)}) AND score >= ?"
        if first and self._count_upto(matches, [*first, listing.min_score], FEW_ROWS) < FEW_ROWS:
            return _Plan(by_class)
        if in_folder < FOLDER_KEYS_FIRST and listing.sort != "name":
            return _Plan(by_path, folder_size=in_folder)
        return _Plan(by_path if listing.sort == "name" else by_mtime)

    def _score_bound(
        self, classes: Sequence[int], min_score: float, after: SortKey | None, direction: str, depth: int
    ) -> float | None:
        """The `depth`-th best score among these classes' tags past the cursor; None if there are fewer.

        Each class's tags are in score order in tags_by_class, so this reads `depth` index
        entries per class, where all the tags of a common group can number a hundred thousand.
        """
        op = "<" if direction == "DESC" else ">"
        start = after[0] if after is not None else (2.0 if direction == "DESC" else -1.0)
        scores: list[float] = []
        for class_id in classes:
            rows = self.conn.execute(
                f"""SELECT score FROM tags INDEXED BY tags_by_class WHERE class_id = ? AND score >= ?
                    AND score {op}= ? ORDER BY score {direction} LIMIT ?""",
                (class_id, min_score, start, depth),
            ).fetchall()
            scores += [r[0] for r in rows]
        if len(scores) < depth:
            return None
        scores.sort(reverse=direction == "DESC")
        return scores[depth - 1]

    def search(self, search: Search, limit: int | None, min_score: float) -> list[TaggedFile]:
        """Files matching `search`, best first by the first group's keyword score, else by path."""
        return self._with_tags([(path, sha, model) for path, sha, model, _ in self._search(search, limit)], min_score)

    def search_neighbours(
        self, search: Search, path: str, reach: int = NEIGHBOURS_REACH
    ) -> tuple[GridItem | None, GridItem | None]:
        """The matches just before and after `path` in the search's order; (None, None) when it is
        not among the first `reach` (a search is walked forward only, a page at a time)."""
        before: GridItem | None = None
        after: SortKey | None = None
        seen = 0
        while seen < reach:
            page = self.search_items(search, NEIGHBOURS_PAGE + 1, after)
            for i, item in enumerate(page[:NEIGHBOURS_PAGE]):
                if item.path == path:
                    return before, (page[i + 1] if i + 1 < len(page) else None)
                before = item
            if len(page) <= NEIGHBOURS_PAGE:
                break
            after, seen = page[NEIGHBOURS_PAGE - 1].key, seen + NEIGHBOURS_PAGE
        return None, None

    def search_items(self, search: Search, limit: int, after: SortKey | None = None) -> list[GridItem]:
        """The viewer's cards for a search, each shown with its top tag; `after`: the key of the last one shown."""
        found = self._search(search, limit, after)
        cards = {
            row[0]: row
            for row in self.conn.execute(
                f"""SELECT f.path, f.sha256, f.size, f.mtime_ns, i.width, i.height,
                           t.class_id, t.wnid, t.label, t.label_zh, t.score
                    FROM files f JOIN images i ON i.sha256 = f.sha256 JOIN tags t ON t.sha256 = f.sha256
                    WHERE f.path IN ({", ".join(["CAST(? AS TEXT)"] * len(found))}) AND t.rank = 0""",
                [fs(r[0]) for r in found],
            )
        }
        return [
            GridItem(path, sha, size, mtime, width, height, Tag(*tag), (score, path))
            for (path, sha, size, mtime, width, height, *tag), score in (
                (cards[r[0]], r[3]) for r in found if r[0] in cards
            )
        ]

    def _search(
        self, search: Search, limit: int | None, after: SortKey | None = None
    ) -> list[tuple[str, str, str, float]]:
        """(path, sha256, model, score) of the matches, in (score desc, sha256, path) order; 0.0 and path
        order without tag words. `after` (score, path): the matches that follow that one.

        With a limit, each term's (term, score) key in keyword_terms is walked from the top (or
        from the cursor's score), deeper only while filters leave the page short: a common tag
        costs a page, not a sort of every match.
        """
        terms, params = _search_filter(search)
        where = " AND ".join(["f.status = 'tagged'", *terms])
        if not search.groups:
            if after is not None:
                where += " AND f.path > CAST(? AS TEXT)"
                params.append(fs(after[1]))
            rows = self.conn.execute(
                f"""SELECT f.path, f.sha256, i.model, 0.0 FROM files f JOIN images i ON i.sha256 = f.sha256
                    WHERE {where} ORDER BY f.path LIMIT ?""",
                [*params, -1 if limit is None else limit],
            ).fetchall()
            return rows
        group = search.groups[0]
        top, after_sha = search.score_max, ""
        if after is not None:
            top = min(top, float(after[0]))
            row = self.conn.execute("SELECT sha256 FROM files WHERE path = CAST(? AS TEXT)", (fs(after[1]),)).fetchone()
            after_sha = row[0] if row and row[0] else ""
        reach = -1 if limit is None else limit * 4 + 100
        while True:
            best: dict[str, float] = {}
            exhausted = True
            for term in group:
                rows = self.conn.execute(
                    """SELECT sha256, score FROM keyword_terms WHERE term = ? AND score BETWEEN ? AND ?
                       ORDER BY score DESC LIMIT ?""",
                    (term, search.score_min, top, reach),
                ).fetchall()
                exhausted = exhausted and (reach < 0 or len(rows) < reach)
                for sha, score in rows:
                    best[sha] = max(score, best.get(sha, -1.0))
            found: list[tuple[str, str, str, float]] = []
            for sha, score in sorted(best.items(), key=lambda item: (-item[1], item[0])):
                if after is not None and self._shown_before(sha, score, top, after_sha, group, search):
                    continue
                same = after is not None and sha == after_sha and score == top
                found += [
                    (*row, score)
                    for row in self.conn.execute(
                        f"""SELECT f.path, f.sha256, i.model FROM files f JOIN images i ON i.sha256 = f.sha256
                            WHERE f.sha256 = ? AND {where} {"AND f.path > CAST(? AS TEXT)" if same else ""} ORDER BY f.path""",
                        [sha, *params, *([fs(after[1])] if same and after else [])],
                    )
                ]
                if limit is not None and len(found) >= limit:
                    return found[:limit]
            if exhausted:
                return found
            reach *= 8

    def _shown_before(
        self, sha: str, score: float, top: float, after_sha: str, group: Sequence[str], search: Search
    ) -> bool:
        """Whether a content came before the cursor (score `top`, content `after_sha`): at the cursor's
        score with a smaller hash, or with a better match than the walk from the cursor saw."""
        if score == top and sha < after_sha:
            return True
        row = self.conn.execute(
            f"""SELECT MAX(score) FROM keyword_terms
                WHERE sha256 = ? AND term IN ({marks(group)}) AND score BETWEEN ? AND ?""",
            (sha, *group, search.score_min, search.score_max),
        ).fetchone()
        return row[0] is not None and row[0] > score

    def _with_tags(self, rows: Sequence[tuple[str, str, str]], min_score: float) -> list[TaggedFile]:
        """Attach each file's tags, fetched for all the rows' contents at once (not one query per row)."""
        shas = list(dict.fromkeys(sha for _, sha, _ in rows))
        tags: dict[str, list[Tag]] = {sha: [] for sha in shas}
        for start in range(0, len(shas), 500):
            chunk = shas[start : start + 500]
            for sha, *fields in self.conn.execute(
                f"""SELECT sha256, class_id, wnid, label, label_zh, score FROM tags
                    WHERE sha256 IN ({marks(chunk)}) AND score >= ? ORDER BY sha256, rank""",
                (*chunk, min_score),
            ):
                tags[sha].append(Tag(*fields))
        return [TaggedFile(path, sha, model, tags[sha]) for path, sha, model in rows]


@dataclass(frozen=True)
class _Plan:
    source: str  # the FROM clause: tables in join order, each with the index it is read by
    folder_size: int = 0  # set: sort the folder's keys in a covering index first, then join a page
    merge_classes: tuple[int, ...] = ()  # best first across these classes: bound the scores first


def _file_filter(listing: Listing, only: str | None) -> tuple[list[str], list[object]]:
    terms, params = ["f.status = 'tagged'"], list[object]()
    if listing.folder is not None:
        terms.append("f.path >= CAST(? AS TEXT) AND f.path < CAST(? AS TEXT)")
        params += folder_range(listing.folder)
    if only is not None:
        terms.append("f.path = CAST(? AS TEXT)")
        params.append(fs(only))
    return terms, params


def _tag_filter(
    listing: Listing, bound: float | None = None, direction: str = "DESC"
) -> tuple[list[str], list[object]]:
    """`t` is the tag a file's card shows: its best match for the first group, or its top tag.

    `bound` is the lowest score a best-first page reaches (the highest, walking `ASC`); it
    joins min_score in one range on the index.
    """
    terms = ["t.sha256 = f.sha256", "t.score >= ?"]
    params: list[object] = [listing.min_score]
    if bound is not None and direction == "DESC":
        params = [max(listing.min_score, bound)]
    elif bound is not None:
        terms.append("t.score <= ?")
        params.append(bound)
    if not listing.groups:
        return [*terms, "t.rank = 0"], params
    first, *rest = listing.groups
    terms.append(f"t.class_id IN ({marks(first)})")
    params += first
    if len(first) > 1:  # several classes of the group may match one image: keep its best (lowest rank)
        terms.append(
            f"""NOT EXISTS (SELECT 1 FROM tags b INDEXED BY sqlite_autoindex_tags_1
                WHERE b.sha256 = t.sha256 AND b.rank < t.rank AND b.class_id IN ({marks(first)}))"""
        )
        params += first
    for group in rest:
        terms.append(
            f"""EXISTS (SELECT 1 FROM tags x INDEXED BY sqlite_autoindex_tags_1
                WHERE x.sha256 = f.sha256 AND x.class_id IN ({marks(group)}) AND x.score >= ?)"""
        )
        params += [*group, listing.min_score]
    return terms, params


def _search_filter(search: Search) -> tuple[list[str], list[object]]:
    """WHERE terms on `files f` for everything in a search but the first group's own match."""
    terms: list[str] = []
    params: list[object] = []
    matches = "SELECT 1 FROM keyword_terms k WHERE k.sha256 = f.sha256 AND k.term IN ({})"
    for group in search.groups[1:]:
        terms.append(f"EXISTS ({matches.format(marks(group))} AND k.score BETWEEN ? AND ?)")
        params += [*group, search.score_min, search.score_max]
    for group in search.not_groups:
        terms.append(f"NOT EXISTS ({matches.format(marks(group))})")
        params += group
    for classes in search.classes:
        terms.append(f"EXISTS (SELECT 1 FROM tags x WHERE x.sha256 = f.sha256 AND x.class_id IN ({marks(classes)}))")
        params += classes
    if not search.groups and (search.score_min > 0.0 or search.score_max < 1.0):
        terms.append("EXISTS (SELECT 1 FROM keywords k WHERE k.sha256 = f.sha256 AND k.score BETWEEN ? AND ?)")
        params += [search.score_min, search.score_max]
    for folders, negate in ((search.folders, ""), (search.not_folders, "NOT ")):
        for folder in folders:
            if folder.startswith("/"):
                terms.append(f"{negate}(f.path >= CAST(? AS TEXT) AND f.path < CAST(? AS TEXT))")
                params += folder_range(folder)
            else:
                terms.append(f"{negate}(instr(f.path, CAST(? AS TEXT)) > 0)")
                params.append(fs("/" + folder.strip("/") + "/"))
    # type: terms by the file's name ending (LIKE ignores ASCII case: .NEF is .nef).
    if search.suffixes:
        terms.append("(" + " OR ".join(["f.path LIKE ?"] * len(search.suffixes)) + ")")
        params += ["%" + suffix for suffix in search.suffixes]
    if search.not_suffixes:
        terms.append("NOT (" + " OR ".join(["f.path LIKE ?"] * len(search.not_suffixes)) + ")")
        params += ["%" + suffix for suffix in search.not_suffixes]
    if search.contents:  # prefixes of hex (or "s" + hex): "g" sorts after every character they use
        terms.append("(" + " OR ".join(["(f.sha256 >= ? AND f.sha256 < ?)"] * len(search.contents)) + ")")
        params += [bound for prefix in search.contents for bound in (prefix, prefix + "g")]
    low_s, high_s = search.duration
    if low_s is not None or high_s is not None:  # a clip's length: still images (NULL) never match
        terms.append("EXISTS (SELECT 1 FROM images d WHERE d.sha256 = f.sha256 AND d.duration BETWEEN ? AND ?)")
        params += [0.0 if low_s is None else low_s, 1e12 if high_s is None else high_s]
    for column, (low, high) in (("f.added_at", search.added), ("f.mtime_ns", search.mtime_ns)):
        if low is not None:
            terms.append(f"{column} >= ?")
            params.append(low)
        if high is not None:
            terms.append(f"{column} < ?")
            params.append(high)
    return terms, params
