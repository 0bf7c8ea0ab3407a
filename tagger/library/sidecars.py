"""Writing a content's keywords out next to its files: the JSON sidecar and, when enabled, XMP.

The only writer of sidecars, for scan, daemon, retag and corrections alike. A sidecar that
cannot be written is logged and noted; the keywords stay in the index either way.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tagger.config import Config, SidecarConfig, XmpConfig
from tagger.fileio import write_problem
from tagger.index import Index
from tagger.tags.keywords import machine_keywords
from tagger.engine.labels import Tag
from tagger.index.records import ImageFacts
from tagger.library.jsonsidecar import refresh_sidecar, remove_own_sidecar, sidecar_document
from tagger.tags.terms import KeywordRow
from tagger.library.xmp import XmpError, strip_xmp, update_xmp, xmp_path

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SidecarSettings:
    """The settings that decide what every sidecar holds and where it is: when they change, every
    content's sidecars are rewritten (tagger.library.keywording), and those of the former settings
    lose tagger's entries."""

    json: bool
    folder: str | None
    xmp: bool
    style: str
    prefix: str

    @classmethod
    def of(cls, config: Config) -> SidecarSettings:
        folder = config.sidecar.folder
        return cls(config.sidecar.enabled, None if folder is None else str(folder),
                   config.xmp.enabled, config.xmp.style, config.xmp.prefix)

    @classmethod
    def default(cls) -> SidecarSettings:
        """What an index from before these settings were stored was written with, as far as can be told."""
        xmp = XmpConfig()
        return cls(SidecarConfig().enabled, None, xmp.enabled, xmp.style, xmp.prefix)

    @staticmethod
    def dump(settings: Sequence[SidecarSettings]) -> str:
        return json.dumps([asdict(s) for s in settings], sort_keys=True)

    @classmethod
    def load(cls, text: str | None) -> list[SidecarSettings] | None:
        """Stored settings; None when they cannot be read."""
        try:
            return [cls(**item) for item in json.loads(text or "[]")]
        except (TypeError, ValueError):
            return None

    @property
    def mirror(self) -> Path | None:
        return None if self.folder is None else Path(self.folder)


class SidecarWriter:
    """JSON and XMP sidecars from stored or fresh keywords, as the config asks.

    With `index`, an XMP file that the RAW and the JPEG of one picture share (IMG_1.xmp beside
    IMG_1.CR2 and IMG_1.JPG) gets the keywords of all of them: the last one written never takes
    away what the others put there. `formers`: sidecar settings in use before the current ones,
    whose sidecars elsewhere (another XMP naming or sidecar.folder) or entries (another XMP prefix)
    are taken out as each file is written, so that tagger's keywords are in one place only.
    """

    def __init__(self, config: Config, index: Index | None = None) -> None:
        self.config = config
        self.index = index
        self.formers: tuple[SidecarSettings, ...] = ()

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
        sidecar, note, _ = self.refresh(path, facts, model, weights_sha256, tags, rows)
        return sidecar, note

    def refresh(
        self,
        path: Path,
        facts: ImageFacts,
        model: str,
        weights_sha256: str,
        tags: Sequence[Tag],
        rows: Sequence[KeywordRow],
    ) -> tuple[str | None, str | None, bool]:
        """write, and whether any sidecar changed: one that already holds all this is not written again."""
        sidecar, note, changed = None, None, False
        folder = self.config.sidecar.folder
        if self.config.sidecar.enabled:
            document = sidecar_document(path, facts, model, weights_sha256, tags, [r.as_dict() for r in rows])
            try:
                written, changed = refresh_sidecar(path, document, folder)
                sidecar = str(written)
            except OSError as exc:
                note = f"sidecar not written: {write_problem(exc, path)}"
                log.warning("%s: %s (tags are in the index)", path, note)
            for former in self.formers:
                if former.json and former.mirror != folder:
                    changed |= remove_own_sidecar(path, former.mirror)
        if self.config.xmp.enabled:
            changed |= self.write_xmp(path, rows)
        return sidecar, note, changed

    def write_xmp(self, path: Path, rows: Sequence[KeywordRow]) -> bool:
        """Merge the keywords into the image's XMP sidecar; whether a file changed."""
        xmp = self.config.xmp
        mirror = self.config.sidecar.folder
        target = xmp_path(path, xmp.style, mirror)
        if self.index is not None and target.name == path.stem + ".xmp":
            rows = [*rows, *self._siblings_keywords(path)]
        changed = False
        former_prefixes = []
        for former in self.formers:
            if not former.xmp:
                continue
            place = xmp_path(path, former.style, former.mirror)
            if place == target:
                former_prefixes.append(former.prefix)
                continue
            try:
                changed |= strip_xmp(place, former.prefix)
            except XmpError as exc:
                log.warning("%s (tagger's keywords there are left; they are now in %s)", exc, target)
        try:
            changed |= update_xmp(
                path,
                machine_keywords(rows),
                style=self.config.xmp.style,
                prefix=self.config.xmp.prefix,
                user=list(dict.fromkeys(r.keyword for r in rows if r.source == "user")),
                mirror=mirror,
                former_prefixes=former_prefixes,
            )[1]
        except XmpError as exc:
            log.warning("%s (keywords are in the index and the JSON sidecar)", exc)
        return changed

    def _siblings_keywords(self, path: Path) -> list[KeywordRow]:
        """The stored keywords of the other indexed images named like `path` but for the extension."""
        assert self.index is not None
        return [row for _, sha256 in self.index.tagged_beside(str(path)) for row in self.index.keywords(sha256)]

    def rewrite(
        self, index: Index, shas: Sequence[str], on_progress: Callable[[int], None] | None = None
    ) -> int:
        """The sidecars of every file of these contents, from the stored keywords; their
        pending marks cleared once written. How many files' sidecars changed (those already
        up to date are read, not written)."""
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
                sidecar, _, changed = self.refresh(Path(path), facts, model, weights_sha256, content.tags, content.keywords)
                if sidecar is not None:
                    done.append((path, sidecar))
                written += changed
                if on_progress is not None:
                    on_progress(1)
        with index.transaction("which sidecars were rewritten"):
            for path, sidecar in done:
                index.set_sidecar(path, sidecar)
            index.clear_sidecars_pending(shas)
        return written
