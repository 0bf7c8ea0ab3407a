"""The index's schema, as the numbered migrations that build it, oldest first.

Tables: images (one row per content), tags (its raw top-k guesses), files (paths pointing at
a content, or at the error that kept it out), tag_counts (tagged files per class and score
percent, kept by triggers), keywords and keyword_terms (what the rules and corrections made
of the tags, and the words that find them), corrections, settings, sidecars_pending, and
schema_migrations (tagger.index.db), embeddings (with embedding_changes, a change stamp, a
count and a removal stamp per model kept by triggers), learned_tags, learned_examples and learned_matches. View: file_tags. A clip's
images row has its duration and its tags the moment of their frame (frame_s).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Migration:
    """One step of the schema; it commits together with its row in schema_migrations."""

    number: int  # its version: applied in this order, never renumbered
    name: str
    sql: str


MIGRATIONS: tuple[Migration, ...] = (
    # images by content, their top-k tags, files pointing at them (or at their error).
    Migration(
        1,
        "images_tags_files",
        """
    CREATE TABLE images (
        sha256         TEXT PRIMARY KEY,
        size           INTEGER NOT NULL,
        width          INTEGER NOT NULL,
        height         INTEGER NOT NULL,
        model          TEXT NOT NULL,
        weights_sha256 TEXT NOT NULL,
        classified_at  TEXT NOT NULL
    );
    CREATE TABLE tags (
        sha256   TEXT NOT NULL REFERENCES images(sha256) ON DELETE CASCADE,
        rank     INTEGER NOT NULL,
        class_id INTEGER NOT NULL,
        wnid     TEXT NOT NULL,
        label    TEXT NOT NULL,
        label_zh TEXT NOT NULL,
        score    REAL NOT NULL,
        PRIMARY KEY (sha256, rank)
    ) WITHOUT ROWID;
    CREATE INDEX tags_by_class ON tags(class_id, score);
    CREATE TABLE files (
        path       TEXT PRIMARY KEY,
        sha256     TEXT,
        size       INTEGER NOT NULL,
        mtime_ns   INTEGER NOT NULL,
        status     TEXT NOT NULL CHECK (status IN ('tagged', 'failed')),
        error      TEXT,
        sidecar    TEXT,
        updated_at TEXT NOT NULL
    );
    CREATE INDEX files_by_sha256 ON files(sha256);
    CREATE VIEW file_tags AS
        SELECT f.path, t.rank, t.class_id, t.wnid, t.label, t.label_zh, t.score, i.model
        FROM files f JOIN images i ON i.sha256 = f.sha256 JOIN tags t ON t.sha256 = f.sha256
        WHERE f.status = 'tagged';
    """,
    ),
    # the viewer: newest-first and most-confident-first pages walk an index instead of sorting
    # every file (tags_top_by_score holds each image's best guess, rank 0).
    Migration(
        2,
        "viewer_sort_indexes",
        """
    CREATE INDEX files_tagged_by_mtime ON files(mtime_ns, path) WHERE status = 'tagged';
    CREATE INDEX tags_top_by_score ON tags(score) WHERE rank = 0;
    """,
    ),
    # the viewer's folder filter: a folder's files are counted and sorted by time from this
    # index alone (status is in it so that no file row is read).
    Migration(
        3,
        "folder_index",
        """
    CREATE INDEX files_tagged_by_path ON files(path, mtime_ns, status) WHERE status = 'tagged';
    """,
    ),
    # tagged files per class and score percent, kept by the database itself on every write, so
    # that the viewer's tag list costs a sum of at most 100,000 rows, not a join of every file
    # with its tags (6 to 60 seconds at a million files). INSERT OR REPLACE fires no delete
    # trigger (recursive_triggers is off), so a row about to be replaced is uncounted just
    # before. The backfill below takes about 10 s at a million files, once.
    Migration(
        4,
        "tag_counts",
        """
    CREATE TABLE tag_counts (
        class_id INTEGER NOT NULL,
        percent  INTEGER NOT NULL,
        files    INTEGER NOT NULL,
        PRIMARY KEY (class_id, percent)
    ) WITHOUT ROWID;
    INSERT INTO tag_counts (class_id, percent, files)
        SELECT t.class_id, CAST(t.score * 100 AS INTEGER), COUNT(*)
        FROM files f CROSS JOIN tags t WHERE t.sha256 = f.sha256 AND f.status = 'tagged' GROUP BY 1, 2;
    CREATE TRIGGER tag_counts_file_replaced BEFORE INSERT ON files BEGIN
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT t.class_id, CAST(t.score * 100 AS INTEGER), -1 FROM files f CROSS JOIN tags t
            WHERE f.path = NEW.path AND f.status = 'tagged' AND t.sha256 = f.sha256
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
    END;
    CREATE TRIGGER tag_counts_file_added AFTER INSERT ON files WHEN NEW.status = 'tagged' BEGIN
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT class_id, CAST(score * 100 AS INTEGER), 1 FROM tags WHERE sha256 = NEW.sha256
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
    END;
    CREATE TRIGGER tag_counts_file_removed AFTER DELETE ON files WHEN OLD.status = 'tagged' BEGIN
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT class_id, CAST(score * 100 AS INTEGER), -1 FROM tags WHERE sha256 = OLD.sha256
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
    END;
    CREATE TRIGGER tag_counts_file_changed AFTER UPDATE OF sha256, status ON files BEGIN
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT class_id, CAST(score * 100 AS INTEGER), -1 FROM tags
            WHERE sha256 = OLD.sha256 AND OLD.status = 'tagged'
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT class_id, CAST(score * 100 AS INTEGER), 1 FROM tags
            WHERE sha256 = NEW.sha256 AND NEW.status = 'tagged'
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
    END;
    CREATE TRIGGER tag_counts_tag_added AFTER INSERT ON tags BEGIN
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT NEW.class_id, CAST(NEW.score * 100 AS INTEGER), COUNT(*) FROM files
            WHERE sha256 = NEW.sha256 AND status = 'tagged'
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
    END;
    CREATE TRIGGER tag_counts_tag_removed AFTER DELETE ON tags BEGIN
        INSERT INTO tag_counts (class_id, percent, files)
            SELECT OLD.class_id, CAST(OLD.score * 100 AS INTEGER), -COUNT(*) FROM files
            WHERE sha256 = OLD.sha256 AND status = 'tagged'
        ON CONFLICT (class_id, percent) DO UPDATE SET files = files + excluded.files;
    END;
    """,
    ),
    # keywords (the rules applied to the raw tags, then the user's corrections), searched best
    # first through keyword_terms: a row per search word (the keyword and each of its
    # categories, English and Chinese, casefolded) and score of a keyword it finds, walked
    # from the top of (term, score). Corrections are keyed by content, so they survive moves,
    # re-tags and a change of model.
    Migration(
        5,
        "keywords_corrections_settings",
        """
    ALTER TABLE files ADD COLUMN added_at TEXT;
    UPDATE files SET added_at = updated_at;
    CREATE TABLE keywords (
        sha256     TEXT NOT NULL,
        keyword    TEXT NOT NULL,
        keyword_zh TEXT NOT NULL,
        path       TEXT NOT NULL,
        path_zh    TEXT NOT NULL,
        score      REAL NOT NULL,
        source     TEXT NOT NULL CHECK (source IN ('model', 'user')),
        PRIMARY KEY (sha256, keyword)
    ) WITHOUT ROWID;
    CREATE TABLE keyword_terms (
        term   TEXT NOT NULL,
        score  REAL NOT NULL,
        sha256 TEXT NOT NULL,
        PRIMARY KEY (term, score, sha256)
    ) WITHOUT ROWID;
    CREATE INDEX keyword_terms_by_sha256 ON keyword_terms(sha256, term);
    CREATE TABLE corrections (
        sha256     TEXT NOT NULL,
        keyword    TEXT NOT NULL,
        action     TEXT NOT NULL CHECK (action IN ('add', 'remove')),
        created_at TEXT NOT NULL,
        PRIMARY KEY (sha256, keyword)
    ) WITHOUT ROWID;
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    ),
    # contents whose sidecars a retag still has to rewrite: marked in the transaction that
    # changes their keywords, cleared as the files are written, so that a retag stopped in
    # between (a crash, Ctrl-C) is caught up by the next one.
    Migration(
        6,
        "sidecars_pending",
        """
    CREATE TABLE sidecars_pending (sha256 TEXT PRIMARY KEY) WITHOUT ROWID;
    """,
    ),
    # embeddings per content (the model's pooled features, int8, and a perceptual hash), deleted
    # with their content; learned tags: each one's linear model, its examples and its matches
    # (tagger.index.vectors).
    Migration(
        7,
        "embeddings_learned_tags",
        """
    CREATE TABLE embeddings (
        sha256     TEXT PRIMARY KEY REFERENCES images(sha256) ON DELETE CASCADE,
        model      TEXT NOT NULL,
        dims       INTEGER NOT NULL,
        vector     BLOB NOT NULL,
        image_hash INTEGER NOT NULL,
        written_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f', 'now'))
    );
    CREATE INDEX embeddings_by_model ON embeddings(model, written_at);
    CREATE TABLE learned_tags (
        name       TEXT PRIMARY KEY,
        model      TEXT NOT NULL,
        weights    BLOB NOT NULL,
        bias       REAL NOT NULL,
        threshold  REAL NOT NULL,
        precision  REAL,
        positives  INTEGER NOT NULL,
        negatives  INTEGER NOT NULL,
        trained_at TEXT NOT NULL
    );
    CREATE TABLE learned_examples (
        name     TEXT NOT NULL,
        sha256   TEXT NOT NULL,
        positive INTEGER NOT NULL CHECK (positive IN (0, 1)),
        added_at TEXT NOT NULL,
        PRIMARY KEY (name, sha256)
    ) WITHOUT ROWID;
    CREATE TABLE learned_matches (
        name   TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        score  REAL NOT NULL,
        PRIMARY KEY (name, sha256)
    ) WITHOUT ROWID;
    CREATE INDEX learned_matches_by_sha256 ON learned_matches(sha256, name);
""",
    ),
    # A change stamp per model, kept by triggers: the similar-images cache asks "has anything
    # changed?" with one row's read, where counting a million embeddings took a tenth of a second.
    # Each change draws a new random 64-bit stamp, so a cache beside an index that was recreated
    # or restored from a backup never matches by chance. INSERT OR REPLACE fires no delete
    # trigger: the insert trigger also stamps the model a replaced row had.
    Migration(
        8,
        "embedding_changes",
        """
    CREATE TABLE embedding_changes (model TEXT PRIMARY KEY, stamp INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO embedding_changes (model, stamp) SELECT model, random() FROM embeddings GROUP BY model;
    CREATE TRIGGER embedding_written BEFORE INSERT ON embeddings BEGIN
        UPDATE embedding_changes SET stamp = random()
            WHERE model = (SELECT model FROM embeddings WHERE sha256 = NEW.sha256);
        INSERT OR IGNORE INTO embedding_changes (model, stamp) VALUES (NEW.model, 0);
        UPDATE embedding_changes SET stamp = random() WHERE model = NEW.model;
    END;
    CREATE TRIGGER embedding_updated AFTER UPDATE ON embeddings BEGIN
        UPDATE embedding_changes SET stamp = random() WHERE model IN (OLD.model, NEW.model);
    END;
    CREATE TRIGGER embedding_deleted AFTER DELETE ON embeddings BEGIN
        UPDATE embedding_changes SET stamp = random() WHERE model = OLD.model;
    END;
""",
    ),
    # What changed since the similar-images cache was made, so that additions are appended to
    # it instead of rebuilding it (tagger.vectors.similar): `rows` counts the model's embeddings and
    # `removals`, a random value like the stamp, is renewed by whatever takes a row away or
    # changes one (a delete, a replacement, an update), never by adding a new content. The row
    # is added to AFTER the insert (an insert ignored or refused counts nothing); a replaced
    # row is taken off BEFORE it (INSERT OR REPLACE fires no delete trigger). A model's first
    # row is made by INSERT ... WHERE NOT EXISTS, not INSERT OR IGNORE: in a trigger, the outer
    # statement's OR REPLACE would override the IGNORE and reset the row. An INSERT OR IGNORE
    # that ignores its row (tagger makes none) is counted as a removal (`rows` one short,
    # `removals` renewed): the cache compares the growth of `rows` under the same `removals`,
    # so a miscount can only make it rebuild.
    Migration(
        9,
        "embedding_changes_rows",
        """
    DROP TRIGGER embedding_written;
    DROP TRIGGER embedding_updated;
    DROP TRIGGER embedding_deleted;
    ALTER TABLE embedding_changes ADD COLUMN rows INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE embedding_changes ADD COLUMN removals INTEGER NOT NULL DEFAULT 0;
    UPDATE embedding_changes SET stamp = random(), removals = random(),
        rows = (SELECT COUNT(*) FROM embeddings e WHERE e.model = embedding_changes.model);
    CREATE TRIGGER embedding_replaced BEFORE INSERT ON embeddings BEGIN
        UPDATE embedding_changes SET stamp = random(), removals = random(), rows = rows - 1
            WHERE model = (SELECT model FROM embeddings WHERE sha256 = NEW.sha256);
    END;
    CREATE TRIGGER embedding_written AFTER INSERT ON embeddings BEGIN
        INSERT INTO embedding_changes (model, stamp, rows, removals) SELECT NEW.model, 0, 0, random()
            WHERE NOT EXISTS (SELECT 1 FROM embedding_changes WHERE model = NEW.model);
        UPDATE embedding_changes SET stamp = random(), rows = rows + 1 WHERE model = NEW.model;
    END;
    CREATE TRIGGER embedding_updated AFTER UPDATE ON embeddings BEGIN
        INSERT INTO embedding_changes (model, stamp, rows, removals) SELECT NEW.model, 0, 0, 0
            WHERE NOT EXISTS (SELECT 1 FROM embedding_changes WHERE model = NEW.model);
        UPDATE embedding_changes SET stamp = random(), removals = random(), rows = rows - 1 WHERE model = OLD.model;
        UPDATE embedding_changes SET stamp = random(), removals = random(), rows = rows + 1 WHERE model = NEW.model;
    END;
    CREATE TRIGGER embedding_deleted AFTER DELETE ON embeddings BEGIN
        UPDATE embedding_changes SET stamp = random(), removals = random(), rows = rows - 1 WHERE model = OLD.model;
    END;
""",
    ),
    # Video clips: a clip's length (NULL for a still image), and the moment of the frame each of its
    # tags came from (NULL for a still image's tags). Adding nullable columns rewrites no row.
    Migration(
        10,
        "video_duration_frames",
        """
    ALTER TABLE images ADD COLUMN duration REAL;
    ALTER TABLE tags ADD COLUMN frame_s REAL;
""",
    ),
    # What tells a file from another of the same size and mtime (rsync --times, a restore): its
    # ctime and inode. NULL in rows from before: filled in by the next scan without reading the file.
    Migration(
        11,
        "files_ctime_inode",
        """
    ALTER TABLE files ADD COLUMN ctime_ns INTEGER;
    ALTER TABLE files ADD COLUMN inode INTEGER;
""",
    ),
)
LATEST = MIGRATIONS[-1].number
