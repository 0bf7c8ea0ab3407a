"""Writing a content's keywords out next to its files: the JSON sidecar and, when enabled, XMP.

The only writer of sidecars, for scan, daemon, retag and corrections alike. A sidecar that
cannot be written is logged and noted; the keywords stay in the index either way.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from tagger.config import Config
from tagger.fileio import write_problem
from tagger.index import Index
from tagger.tags.keywords import machine_keywords
from tagger.engine.labels import Tag
from tagger.index.records import ImageFacts
from tagger.library.jsonsidecar import sidecar_document, write_sidecar
from tagger.tags.terms import KeywordRow
from tagger.library.xmp import XmpError, write_xmp, xmp_path

log = logging.getLogger(__name__)


class SidecarWriter:
    """JSON and XMP sidecars from stored or fresh keywords, as the config asks.

    With `index`, an XMP file that the RAW and the JPEG of one picture share (IMG_1.xmp beside
    IMG_1.CR2 and IMG_1.JPG) gets the keywords of all of them: the last one written never takes
    away what the others put there.
    """

    def __init__(self, config: Config, index: Index | None = None) -> None:
        self.config = config
        self.index = index

    @property
    def enabled(self) -> bool:
        return self.config.sidecar.enabled or self.config.xmp.enabled

    def write(
        self,
        path: Path,
        facts: ImageFacts,
        model: str,
        weights_sha256: str,
        tags: Sequence[Tag],
        rows: Sequence[KeywordRow],
    ) -> tuple[str | None, str | None]:
        """JSON sidecar (and XMP when enabled): (the JSON sidecar's path, why it is missing)."""
        sidecar, note = None, None
        if self.config.sidecar.enabled:
            document = sidecar_document(path, facts, model, weights_sha256, tags, [r.as_dict() for r in rows])
            try:
                sidecar = str(write_sidecar(path, document, self.config.sidecar.folder))
            except OSError as exc:
                note = f"sidecar not written: {write_problem(exc, path)}"
                log.warning("%s: %s (tags are in the index)", path, note)
        if self.config.xmp.enabled:
            self.write_xmp(path, rows)
        return sidecar, note

    def write_xmp(self, path: Path, rows: Sequence[KeywordRow]) -> None:
        xmp = self.config.xmp
        mirror = self.config.sidecar.folder
        if self.index is not None and xmp_path(path, xmp.style, mirror).name == path.stem + ".xmp":
            rows = [*rows, *self._siblings_keywords(path)]
        try:
            write_xmp(
                path,
                machine_keywords(rows),
                style=self.config.xmp.style,
                prefix=self.config.xmp.prefix,
                user=list(dict.fromkeys(r.keyword for r in rows if r.source == "user")),
                mirror=mirror,
            )
        except XmpError as exc:
            log.warning("%s (keywords are in the index and the JSON sidecar)", exc)

    def _siblings_keywords(self, path: Path) -> list[KeywordRow]:
        """The stored keywords of the other indexed images named like `path` but for the extension."""
        assert self.index is not None
        return [row for _, sha256 in self.index.tagged_beside(str(path)) for row in self.index.keywords(sha256)]

    def rewrite(
        self, index: Index, shas: Sequence[str], on_progress: Callable[[int], None] | None = None
    ) -> int:
        """The sidecars of every file of these contents, from the stored keywords; their
        pending marks cleared once written. How many files."""
        if not self.enabled:
            return 0
        written = 0
        done: list[tuple[str, str]] = []
        for content in index.contents(shas):
            image = index.image_facts(content.sha256)
            if image is None:
                continue
            facts, model, weights_sha256 = image
            for path in index.paths_with_content(content.sha256):
                sidecar, _ = self.write(Path(path), facts, model, weights_sha256, content.tags, content.keywords)
                if sidecar is not None:
                    done.append((path, sidecar))
                written += 1
                if on_progress is not None:
                    on_progress(1)
        with index.transaction("which sidecars were rewritten"):
            for path, sidecar in done:
                index.set_sidecar(path, sidecar)
            index.clear_sidecars_pending(shas)
        return written
