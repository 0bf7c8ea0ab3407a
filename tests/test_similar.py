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
