"""The similar-images search: the bit-code shortlist agrees with scoring every row, and its
cache is rebuilt, never misread, when its layout or the embeddings change."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from tagger.vectors import similar
from tagger.index import Index
from tagger.index.vectors import encode, quantise
from tagger.vectors.similar import VectorMatrix


def clustered(count: int, dims: int, seed: int, centers: int = 300) -> np.ndarray:
    """Rows around a few hundred directions, as a library holds many photos of fewer subjects."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centers, dims), dtype=np.float32)
    rows = middle[rng.integers(0, centers, count)] + 0.8 * rng.standard_normal((count, dims), dtype=np.float32)
    return np.abs(rows)  # pooled features after a ReLU: all >= 0, so the mean must come off before signs


def test_shortlist_finds_what_scoring_every_row_finds(monkeypatch: pytest.MonkeyPatch) -> None:
    from tagger.index.vectors import quantise

    matrix = quantise(clustered(30_000, 512, 1))  # ResNet-18: the fewest bits of the models
    library = VectorMatrix([f"{i:064x}" for i in range(len(matrix))], matrix)
    assert library.codes is not None and library.codes.shape == (30_000, 64)
    monkeypatch.setattr(similar, "SHORTLIST", 400)  # of 30,000: the codes must do real work
    recalls = []
    for q in np.random.default_rng(2).choice(len(matrix), 25, replace=False):
        shortlisted = library.nearest(matrix[q], 10)
        everything = library.nearest(matrix[q], 10, exact=True)
        assert shortlisted[0].sha256 == f"{q:064x}"  # a row is its own nearest
        assert [m.score for m in shortlisted] == sorted((m.score for m in shortlisted), reverse=True)
        recalls.append(len({m.sha256 for m in shortlisted} & {m.sha256 for m in everything}) / 10)
    assert np.mean(recalls) >= 0.95, recalls
    # The rows are all >= 0: signs taken without the mean would all be 1. With it, bits split the library.
    assert 0.3 < np.unpackbits(library.codes[:1000]).mean() < 0.7


def test_excluded_contents_and_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    matrix = clustered(25_000, 32, 3).astype(np.int8)
    library = VectorMatrix([f"{i:064x}" for i in range(len(matrix))], matrix)
    found = library.nearest(matrix[7], 5, exclude={f"{7:064x}"})
    assert len(found) == 5 and f"{7:064x}" not in {m.sha256 for m in found}
    assert library.nearest(matrix[7], 0) == []
    assert VectorMatrix([], np.zeros((0, 0), np.int8)).nearest(matrix[7], 5) == []


def _store_vectors(index: Path, vectors: np.ndarray) -> None:
    with Index.open(index) as store, store.transaction():
        shas = [f"{i:064x}" for i in range(len(vectors))]
        store.conn.executemany(
            "INSERT INTO images (sha256, size, width, height, model, weights_sha256, classified_at)"
            " VALUES (?, 1, 1, 1, 'm', 'w', 't')", [(s,) for s in shas])
        store.conn.executemany(
            "INSERT INTO embeddings (sha256, model, dims, vector, image_hash) VALUES (?, 'm', ?, ?, 0)",
            [(s, vectors.shape[1], encode(v)) for s, v in zip(shas, vectors)])


def test_cache_holds_codes_and_an_old_layout_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(similar, "EXACT_BELOW", 100)
    monkeypatch.setattr(similar, "SHORTLIST", 50)
    index = tmp_path / "index.sqlite"
    vectors = clustered(600, 64, 4)
    _store_vectors(index, vectors)
    with Index.open(index) as store:
        built = VectorMatrix.load(store, "m")
        folder = Path(str(index) + ".vectors")
        assert {p.suffix for p in folder.iterdir()} >= {".i8", ".shas", ".mean", ".b1", ".json"}
        cached = VectorMatrix.load(store, "m")
        assert isinstance(cached.codes, np.memmap) and np.array_equal(cached.codes, built.codes)
        assert [m.sha256 for m in cached.nearest(vectors[5], 3)] == [m.sha256 for m in built.nearest(vectors[5], 3)]
        meta = json.loads((folder / "m.json").read_text())
        del meta["format"]  # as a cache written before the codes existed
        (folder / "m.json").write_text(json.dumps(meta))
        (folder / "m.b1").unlink()
        again = VectorMatrix.load(store, "m")
        assert (folder / "m.b1").exists() and again.codes is not None
        (folder / "m.mean").write_bytes(b"\0" * 12)  # damaged: the wrong length
        assert VectorMatrix.load(store, "m").mean.shape == (64,)


def test_every_change_to_the_embeddings_changes_the_version(tmp_path: Path) -> None:

    index = tmp_path / "index.sqlite"
    _store_vectors(index, clustered(3, 8, 5))
    with Index.open(index) as store:
        rows = store.vectors
        seen = [rows.version("m")]

        def changed() -> bool:
            seen.append(rows.version("m"))
            return seen[-1] != seen[-2]

        assert seen[0] != 0 and rows.version("other") == 0
        assert not changed()  # reading changes nothing
        with store.transaction():
            rows.save(f"{0:064x}", "m", np.ones(8, np.float32), 1)  # replaced in place
        assert changed()
        with store.transaction():
            store.conn.execute("UPDATE embeddings SET image_hash = 7 WHERE sha256 = ?", (f"{1:064x}",))
        assert changed()
        with store.transaction():
            rows.save(f"{1:064x}", "other", np.ones(8, np.float32), 1)  # moved to another model
        assert changed() and rows.version("other") != 0
        with store.transaction():  # the content goes, its embedding with it (ON DELETE CASCADE)
            store.conn.execute("DELETE FROM images WHERE sha256 = ?", (f"{2:064x}",))
        assert changed()
        assert store.conn.execute("SELECT COUNT(*) FROM embeddings WHERE model = 'm'").fetchone()[0] == 1


def test_a_cache_beside_a_recreated_index_is_not_taken_for_current(tmp_path: Path) -> None:
    index = tmp_path / "index.sqlite"
    _store_vectors(index, clustered(50, 16, 6))
    with Index.open(index) as store:
        assert len(VectorMatrix.load(store, "m")) == 50
    for leftover in tmp_path.glob("index.sqlite*"):
        if leftover.is_file():
            leftover.unlink()  # the user starts over; the cache folder stays
    _store_vectors(index, clustered(50, 16, 7)[:20])
    with Index.open(index) as store:
        again = VectorMatrix.load(store, "m")
        assert len(again) == 20
        stored = store.conn.execute("SELECT vector FROM embeddings WHERE sha256 = ?", (f"{3:064x}",)).fetchone()[0]
        assert bytes(np.asarray(again.matrix[3]).tobytes()) == stored


def _back_to_migration_7(index: Path) -> None:
    import sqlite3

    with sqlite3.connect(index) as conn:
        for trigger in ("embedding_replaced", "embedding_written", "embedding_updated", "embedding_deleted"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE embedding_changes")
        conn.execute("ALTER TABLE images DROP COLUMN duration")  # migration 10's
        conn.execute("ALTER TABLE tags DROP COLUMN frame_s")
        conn.execute("ALTER TABLE files DROP COLUMN ctime_ns")  # migration 11's
        conn.execute("ALTER TABLE files DROP COLUMN inode")
        conn.execute("DELETE FROM schema_migrations WHERE version >= 8")


def test_an_index_from_before_the_stamps_gets_them(tmp_path: Path) -> None:

    index = tmp_path / "index.sqlite"
    _store_vectors(index, clustered(4, 8, 8))
    _back_to_migration_7(index)
    with Index.open(index) as store:
        rows = store.vectors
        before = rows.version("m")
        assert before != 0 and rows.version("nothing") == 0
        assert rows.state("m").rows == 4
        with store.transaction():
            store.conn.execute("DELETE FROM images WHERE sha256 = ?", (f"{0:064x}",))
        assert rows.version("m") != before and rows.state("m").rows == 3


def test_migration_9_counts_the_embeddings_already_there(tmp_path: Path) -> None:
    import sqlite3

    from tagger.index.db import _statements
    from tagger.index.schema import MIGRATIONS

    index = tmp_path / "index.sqlite"
    _store_vectors(index, clustered(5, 8, 9))
    with Index.open(index) as store, store.transaction():
        store.vectors.save(f"{4:064x}", "other", np.ones(8, np.float32), 0)
    _back_to_migration_7(index)
    with sqlite3.connect(index) as conn:  # an index of migration 8, with its triggers
        for statement in _statements(MIGRATIONS[7].sql):
            conn.execute(statement)
        conn.execute("INSERT INTO schema_migrations (version, applied_at) VALUES (8, 't')")
    with Index.open(index) as store:
        rows = store.vectors
        assert (rows.state("m").rows, rows.state("other").rows) == (4, 1)
        assert rows.state("m").removals != 0 and rows.state("nothing").rows == 0


def test_only_removals_renew_the_removal_stamp_and_rows_is_the_count(tmp_path: Path) -> None:

    index = tmp_path / "index.sqlite"
    _store_vectors(index, clustered(3, 8, 10))
    with Index.open(index) as store:
        rows = store.vectors

        def count(model: str) -> int:
            return int(store.conn.execute("SELECT COUNT(*) FROM embeddings WHERE model = ?", (model,)).fetchone()[0])

        def step(sql: str, *args: object, counted: bool = True) -> tuple[bool, bool]:
            """(stamp renewed, removals renewed) for 'm', with `rows` checked against a count."""
            before = rows.state("m")
            with store.transaction():
                store.conn.execute(sql, args)
            after = rows.state("m")
            assert not counted or (after.rows == count("m") and rows.state("other").rows == count("other"))
            return after.stamp != before.stamp, after.removals != before.removals

        _add_image(store, f"{9:064x}")
        assert step("INSERT INTO embeddings (sha256, model, dims, vector, image_hash) VALUES (?, 'm', 8, ?, 0)",
                    f"{9:064x}", encode(np.ones(8))) == (True, False)
        assert step("INSERT OR REPLACE INTO embeddings (sha256, model, dims, vector, image_hash) VALUES (?, 'm', 8, ?, 0)",
                    f"{9:064x}", encode(np.ones(8))) == (True, True)
        # An insert ignored (tagger makes none) is miscounted, as a removal: the cache is rebuilt.
        assert step("INSERT OR IGNORE INTO embeddings (sha256, model, dims, vector, image_hash) VALUES (?, 'm', 8, ?, 0)",
                    f"{9:064x}", encode(np.ones(8)), counted=False)[1]
        with store.transaction():
            store.conn.execute("UPDATE embedding_changes SET rows = rows + 1 WHERE model = 'm'")
        assert step("UPDATE embeddings SET image_hash = 3 WHERE sha256 = ?", f"{9:064x}") == (True, True)
        assert step("UPDATE embeddings SET model = 'other' WHERE sha256 = ?", f"{9:064x}") == (True, True)
        assert step("INSERT OR REPLACE INTO embeddings (sha256, model, dims, vector, image_hash) VALUES (?, 'm', 8, ?, 0)",
                    f"{9:064x}", encode(np.ones(8))) == (True, False)  # from 'other' to 'm': an addition to 'm'
        assert step("DELETE FROM images WHERE sha256 = ?", f"{0:064x}") == (True, True)


def _add_image(store: Index, sha: str) -> None:
    with store.transaction():
        store.conn.execute("INSERT INTO images (sha256, size, width, height, model, weights_sha256, classified_at)"
                           " VALUES (?, 1, 1, 1, 'm', 'w', 't')", (sha,))


def _add(store: Index, first: int, vectors: np.ndarray, written_at: str | None = None) -> None:
    """Embeddings for new contents `first`, `first` + 1, ... (written now, or at `written_at`)."""
    for i, v in enumerate(vectors):
        sha = f"{first + i:064x}"
        _add_image(store, sha)
        with store.transaction():
            store.conn.execute(
                "INSERT INTO embeddings (sha256, model, dims, vector, image_hash, written_at)"
                " VALUES (?, 'm', ?, ?, 0, COALESCE(?, strftime('%Y-%m-%dT%H:%M:%f', 'now')))",
                (sha, len(v), encode(v), written_at))


@pytest.fixture
def library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An index of 600 embeddings (searched through the codes) and its cache."""
    monkeypatch.setattr(similar, "EXACT_BELOW", 100)
    monkeypatch.setattr(similar, "SHORTLIST", 50)
    index = tmp_path / "index.sqlite"
    _store_vectors(index, clustered(600, 64, 11))
    with Index.open(index) as store:
        assert len(VectorMatrix.load(store, "m")) == 600
    return index


def _rebuilds(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    rebuild = similar._rebuild_cache

    def counted(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return rebuild(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(similar, "_rebuild_cache", counted)
    return calls


def _same_as_rebuilt(store: Index, loaded: VectorMatrix) -> None:
    """The rows of a full rebuild, and the same search results (the codes' shortlist holding all)."""

    shas: list[str] = []
    parts = []
    for chunk_shas, chunk in store.vectors.all_vectors("m"):
        shas.extend(chunk_shas)
        parts.append(chunk)
    fresh = VectorMatrix(shas, np.concatenate(parts))
    assert sorted(loaded.shas) == sorted(shas)
    for sha in shas:
        assert np.array_equal(loaded.matrix[loaded.row[sha]], fresh.matrix[fresh.row[sha]])
    wide = pytest.MonkeyPatch()
    wide.setattr(similar, "SHORTLIST", len(shas))
    try:
        for q in (0, 5, len(shas) - 1):
            query = np.asarray(fresh.matrix[q], np.float32)
            found, expected = loaded.nearest(query, 10), fresh.nearest(query, 10)
            assert [m.sha256 for m in found] == [m.sha256 for m in expected]
            assert np.allclose([m.score for m in found], [m.score for m in expected], atol=1e-6)
    finally:
        wide.undo()


def test_additions_are_appended_to_the_cache(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = Path(str(library) + ".vectors")
    inodes = {s: (folder / f"m{s}").stat().st_ino for s in (".i8", ".shas", ".b1", ".mean")}
    calls = _rebuilds(monkeypatch)
    with Index.open(library) as store:
        old = VectorMatrix.load(store, "m")  # a reader holding the cache as it was
        old_codes = np.array(old.codes)
        added = clustered(10, 64, 12)
        _add(store, 1000, added)
        grown = VectorMatrix.load(store, "m")
        assert calls == [] and len(grown) == 610 and len(old) == 600
        assert {s: (folder / f"m{s}").stat().st_ino for s in inodes} == inodes  # written in place
        assert grown.codes is not None and np.array_equal(grown.codes[:600], old_codes)
        assert np.array_equal(grown.codes[600:], similar.bit_codes(quantise(added), old.mean))
        assert np.array_equal(grown.mean, old.mean)  # refreshed only by a rebuild
        assert old.nearest(np.asarray(old.matrix[3], np.float32), 3)[0].sha256 == old.shas[3]  # still readable
        _same_as_rebuilt(store, grown)
        assert json.loads((folder / "m.json").read_text())["count"] == 610
        again = VectorMatrix.load(store, "m")  # current now
        assert len(again) == 610 and calls == []


def test_additions_in_the_same_millisecond_are_each_appended_once(library: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _rebuilds(monkeypatch)
    same = "2999-01-01T00:00:00.000"
    vectors = clustered(3, 64, 13)
    with Index.open(library) as store:
        _add(store, 1000, vectors[:1], same)
        assert len(VectorMatrix.load(store, "m")) == 601
        _add(store, 1001, vectors[1:], same)  # written at the cache's newest time
        grown = VectorMatrix.load(store, "m")
        assert len(grown) == 603 and calls == []
        _same_as_rebuilt(store, grown)


@pytest.mark.parametrize("change", ["delete", "replace", "update", "earlier", "delete and add"])
def test_anything_but_additions_rebuilds(library: Path, monkeypatch: pytest.MonkeyPatch, change: str) -> None:

    calls = _rebuilds(monkeypatch)
    with Index.open(library) as store:
        if change in ("delete", "delete and add"):
            with store.transaction():
                store.conn.execute("DELETE FROM images WHERE sha256 = ?", (f"{7:064x}",))
        if change == "delete and add":
            _add(store, 1000, clustered(1, 64, 14))
        if change == "replace":  # the same content's embedding written again: INSERT OR REPLACE
            with store.transaction():
                store.vectors.save(f"{7:064x}", "m", clustered(1, 64, 15)[0], 0)
        if change == "update":
            with store.transaction():
                store.conn.execute("UPDATE embeddings SET vector = ? WHERE sha256 = ?",
                                   (encode(clustered(1, 64, 16)[0]), f"{7:064x}"))
        if change == "earlier":  # an addition written with a time before the cache's newest
            _add(store, 1000, clustered(1, 64, 17), "2000-01-01T00:00:00.000")
        loaded = VectorMatrix.load(store, "m")
        assert calls == [1]
        _same_as_rebuilt(store, loaded)


@pytest.mark.parametrize("damage", [".i8 longer", ".shas longer", ".b1 shorter", ".i8 shorter"])
def test_a_cache_cut_short_or_overgrown_is_rebuilt(library: Path, monkeypatch: pytest.MonkeyPatch, damage: str) -> None:
    folder = Path(str(library) + ".vectors")
    suffix, how = damage.split()
    path = folder / f"m{suffix}"
    calls = _rebuilds(monkeypatch)
    with Index.open(library) as store:
        for added in (False, True):  # the cache current, then with additions to append
            if added:
                _add(store, 1000, clustered(2, 64, 18))
            size = path.stat().st_size
            if how == "longer":
                with open(path, "ab") as out:
                    out.write(b"\1" * 40)
            else:
                os.truncate(path, size - 8)
            loaded = VectorMatrix.load(store, "m")
            assert len(calls) == 1 + added and len(loaded) == 600 + 2 * added
            _same_as_rebuilt(store, loaded)
