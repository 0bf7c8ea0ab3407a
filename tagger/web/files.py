"""Which files the viewer may serve: only those inside the configured folders.

A path from a URL is refused, not repaired: `..`, `.`, empty segments and NUL never
appear in a link the viewer made. What is read follows the scan's policy (tagger.fileio):
regular files only, and a symlink only when it leads to one inside the folders, so every
file the scan tagged is served and nothing else is.

Names travel in URLs through `FsPathConverter`: any byte string a name can be, newlines
and bytes that are not UTF-8 included, comes back as the same name.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from PIL import ExifTags, Image
from werkzeug.exceptions import BadRequest, Forbidden, NotFound
from werkzeug.routing import PathConverter

from tagger.errors import DecodeError
from tagger.fileio import Folders, from_url_text, skipped_folder, url_text

MAX_SUBFOLDERS = 200


@dataclass(frozen=True)
class Crumb:
    name: str
    folder: str


class FsPathConverter(PathConverter):
    """`<fspath:raw>`: a path of any bytes. `.` of the usual path converter stops at a newline,
    and a byte that is not UTF-8 does not survive Werkzeug's decoding, so both are carried
    as url_text escapes."""

    regex = r"[^/][\s\S]*?"

    def to_python(self, value: str) -> str:
        return from_url_text(value)

    def to_url(self, value: str) -> str:
        return super().to_url(url_text(value))


class Library(Folders):
    """The configured folders (scans index paths under each one's real path, so URLs name those too)."""

    def url_path(self, raw: str) -> str:
        """The absolute path named by the `<fspath:...>` part of a URL (it has no leading slash)."""
        if "\x00" in raw or any(part in ("", ".", "..") for part in raw.split("/")):
            raise Forbidden("that path is refused: it is not a plain path inside the configured folders")
        path = "/" + raw
        if not self.inside(path):
            raise Forbidden("that path is outside the configured folders")
        return path

    def stays_inside(self, path: str) -> bool:
        """Refuses (403) an indexed path that leads out of the folders through a symlink; True if it
        is a regular file that can be read (as the scan decides: tagger.fileio)."""
        if not self.inside(os.path.realpath(path)):
            raise Forbidden("that file leads outside the configured folders")
        try:
            self.target(path)
        except DecodeError:
            return False
        return True

    def readable(self, path: str) -> Path:
        """The real regular file behind an indexed path, if it is there and inside the folders."""
        if not self.stays_inside(path):
            raise NotFound("that file is no longer there, or no longer a regular file (the next scan updates it)")
        return Path(self.target(path)[0])

    def folder(self, raw: str) -> str:
        """A folder filter from a query string: a configured folder or one inside it."""
        folder = from_url_text(raw).rstrip("/") or "/"
        if not folder.startswith("/") or "\x00" in folder or any(p in (".", "..") for p in folder.split("/")):
            raise BadRequest(f"folder {raw!r} is not an absolute path")
        if not self.inside(folder):
            raise BadRequest(f"folder {raw!r} is not inside a configured folder")
        return folder

    def crumbs(self, folder: str) -> list[Crumb]:
        """The configured folder holding `folder`, then each folder down to it."""
        root = self.root_of(folder)
        if root is None:
            return []
        crumbs = [Crumb(Path(root).name or root, root)]
        for part in Path(folder).relative_to(root).parts:
            crumbs.append(Crumb(part, str(Path(crumbs[-1].folder, part))))
        return crumbs

    def subfolders(self, folder: str) -> list[Crumb]:
        """Folders directly inside `folder`, less those scan skips (tagger.fileio.skipped_folder) and symlinks."""
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name.casefold())
        except OSError:
            return []
        found = []
        for entry in entries:
            if skipped_folder(entry.name) or not entry.is_dir(follow_symlinks=False):
                continue
            found.append(Crumb(entry.name, entry.path))
            if len(found) == MAX_SUBFOLDERS:
                break
        return found


def exif_facts(path: Path) -> dict[str, str]:
    """When and with what the photo was taken, if its EXIF says so (only the header is read)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a malformed EXIF block is the camera's problem, not the page's
            with Image.open(path) as img:
                exif = img.getexif()
                details = exif.get_ifd(ExifTags.IFD.Exif)
    except Exception:  # noqa: BLE001 - metadata only: a page without it is still a page
        return {}
    facts = {}
    taken = details.get(ExifTags.Base.DateTimeOriginal) or exif.get(ExifTags.Base.DateTime)
    if isinstance(taken, str) and (when := exif_date(taken)):
        facts["Taken"] = when
    camera = camera_name(str(exif.get(ExifTags.Base.Make, "")), str(exif.get(ExifTags.Base.Model, "")))
    if camera:
        facts["Camera"] = camera
    return facts


def exif_date(raw: str) -> str | None:
    """EXIF's "2014:09:19 16:08:30" as the page writes dates ("2014-09-19 16:08"); None for the
    blank or zero dates cameras write when their clock is unset; anything else as it is."""
    text = raw.strip("\x00 ")
    if not text or text.startswith("0000"):
        return None
    for pattern, shown in (("%Y:%m:%d %H:%M:%S", "%Y-%m-%d %H:%M"), ("%Y:%m:%d %H:%M", "%Y-%m-%d %H:%M"),
                           ("%Y:%m:%d", "%Y-%m-%d")):
        try:
            return datetime.strptime(text, pattern).strftime(shown)
        except ValueError:
            continue
    return text


def camera_name(make: str, model: str) -> str:
    """Make and model, without the make twice: most cameras repeat it in the model ("Canon" +
    "Canon PowerShot S95"), some by its first word ("NIKON CORPORATION" + "NIKON D750")."""
    make, model = make.strip("\x00 "), model.strip("\x00 ")
    words = make.split()
    if not make or not model:
        return make or model
    if model.casefold().startswith((make.casefold(), words[0].casefold())):
        return model
    return f"{make} {model}"
