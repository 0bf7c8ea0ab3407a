"""Real-photo test sets for the embedding benchmarks: shots of each subject, and copies of each shot.

A "shot" is a distinct crop of a shipped photo (70% of its area, framed from another corner,
its own brightness, sometimes flipped): another picture of the same scene, as a burst or the
same scene a minute later is.
A "copy" is the same shot resized, recompressed, slightly cropped or re-exported.
"""
from __future__ import annotations

import io
import random
import sys
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageEnhance

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sample_photos import more_sources, sample_sources  # noqa: E402

COPY_KINDS = ("resized to 50%", "recompressed at quality 40", "cropped 4% per side", "re-exported as PNG at 70%, +5% contrast")


@dataclass(frozen=True)
class Picture:
    path: Path
    subject: str  # the shipped photo it comes from
    shot: int  # which shot of that subject; copies share it
    kind: str  # "original" or one of COPY_KINDS


def _copy(shot: Image.Image, kind: str) -> tuple[Image.Image, str]:
    if kind == COPY_KINDS[0]:
        return shot.resize((shot.width // 2, shot.height // 2), Image.Resampling.LANCZOS), "JPEG"
    if kind == COPY_KINDS[1]:
        buffer = io.BytesIO()
        shot.save(buffer, "JPEG", quality=40)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"), "JPEG"
    if kind == COPY_KINDS[2]:
        dx, dy = shot.width * 4 // 100, shot.height * 4 // 100
        return shot.crop((dx, dy, shot.width - dx, shot.height - dy)), "JPEG"
    smaller = shot.resize((shot.width * 7 // 10, shot.height * 7 // 10), Image.Resampling.BICUBIC)
    return ImageEnhance.Contrast(smaller).enhance(1.05), "PNG"


def make_set(
    dest: Path, shots_per_subject: int = 4, seed: int = 14, subjects: list[str] | None = None
) -> list[Picture]:
    """Every shipped photo (or those named), `shots_per_subject` shots each, every shot with its copies."""
    rng = random.Random(seed)
    dest.mkdir(parents=True, exist_ok=True)
    pictures = []
    sources = {**sample_sources(), **more_sources()}
    for subject, src in sorted(sources.items()):
        if subjects is not None and subject not in subjects:
            continue
        with Image.open(src) as img:
            photo = img.convert("RGB")
        for shot_no in range(shots_per_subject):
            # 70% of the photo's area, framed from another corner each time: the camera moved.
            cw, ch = int(photo.width * 0.7 ** 0.5), int(photo.height * 0.7 ** 0.5)
            corner = shot_no % 4
            left = (photo.width - cw) * (corner % 2) + rng.randint(-5, 5) * (1 - 2 * (corner % 2))
            top = (photo.height - ch) * (corner // 2) + rng.randint(-5, 5) * (1 - 2 * (corner // 2))
            left, top = max(0, min(left, photo.width - cw)), max(0, min(top, photo.height - ch))
            shot = photo.crop((left, top, left + cw, top + ch))
            if rng.random() < 0.3:
                shot = shot.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            shot = ImageEnhance.Brightness(shot).enhance(rng.uniform(0.85, 1.15))
            path = dest / f"{subject}_shot{shot_no}.jpg"
            shot.save(path, "JPEG", quality=92)
            pictures.append(Picture(path, subject, shot_no, "original"))
            for k, kind in enumerate(COPY_KINDS):
                image, fmt = _copy(shot, kind)
                out = dest / f"{subject}_shot{shot_no}_copy{k}.{'png' if fmt == 'PNG' else 'jpg'}"
                image.save(out, fmt, **({"quality": 88} if fmt == "JPEG" else {}))
                pictures.append(Picture(out, subject, shot_no, kind))
    return pictures
