"""Copy the real photos that ship inside scikit-image and matplotlib into a folder.

Used by the quickstart (a demo library to tag), the tests and the benchmarks.
Usage: python scripts/sample_photos.py DEST [--scale WIDTHxHEIGHT --copies N]
"""
from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from PIL import Image


def sample_sources() -> dict[str, Path]:
    """name -> path of each real photo shipped by an installed package."""
    import matplotlib
    import skimage

    skdata = Path(skimage.__file__).parent / "data"
    return {
        "chelsea": skdata / "chelsea.png",
        "coffee": skdata / "coffee.png",
        "motorcycle_left": skdata / "motorcycle_left.png",
        "rocket": skdata / "rocket.jpg",
        "astronaut": skdata / "astronaut.png",
        "grace_hopper": Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg",
    }


def more_sources() -> dict[str, Path]:
    """Further real photos shipped by scikit-image (some greyscale): more distinct scenes for benchmarks."""
    import skimage

    skdata = Path(skimage.__file__).parent / "data"
    names = ["motorcycle_right.png", "hubble_deep_field.jpg", "retina.jpg", "ihc.png", "camera.png", "coins.png",
             "moon.png", "brick.png", "grass.png", "gravel.png", "clock_motion.png"]
    return {Path(n).stem: skdata / n for n in names if (skdata / n).exists()}


def random_crop(img: Image.Image, aspect: float, fraction: float, rng: random.Random) -> Image.Image:
    """A crop of about `fraction` of the photo's area with the given aspect, at a random place."""
    cw = min(img.width, int((img.width * img.height * fraction * aspect) ** 0.5))
    ch = min(img.height, int(cw / aspect))
    cw = min(cw, int(ch * aspect))
    left, top = rng.randint(0, img.width - cw), rng.randint(0, img.height - ch)
    return img.crop((left, top, left + cw, top + ch))


def distinct_views(dest: Path, count: int, size: tuple[int, int], seed: int = 10) -> list[Path]:
    """`count` JPEGs of distinct content: seeded random crops (30-100% of the area), flips and
    colour changes of every shipped photo, each scaled to `size` (portrait for every fifth).

    Re-encodes of six pictures would test six answers; different crops of a photo put different
    things in the model's centre crop, so they are distinct inputs with their own near ties.
    """
    from PIL import ImageEnhance

    rng = random.Random(seed)
    sources = {**sample_sources(), **more_sources()}
    photos = {}
    for name, src in sources.items():
        with Image.open(src) as img:
            photos[name] = img.convert("RGB")
    names = sorted(photos)
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        name = names[i % len(names)]
        img = photos[name]
        w, h = (size[1], size[0]) if i % 5 == 4 else size
        view = random_crop(img, w / h, rng.uniform(0.3, 1.0), rng)
        if rng.random() < 0.5:
            view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        view = ImageEnhance.Brightness(view).enhance(rng.uniform(0.8, 1.2))
        view = ImageEnhance.Color(view).enhance(rng.uniform(0.7, 1.3))
        view = view.resize((w, h), Image.Resampling.BICUBIC)
        out = dest / f"{name}_view{i:04d}.jpg"
        view.save(out, "JPEG", quality=rng.randint(85, 95))
        written.append(out)
    return written


def write_samples(dest: Path, size: tuple[int, int] | None = None, copies: int = 1, quality: int = 90) -> list[Path]:
    """Write each sample photo as a JPEG (upscaled to `size` if given); `copies` variants each."""
    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, src in sample_sources().items():
        with Image.open(src) as img:
            rgb = img.convert("RGB")
            if size:
                rgb = rgb.resize(size, Image.Resampling.BICUBIC)
            for i in range(copies):
                out = dest / (f"{name}.jpg" if copies == 1 else f"{name}_{i:04d}.jpg")
                # A distinct comment (and a slightly different quality) per copy: distinct files with
                # distinct hashes, so each one costs a real decode and model run.
                rgb.save(out, "JPEG", quality=quality - (i % 5), comment=f"{name} copy {i}")
                written.append(out)
    return written


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--scale", help="resize every photo to WIDTHxHEIGHT, e.g. 4000x3000")
    parser.add_argument("--copies", type=int, default=1)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.scale.lower().split("x")) if args.scale else None
    paths = write_samples(args.dest, size, args.copies)  # type: ignore[arg-type]
    print(f"wrote {len(paths)} sample photos to {args.dest}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
