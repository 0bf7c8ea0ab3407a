"""The similar-images search: the bit-code shortlist agrees with scoring every row, and its
cache is rebuilt, never misread, when its layout or the embeddings change."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tagger import similar
from tagger.index import Index
from tagger.index.vectors import encode
from tagger.similar import VectorMatrix


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
    from tagger.index.vectors import VectorRows

    index = tmp_path / "index.sqlite"
    _store_vectors(index, clustered(3, 8, 5))
    with Index.open(index) as store:
        rows = VectorRows(store.conn)
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


def test_an_index_from_before_the_stamps_gets_them(tmp_path: Path) -> None:
    import sqlite3

    from tagger.index.vectors import VectorRows

    index = tmp_path / "index.sqlite"
    _store_vectors(index, clustered(4, 8, 8))
    with sqlite3.connect(index) as conn:  # back to the schema of migration 7
        for trigger in ("embedding_written", "embedding_updated", "embedding_deleted"):
            conn.execute(f"DROP TRIGGER {trigger}")
        conn.execute("DROP TABLE embedding_changes")
        conn.execute("DELETE FROM schema_migrations WHERE version = 8")
    with Index.open(index) as store:
        rows = VectorRows(store.conn)
        before = rows.version("m")
        assert before != 0 and rows.version("nothing") == 0
        with store.transaction():
            store.conn.execute("DELETE FROM images WHERE sha256 = ?", (f"{0:064x}",))
        assert rows.version("m") != before
