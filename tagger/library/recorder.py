"""The one writer of a user's library: sidecars first, then the index, for every file a scan touches.

Whatever classifies (here or on a cluster) hands its results to `record`; files that cannot be
tagged go to `fail`; moves and deletions keep sidecars and index rows together.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Container, Sequence
from dataclasses import dataclass
from pathlib import Path

from tagger.config import Config
from tagger.engine.labels import Tag
from tagger.errors import DiskError
from tagger.fileio import is_gone, synced_together
from tagger.index import CachedImage, Index
from tagger.index.records import FileStamp, ImageFacts
from tagger.library.jsonsidecar import SUFFIX, read_sidecar, remove_own_sidecar, sidecar_path, write_sidecar
from tagger.library.keywording import Retagger
from tagger.library.places import made_for, sidecar_folder
from tagger.library.summary import ScanSummary
from tagger.library.thumbcache import remove_thumbnails
from tagger.library.xmp import xmp_path
from tagger.tags.keywords import keyword_rows
from tagger.tags.terms import KeywordRow
from tagger.vectors.embeddings import Look, save_embedding
from tagger.vectors.learned import LearnedModels

log = logging.getLogger(__name__)

COPIES_TOGETHER = 256  # files of known contents recorded in one sync and one transaction


@dataclass(frozen=True)
class Copy:
    """A file whose content the index holds already (a copy, a move, a restore): no model run."""

    path: Path
    cached: CachedImage
    mtime_ns: int
    stamp: FileStamp | None


@dataclass(frozen=True)
class Follower:
    """A file whose content is being classified right now, for another file: recorded with it."""

    path: Path
    size: int
    mtime_ns: int
    stamp: FileStamp | None
    summary: ScanSummary


class Recorder:
    """Sidecars and index rows of one model's tags, under one config."""

    def __init__(self, config: Config, store: Index, model: str) -> None:
        self.config = config
        self.store = store
        self.model = model
        self.retagger = Retagger(config, store)
        self.retagger.check_settings()
        self.learned = LearnedModels(store, model)  # applied to each new image's embedding
        self._copies: list[Copy] = []  # waiting to be recorded together (record_copies)
        self._classifying: dict[str, list[Follower]] = {}  # contents out to the model, and their other files

    def reconfigure(self, config: Config) -> None:
        """A reloaded config: new files get the new rules and thresholds at once."""
        self.config = config
        self.retagger = Retagger(config, self.store)
        self.retagger.check_settings()

    def record(
        self,
        path: Path,
        facts: ImageFacts,
        mtime_ns: int,
        tags: Sequence[Tag],
        weights_sha256: str,
        look: Look | None,
        stamp: FileStamp | None = None,
    ) -> bool:
        """Sidecars first, then the index: a crash in between is repaired by the next scan.

        Keywords: rules on the raw tags, learned tags (of `look`'s features, else those stored), then
        the user's corrections. False when a sidecar could not be written (the reason is kept in the index).
        """
        rules, min_score = self.retagger.rules, self.config.model.min_score
        learned = self.learned.stored(facts.sha256) if look is None else self.learned.scores(look[0])
        keywords = keyword_rows(rules, tags, min_score, self.store.corrections(facts.sha256), learned)
        sidecar, note = self.retagger.sidecars.write(path, facts, self.model, weights_sha256, tags, keywords)
        try:
            with self.store.transaction(f"the tags of {path}"):
                if look is not None:  # a model run: its tags, embedding and learned tags
                    self.store.save_image(facts, self.model, weights_sha256, tags)
                    save_embedding(self.store, facts.sha256, self.model, *look, learned)
                self.store.save_keywords(facts.sha256, keywords)
                before = self.store.contents_of([str(path)]) - {facts.sha256}  # an edited photo's former content
                self.store.save_file(str(path), facts.sha256, facts.size, mtime_ns, sidecar, note, stamp)
                orphans = self.store.unheld(before)
        except DiskError:
            if sidecar is not None:  # no sidecar without its index row: the next scan writes both
                Path(sidecar).unlink(missing_ok=True)
            raise
        remove_thumbnails(self.config.index, orphans)
        if look is not None:
            cached = CachedImage(facts, self.model, weights_sha256, list(tags))
            for other in self._classifying.pop(facts.sha256, []):
                self._copies.append(Copy(other.path, cached, other.mtime_ns, other.stamp))
                other.summary.reused += 1
        return note is None

    def classifying(self, sha256: str) -> bool:
        """Whether this content is out to the model already; from now on it is (the caller sends it)."""
        if sha256 in self._classifying:
            return True
        self._classifying[sha256] = []
        return False

    def follow(self, sha256: str, follower: Follower) -> None:
        """Record `follower` with the content being classified: one model run for copies arriving together."""
        self._classifying[sha256].append(follower)

    def add_copy(self, copy: Copy, summary: ScanSummary) -> None:
        """A file of a known content, recorded with others (record_copies) once enough are waiting."""
        self._copies.append(copy)
        if len(self._copies) >= COPIES_TOGETHER:
            self._record_copies(summary)

    def flush(self, summary: ScanSummary) -> None:
        """The end of a scan or batch: the copies still waiting recorded. A content that never came
        back from the model (a stop) leaves its other files to the next scan."""
        self._classifying.clear()
        self._record_copies(summary)

    def abandon(self) -> None:
        """A scan or batch stopped by an error: the copies not recorded yet are left to the next scan."""
        self._classifying.clear()
        self._copies.clear()

    def _record_copies(self, summary: ScanSummary) -> None:
        copies, self._copies = self._copies, []
        if copies:
            summary.sidecar_errors += self.record_copies(copies)

    def record_copies(self, copies: Sequence[Copy]) -> int:
        """Files of contents already classified, recorded together: every sidecar written, then made
        durable by one sync (tagger.fileio.synced_together), then one transaction for all their rows.
        A kill at any moment leaves each file recorded whole (row and sidecars) or with no row, to be
        done again by the next scan. How many sidecars could not be written."""
        keywords: dict[str, list[KeywordRow]] = {}
        written: list[tuple[Copy, str | None, str | None]] = []
        rules, min_score = self.retagger.rules, self.config.model.min_score
        with synced_together():
            for copy in copies:
                facts, tags = copy.cached.facts, copy.cached.tags
                rows = keywords.get(facts.sha256)
                if rows is None:
                    rows = keywords[facts.sha256] = keyword_rows(
                        rules, tags, min_score, self.store.corrections(facts.sha256), self.learned.stored(facts.sha256)
                    )
                sidecar, note = self.retagger.sidecars.write(
                    copy.path, facts, self.model, copy.cached.weights_sha256, tags, rows
                )
                written.append((copy, sidecar, note))
        try:
            with self.store.transaction(f"the tags of {len(copies)} files"):
                for sha256, rows in keywords.items():
                    self.store.save_keywords(sha256, rows)
                for copy, sidecar, note in written:
                    facts = copy.cached.facts
                    self.store.save_file(str(copy.path), facts.sha256, facts.size, copy.mtime_ns, sidecar, note, copy.stamp)
        except DiskError:
            for _, sidecar, _ in written:
                if sidecar is not None:
                    Path(sidecar).unlink(missing_ok=True)
            raise
        return sum(note is not None for _, _, note in written)

    def fail(
        self,
        path: Path,
        sha256: str | None,
        size: int,
        mtime_ns: int,
        reason: str,
        summary: ScanSummary,
        stamp: FileStamp | None = None,
    ) -> None:
        """A file that cannot be tagged: said in the log, kept in the index with its reason."""
        log.warning("%s: %s", path, reason)
        with self.store.transaction(f"the failure of {path}"):
            self.store.save_failure(str(path), sha256, size, mtime_ns, reason, stamp)
        summary.failed += 1
        summary.failures.append((str(path), reason))
        for other in self._classifying.pop(sha256, []) if sha256 is not None else []:  # the same bytes fail the same way
            self.fail(other.path, sha256, other.size, other.mtime_ns, reason, other.summary, other.stamp)

    def sidecars_current(self, path: Path) -> bool:
        """Every sidecar the config asks for is there (else an unchanged file is written again)."""
        xmp, mirror = self.config.xmp, self.config.sidecar.folder
        return (not self.config.sidecar.enabled or sidecar_path(path, mirror).exists()) and (
            not xmp.enabled or xmp_path(path, xmp.style, mirror).exists()
        )

    def sidecars_listed(self, name: str, listed: Container[str]) -> bool:
        """sidecars_current for the image `name`, from the names in its sidecar folder (no stat):
        a scan lists each folder once. XMP `auto` is there under either name."""
        xmp = self.config.xmp
        if self.config.sidecar.enabled and name + SUFFIX not in listed:
            return False
        if not xmp.enabled:
            return True
        append, replace = name + ".xmp" in listed, (name.rpartition(".")[0] or name) + ".xmp" in listed
        if xmp.style == "append":
            return append
        if xmp.style == "replace":
            return replace
        return append or replace

    def shares_xmp(self, path: Path) -> bool:
        """Its XMP file may be another image's too (IMG_1.xmp of IMG_1.CR2 and IMG_1.JPG): it is merged
        with the keywords of those indexed, so it is recorded on its own, after them."""
        xmp = self.config.xmp
        return xmp.enabled and xmp_path(path, xmp.style, self.config.sidecar.folder).name == path.stem + ".xmp"

    def sidecar_of(self, path: Path) -> str | None:
        """Where the index should say `path`'s JSON sidecar is, when sidecars are written."""
        return str(sidecar_path(path, self.config.sidecar.folder)) if self.config.sidecar.enabled else None

    def move(self, src: Path, dst: Path) -> bool:
        """A renamed or moved file keeps its tags: index row and sidecar follow, no model run.

        False when `src` was never indexed (the caller tags `dst` as new instead).
        """
        if self.store.file_record(str(src)) is None:
            return False
        sidecar = self._move_sidecar(src, dst)  # first: a crash now leaves no orphan sidecar behind
        self._move_xmp(src, dst)
        with self.store.transaction():
            self.store.move_file(str(src), str(dst))
            self.store.set_sidecar(str(dst), sidecar)
            try:  # a rename sets the file's ctime: kept, so that the next scan does not read it again
                info = dst.stat()
                self.store.save_stamps([(str(dst), FileStamp(info.st_ctime_ns, info.st_ino))])
            except OSError:
                pass
        return True

    def move_tree(self, src: Path, dst: Path) -> int:
        """A renamed folder: its sidecars moved with it (in the mirror tree, moved here first)."""
        mirror = self.config.sidecar.folder
        old, new = sidecar_folder(src / "x", mirror), sidecar_folder(dst / "x", mirror)
        if mirror is not None:
            self._move_mirror_folder(old, new)
        with self.store.transaction():
            return self.store.move_tree(str(src), str(dst), (str(old), str(new)))

    def _move_mirror_folder(self, old: Path, new: Path) -> None:
        if not old.is_dir():
            return
        try:
            new.parent.mkdir(parents=True, exist_ok=True)
            os.rename(old, new)  # within tagger's own folder: one rename, whatever it holds
        except OSError as exc:
            log.warning("%s: sidecars not moved to %s: %s (rewritten at the next scan)", old, new, exc.strerror or exc)

    def forget(self, paths: Sequence[Path]) -> int:
        """Deleted files (a scan's, or the daemon's after the grace period): index rows and our
        orphan JSON sidecars go; how many were gone.

        An XMP sidecar stays: other tools and the user write to it too.
        """
        gone = [p for p in paths if is_gone(p)]
        if not gone:
            return 0
        with self.store.transaction("the removal of deleted files"):
            contents = self.store.contents_of([str(p) for p in gone])
            self.store.delete_files([str(p) for p in gone])
            orphans = self.store.unheld(contents)
        for path in gone:
            remove_own_sidecar(path, self.config.sidecar.folder)
        remove_thumbnails(self.config.index, orphans)
        return len(gone)

    def forget_tree(self, folder: Path) -> int:
        if not is_gone(folder):
            return 0
        mirror = self.config.sidecar.folder
        paths = [Path(p) for p in self.store.paths_under(str(folder))] if mirror is not None else []
        with self.store.transaction():
            contents = self.store.contents_under(str(folder))
            removed = self.store.delete_tree(str(folder))
            orphans = self.store.unheld(contents)
        remove_thumbnails(self.config.index, orphans)
        for path in paths:  # beside the images, the sidecars went with their folder; in the mirror tree, ours go now
            remove_own_sidecar(path, mirror)
        return removed

    def _move_sidecar(self, src: Path, dst: Path) -> str | None:
        """Rewrite the sidecar under the new name; None when there is none to move."""
        mirror = self.config.sidecar.folder
        old = sidecar_path(src, mirror)
        if not self.config.sidecar.enabled or not old.exists():
            return None
        try:
            document = read_sidecar(src, mirror)
            document["image"]["file"] = dst.name
            new = str(write_sidecar(dst, document, mirror))
            old.unlink()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: sidecar not moved to %s: %s (it is rewritten at the next scan)", old, dst, exc)
            return None
        return new

    def _move_xmp(self, src: Path, dst: Path) -> None:
        """The XMP sidecar follows its image; one already at the new name is merged into instead."""
        if not self.config.xmp.enabled:
            return
        mirror = self.config.sidecar.folder
        old, new = xmp_path(src, self.config.xmp.style, mirror), xmp_path(dst, self.config.xmp.style, mirror)
        if not old.exists() or old == new:
            return
        if new.exists():
            record = self.store.file_record(str(src))
            if record is not None and record.sha256 is not None:
                self.retagger.sidecars.write_xmp(dst, self.store.keywords(record.sha256))
            return
        try:
            os.replace(old, made_for(new, mirror))
        except OSError as exc:
            log.warning("%s: XMP sidecar not moved to %s: %s", old, new, exc.strerror or exc)
