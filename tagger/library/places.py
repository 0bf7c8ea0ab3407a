"""Where an image's sidecars live: beside it, or in a mirror tree under a folder of tagger's own.

Beside the image is where darktable, digiKam and Lightroom look. A library mounted read-only (a NAS
share in a container) cannot take them there: with `sidecar.folder`, the sidecars of
/photos/2024/IMG_1.jpg are <folder>/photos/2024/IMG_1.jpg.tags.json (and .xmp), as PhotoPrism keeps
its sidecar storage. The image's absolute path is mirrored whole, so two configured folders never
share a sidecar.
"""
from __future__ import annotations

from pathlib import Path


def sidecar_folder(image: Path, mirror: Path | None) -> Path:
    """The folder holding `image`'s sidecars: its own, or its place in the mirror tree."""
    return image.parent if mirror is None else mirror / image.parent.relative_to(image.parent.anchor)


def beside(image: Path, name: str, mirror: Path | None) -> Path:
    """The sidecar called `name` of `image`, in sidecar_folder."""
    return sidecar_folder(image, mirror) / name


def made_for(path: Path, mirror: Path | None) -> Path:
    """`path` (a sidecar about to be written), its mirror folders made first where needed."""
    if mirror is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    return path
