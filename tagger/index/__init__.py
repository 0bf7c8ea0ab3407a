"""The SQLite index: every SQL statement of tagger lives in this package, one module per caller.

    db        connections, transactions, migrations (the generic core)
    identity  the index's id, whose WAL lies beside it, a note of damage found
    health    `tagger index check`: SQLite's checks and the identity
    schema    the numbered migrations: every table, index, trigger and view
    records   the frozen records the index hands back
    files     what scan and daemon write per file, and read back
    keywords  keywords, corrections, settings, pending sidecars
    retag     the bulk keyword rebuild of `tagger retag`
    search    the one search engine: a Search or a Listing, a sort, a cursor
    stats     library-wide counts
    vectors   embeddings and learned tags (VectorRows, over the same connection)

An image is keyed by its content hash, so a copy or a re-scan costs a hash, not a model run.
`Index` joins the parts over one connection: open it read-only to read, writable (one
writer at a time) to write.
"""
from __future__ import annotations

from tagger.index.db import Database, disk_error, fs, store_failure
from tagger.index.files import FileRows
from tagger.index.keywords import KeywordRows
from tagger.index.records import (
    CachedImage,
    Failure,
    FileRecord,
    GridItem,
    ImageDetail,
    SortKey,
    Stats,
    Status,
    StoredContent,
    TagCount,
    TaggedFile,
)
from tagger.index.retag import Retagging
from tagger.index.schema import LATEST, MIGRATIONS, Migration
from tagger.index.search import SORTS, Listing, SearchEngine, Sort
from tagger.index.stats import StatsReads
from tagger.index.vectors import VectorRows

__all__ = [
    "CachedImage", "Database", "Failure", "FileRecord", "GridItem", "ImageDetail", "Index", "LATEST", "Listing",
    "MIGRATIONS", "Migration", "SORTS", "Sort", "SortKey", "Stats", "Status", "StoredContent", "TagCount",
    "TaggedFile", "disk_error", "fs", "store_failure",
]


class Index(FileRows, KeywordRows, Retagging, SearchEngine, StatsReads):
    """The whole index over one connection: each part's methods, for the callers that need several."""

    @property
    def vectors(self) -> VectorRows:
        """Embeddings and learned tags, over this index's connection."""
        return VectorRows(self.conn)
