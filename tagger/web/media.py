"""Image bytes: thumbnails and previews (by content hash), originals and sidecars (by path).

Every file read here is checked first: indexed, and really inside a configured folder.
"""
from __future__ import annotations

import logging
import mimetypes
import os
import re
import zlib
from pathlib import Path

from flask import Blueprint, Response, send_file, url_for
from werkzeug.exceptions import HTTPException, NotFound

from tagger.errors import DecodeError
from tagger.fileio import Folders, shown
from tagger.index import ImageDetail
from tagger.library.jsonsidecar import MAX_SIDECAR_BYTES
from tagger.web.context import indexed_file, store, viewer
from tagger.web.thumbs import PREVIEW_SIZE, TILE_SIZES

log = logging.getLogger(__name__)

# Python's table lacks these (or has them only on some systems): an original is sent with its real type.
mimetypes.add_type("image/avif", ".avif")
mimetypes.add_type("image/jxl", ".jxl")
for _type, _suffix in (("video/mp4", ".mp4"), ("video/mp4", ".m4v"), ("video/quicktime", ".mov"),
                       ("video/3gpp", ".3gp"), ("video/x-matroska", ".mkv"), ("video/webm", ".webm")):
    mimetypes.add_type(_type, _suffix)
MAX_FRAME_MS = 10**10  # 115 days: no clip is longer

blueprint = Blueprint("media", __name__)

SHA256 = re.compile(r"[0-9a-f]{64}")
IMMUTABLE = "private, max-age=31536000, immutable"  # named by content: a new photo gets a new URL
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f]")


@blueprint.get("/thumb/<sha256>")
def thumbnail(sha256: str) -> Response:
    return _rendition(sha256, viewer().config.web.thumb_size, _poster(sha256))


@blueprint.get("/thumb/<sha256>/<int:size>")
def tile(sha256: str, size: int) -> Response:
    """A grid tile: its short side `size` pixels (one of TILE_SIZES), its aspect kept up to 4:1."""
    if size not in TILE_SIZES:
        raise NotFound(f"a tile is {' or '.join(map(str, TILE_SIZES))} pixels on its short side")
    return _rendition(sha256, size, _poster(sha256), tile=True)


@blueprint.app_template_global()
def tile_srcset(sha256: str) -> str:
    """The `srcset` of a square tile: each size described by its short side, the side a square crop shows."""
    return ", ".join(f"{url_for('media.tile', sha256=sha256, size=size)} {size}w" for size in TILE_SIZES)


@blueprint.app_template_global()
def tile_url(sha256: str, size: int = TILE_SIZES[0]) -> str:
    return url_for("media.tile", sha256=sha256, size=size)


@blueprint.get("/preview/<sha256>")
def preview(sha256: str) -> Response:
    return _rendition(sha256, PREVIEW_SIZE, _poster(sha256))


@blueprint.get("/frame/<sha256>/<int:ms>")
def frame(sha256: str, ms: int) -> Response:
    """A clip's keyframe at or before `ms` milliseconds, screen-sized: the frame behind a tag."""
    if ms > MAX_FRAME_MS:
        raise NotFound(f"a frame time is at most {MAX_FRAME_MS} ms")
    return _rendition(sha256, PREVIEW_SIZE, ms)


def _poster(sha256: str) -> int | None:
    """A clip's poster, in ms: the frame of its best tag (None for a still image)."""
    if not SHA256.fullmatch(sha256):
        raise NotFound("not a content hash")
    seconds = store().poster_time(sha256)
    return None if seconds is None else int(round(seconds * 1000))


def _rendition(sha256: str, size: int, at_ms: int | None = None, tile: bool = False) -> Response:
    """From the cache, or made from any readable file still holding this content."""
    if not SHA256.fullmatch(sha256):
        raise NotFound("not a content hash")
    thumbnails = viewer().thumbnails
    cached = thumbnails.cached(sha256, size, at_ms, tile)
    for path in store().paths_with_content(sha256):
        try:
            source = viewer().library.readable(path)
        except HTTPException:
            continue
        if cached.is_file():
            response = send_file(cached, mimetype="image/jpeg", conditional=True)
        else:
            try:
                jpeg = thumbnails.make(source, sha256, size, at_ms, tile)
            except DecodeError as exc:
                log.warning("%s: no thumbnail: %s", path, exc)
                continue
            if jpeg is None:
                continue
            response = Response(jpeg, mimetype="image/jpeg")
        response.headers["Cache-Control"] = IMMUTABLE
        return response
    raise NotFound("no readable file in the configured folders holds this image now")


@blueprint.get("/original/<fspath:raw>")
def original(raw: str) -> Response:
    path = indexed_file(raw).path
    mimetype = mimetypes.guess_type(path)[0] or "application/octet-stream"
    return _send(viewer().library.readable(path), mimetype)


@blueprint.get("/sidecar/<fspath:raw>")
def sidecar(raw: str) -> Response:
    detail = indexed_file(raw)
    if not detail.sidecar:
        raise NotFound("this image has no sidecar")
    return _send(_sidecar_file(detail.sidecar), "application/json")


def _sidecar_file(sidecar: str) -> Path:
    """A sidecar the index names: beside its image, inside the folders, or in the sidecar folder's
    mirror tree (sidecar.folder), and nowhere else."""
    mirror = viewer().config.sidecar.folder
    if mirror is not None and Folders([mirror]).inside(os.path.realpath(sidecar)):
        try:
            return Path(Folders([mirror]).target(sidecar)[0])
        except DecodeError:
            raise NotFound("that sidecar is no longer there (the next scan writes it again)") from None
    return viewer().library.readable(sidecar)


def _send(path: Path, mimetype: str) -> Response:
    """A file by path, its name and ETag made from its bytes: Werkzeug's own would fail to encode
    a name that is not UTF-8, and a header cannot hold a newline."""
    info = path.stat()
    name = CONTROL_CHARACTERS.sub("_", shown(path.name))
    etag = f"{info.st_mtime}-{info.st_size}-{zlib.adler32(os.fsencode(path)) & 0xFFFFFFFF}"
    return send_file(path, mimetype=mimetype, conditional=True, download_name=name, etag=etag)


def sidecar_text(detail: ImageDetail) -> str | None:
    """The sidecar as written, for the image page; None when there is none to show."""
    if not detail.sidecar:
        return None
    try:
        with _sidecar_file(detail.sidecar).open(encoding="utf-8", errors="replace") as fh:
            return fh.read(MAX_SIDECAR_BYTES)
    except (HTTPException, OSError):
        return None

