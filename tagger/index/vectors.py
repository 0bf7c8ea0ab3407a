"""Embeddings and learned tags: their tables (migration 7, tagger.index.schema), read and written
over the index's connection by the similar, duplicates and learn features.

An embedding is keyed by content (sha256), like tags, so a moved or copied file keeps it;
it goes when its content's `images` row goes (ON DELETE CASCADE).
"""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from tagger.engine.features import unit

from tagger.fileio import utc_text

# Stored as int8, each vector scaled by its own largest magnitude (1,280 bytes for Lite0's 1280
# numbers; cosine similarity ignores the scale, and on real photos the top 10 similar images
# are the same as with float32: bench/bench_quality.py), with a 64-bit perceptual hash of the
# model's input (tagger.vectors.duplicates) beside it.
VECTOR_DTYPE = np.dtype(np.int8)


@dataclass(frozen=True)
class MissingEmbedding:
    """A content classified by the current model with no embedding yet, and a file that holds it."""

    sha256: str
    path: str


@dataclass(frozen=True)
class LearnedTag:
    name: str
    model: str
    weights: np.ndarray  # float32, one per embedding dimension
    bias: float
    threshold: float
    precision: float | None  # cross-validated, None with too few examples
    positives: int
    negatives: int


@dataclass(frozen=True)
class EmbeddingState:
    """A model's row of embedding_changes (migrations 8 and 9), all zero when it has none: `stamp`
    is renewed by every change, `removals` only by one that takes a row away or changes it (a
    delete, a replacement, an update), and `rows` moves by one with each row added or taken."""

    stamp: int
    rows: int
    removals: int


def quantise(vectors: np.ndarray) -> np.ndarray:
    """int8, each row scaled by its own largest magnitude: cosine similarity is unchanged by a scale."""
    v = np.asarray(vectors, dtype=np.float32)
    peak = np.maximum(np.abs(v).max(axis=-1, keepdims=True), 1e-12)
    quantised: np.ndarray = np.rint(v / peak * 127).astype(np.int8)
    return quantised


def encode(vector: np.ndarray) -> bytes:
    return bytes(quantise(np.asarray(vector, dtype=np.float32)[None])[0].tobytes())


def decode(blob: bytes) -> np.ndarray:
    """A stored embedding as a float32 unit vector."""
    return unit(np.frombuffer(blob, dtype=VECTOR_DTYPE))


class VectorRows:
    """Reads and writes of the embedding and learned-tag tables; writes inside the caller's transaction."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def save(self, sha256: str, model: str, vector: np.ndarray, image_hash: int) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO embeddings (sha256, model, dims, vector, image_hash) VALUES (?, ?, ?, ?, ?)",
            (sha256, model, int(vector.shape[-1]), encode(vector), image_hash),
        )

    def main_model(self) -> str | None:
        """The model most embeddings come from (a library switched models has a few of the other)."""
        row = self.conn.execute(
            "SELECT model FROM embeddings GROUP BY model ORDER BY COUNT(*) DESC, model LIMIT 1"
        ).fetchone()
        return None if row is None else str(row[0])

    def hashes(self, model: str) -> tuple[list[str], np.ndarray]:
        """(sha256s, their image hashes as int64) of every embedding of `model`, in sha256 order."""
        rows = self.conn.execute(
            "SELECT sha256, image_hash FROM embeddings WHERE model = ? ORDER BY sha256", (model,)
        ).fetchall()
        return [r[0] for r in rows], np.array([r[1] for r in rows], dtype=np.int64)

    def copies_by_content(self) -> dict[str, list[str]]:
        """Contents held by more than one tagged file: exact copies."""
        found: dict[str, list[str]] = {}
        for sha, path in self.conn.execute(
            """SELECT sha256, path FROM files WHERE status = 'tagged' AND sha256 IN
               (SELECT sha256 FROM files WHERE status = 'tagged' GROUP BY sha256 HAVING COUNT(*) > 1)
               ORDER BY sha256, path"""
        ):
            found.setdefault(sha, []).append(path)
        return found

    def vector(self, sha256: str) -> tuple[str, np.ndarray] | None:
        """(model, embedding) of a content."""
        row = self.conn.execute("SELECT model, vector FROM embeddings WHERE sha256 = ?", (sha256,)).fetchone()
        return None if row is None else (str(row[0]), decode(row[1]))

    def vectors(self, shas: Sequence[str], model: str) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        for start in range(0, len(shas), 500):
            part = list(shas[start : start + 500])
            marks = ",".join("?" * len(part))
            for sha, blob in self.conn.execute(
                f"SELECT sha256, vector FROM embeddings WHERE model = ? AND sha256 IN ({marks})", [model, *part]
            ):
                found[sha] = decode(blob)
        return found

    def version(self, model: str) -> int:
        """A new random value whenever an embedding of `model` is added, replaced or removed: one
        row's read (embedding_changes, kept by triggers), where counting them took 0.1 s at a million."""
        return self.state(model).stamp

    def state(self, model: str) -> EmbeddingState:
        row = self.conn.execute(
            "SELECT stamp, rows, removals FROM embedding_changes WHERE model = ?", (model,)
        ).fetchone()
        return EmbeddingState(0, 0, 0) if row is None else EmbeddingState(int(row[0]), int(row[1]), int(row[2]))

    @contextmanager
    def snapshot(self) -> Iterator[None]:
        """Reads that all see one state of the index, whatever is committed meanwhile (a read
        transaction; inside the caller's own transaction when there is one)."""
        if self.conn.in_transaction:
            yield
            return
        self.conn.execute("BEGIN")
        try:
            yield
        finally:
            if self.conn.in_transaction:
                self.conn.execute("COMMIT")

    def newest(self, model: str) -> tuple[str, list[str]]:
        """(the latest written_at of `model`'s embeddings, the sha256s written at exactly that
        time), ("", []) when there are none: where the similar-images cache's next append starts."""
        row = self.conn.execute("SELECT MAX(written_at) FROM embeddings WHERE model = ?", (model,)).fetchone()
        if row is None or row[0] is None:
            return "", []
        shas = self.conn.execute(
            "SELECT sha256 FROM embeddings WHERE model = ? AND written_at = ? ORDER BY sha256", (model, row[0])
        ).fetchall()
        return str(row[0]), [r[0] for r in shas]

    def written_since(self, model: str, since: str) -> list[tuple[str, str, bytes]]:
        """(sha256, written_at, vector) of `model`'s embeddings written at or after `since`, oldest
        first: a range of the embeddings_by_model index."""
        rows = self.conn.execute(
            "SELECT sha256, written_at, vector FROM embeddings WHERE model = ? AND written_at >= ?"
            " ORDER BY written_at, sha256",
            (model, since),
        ).fetchall()
        return [(str(sha), str(at), bytes(blob)) for sha, at, blob in rows]

    def all_vectors(self, model: str, batch: int = 10000) -> Iterator[tuple[list[str], np.ndarray]]:
        """Every embedding of `model` in chunks, (shas, N x D int8, as stored), in one pass in the
        table's order. Pages in sha256 order sorted the whole model again for each page: 85 s of
        queries at a million embeddings. One statement: one snapshot, however long reading takes."""
        cursor = self.conn.execute("SELECT sha256, vector FROM embeddings WHERE model = ?", (model,))
        while rows := cursor.fetchmany(batch):
            shas = [r[0] for r in rows]
            yield shas, np.frombuffer(b"".join(r[1] for r in rows), dtype=VECTOR_DTYPE).reshape(len(rows), -1)

    def missing(self, model: str) -> list[MissingEmbedding]:
        """Contents of `model` without its embedding, with one tagged file each to compute it from."""
        rows = self.conn.execute(
            """SELECT i.sha256, (SELECT f.path FROM files f WHERE f.sha256 = i.sha256 AND f.status = 'tagged' LIMIT 1)
               FROM images i WHERE i.model = ?
               AND NOT EXISTS (SELECT 1 FROM embeddings e WHERE e.sha256 = i.sha256 AND e.model = i.model)""",
            (model,),
        ).fetchall()
        return [MissingEmbedding(sha, path) for sha, path in rows if path is not None]

    def paths_of(self, shas: Sequence[str]) -> dict[str, list[str]]:
        """The tagged files holding each content, by path."""
        found: dict[str, list[str]] = {}
        for start in range(0, len(shas), 500):
            part = list(shas[start : start + 500])
            marks = ",".join("?" * len(part))
            for sha, path in self.conn.execute(
                f"SELECT sha256, path FROM files WHERE status = 'tagged' AND sha256 IN ({marks}) ORDER BY path", part
            ):
                found.setdefault(sha, []).append(path)
        return found

    def first_paths(self, shas: Sequence[str]) -> dict[str, tuple[str, int]]:
        """Each content's first tagged file by path, and how many tagged files hold it: a list
        shows each content once, whatever the number of its copies."""
        found: dict[str, tuple[str, int]] = {}
        for start in range(0, len(shas), 500):
            part = list(shas[start : start + 500])
            marks = ",".join("?" * len(part))
            for sha, path, copies in self.conn.execute(
                f"SELECT sha256, MIN(path), COUNT(*) FROM files WHERE status = 'tagged' AND sha256 IN ({marks}) "
                "GROUP BY sha256", part
            ):
                found[sha] = (path, int(copies))
        return found

    def sizes_of(self, shas: Sequence[str]) -> dict[str, tuple[int, int, int]]:
        """(width, height, bytes) of each content."""
        found: dict[str, tuple[int, int, int]] = {}
        for start in range(0, len(shas), 500):
            part = list(shas[start : start + 500])
            marks = ",".join("?" * len(part))
            for sha, w, h, size in self.conn.execute(
                f"SELECT sha256, width, height, size FROM images WHERE sha256 IN ({marks})", part
            ):
                found[sha] = (int(w), int(h), int(size))
        return found

    # -- learned tags ------------------------------------------------------------------------

    def add_examples(self, name: str, shas: Sequence[str], positive: bool) -> None:
        """The latest word about an image wins: an example moves from one side to the other."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO learned_examples (name, sha256, positive, added_at) VALUES (?, ?, ?, ?)",
            [(name, sha, int(positive), utc_text()) for sha in shas],
        )

    def examples(self, name: str) -> list[tuple[str, bool]]:
        rows = self.conn.execute(
            "SELECT sha256, positive FROM learned_examples WHERE name = ? ORDER BY sha256", (name,)
        ).fetchall()
        return [(sha, bool(positive)) for sha, positive in rows]

    def save_learned(self, tag: LearnedTag) -> None:
        self.conn.execute(
            """INSERT OR REPLACE INTO learned_tags
               (name, model, weights, bias, threshold, precision, positives, negatives, trained_at)
               VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            (
                tag.name, tag.model, np.asarray(tag.weights, dtype="<f4").tobytes(), tag.bias, tag.threshold,
                tag.precision, tag.positives, tag.negatives, utc_text(),
            ),
        )

    _LEARNED_COLUMNS = "name, model, weights, bias, threshold, precision, positives, negatives"

    @staticmethod
    def _learned_tag(row: tuple[Any, ...]) -> LearnedTag:
        name, m, w, b, t, p, pos, neg = row
        return LearnedTag(str(name), str(m), np.frombuffer(w, dtype="<f4"), float(b), float(t), p, int(pos), int(neg))

    def learned(self, model: str | None = None) -> list[LearnedTag]:
        rows = self.conn.execute(
            f"SELECT {self._LEARNED_COLUMNS} FROM learned_tags WHERE ? IS NULL OR model = ? ORDER BY name",
            (model, model),
        ).fetchall()
        return [self._learned_tag(row) for row in rows]

    def learned_tag(self, name: str) -> LearnedTag | None:
        """One learned tag by its exact name, or None: its threshold outlives a retraining."""
        row = self.conn.execute(f"SELECT {self._LEARNED_COLUMNS} FROM learned_tags WHERE name = ?", (name,)).fetchone()
        return None if row is None else self._learned_tag(row)

    def forget(self, name: str) -> bool:
        """Drop a learned tag with its examples and matches; whether there was anything to drop.

        Examples without a tag (a first training that failed) count: forgetting cleans them up too.
        """
        dropped = 0
        for table in ("learned_matches", "learned_examples", "learned_tags"):
            dropped += self.conn.execute(f"DELETE FROM {table} WHERE name = ?", (name,)).rowcount
        return dropped > 0

    def learned_version(self) -> tuple[int, str]:
        row = self.conn.execute("SELECT COUNT(*), COALESCE(MAX(trained_at), '') FROM learned_tags").fetchone()
        return int(row[0]), str(row[1])

    def matches_of(self, name: str) -> dict[str, float]:
        rows = self.conn.execute("SELECT sha256, score FROM learned_matches WHERE name = ?", (name,)).fetchall()
        return {sha: float(score) for sha, score in rows}

    def replace_matches(self, name: str, matches: dict[str, float]) -> None:
        self.conn.execute("DELETE FROM learned_matches WHERE name = ?", (name,))
        self.conn.executemany(
            "INSERT INTO learned_matches (name, sha256, score) VALUES (?, ?, ?)",
            [(name, sha, score) for sha, score in matches.items()],
        )

    def save_matches(self, sha256: str, found: Sequence[tuple[str, float]]) -> None:
        """A newly tagged content's learned tags (replacing any it had)."""
        self.conn.execute("DELETE FROM learned_matches WHERE sha256 = ?", (sha256,))
        self.conn.executemany(
            "INSERT INTO learned_matches (name, sha256, score) VALUES (?, ?, ?)",
            [(name, sha256, score) for name, score in found],
        )

    def learned_of(self, sha256: str) -> list[tuple[str, float]]:
        """(name, probability) of the learned tags a content matches."""
        rows = self.conn.execute(
            "SELECT name, score FROM learned_matches WHERE sha256 = ? ORDER BY name", (sha256,)
        ).fetchall()
        return [(str(n), float(s)) for n, s in rows]

    def learned_contents(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT sha256 FROM learned_matches")]
