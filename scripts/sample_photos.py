"""Copy the real photos that ship inside scikit-image and matplotlib into a folder.

Used by the quickstart (a demo library to tag), the tests and the benchmarks.
Usage: python scripts/sample_photos.py DEST [--scale WIDTHxHEIGHT --copies N]
"""
from __future__ import annotations

import argparse
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
