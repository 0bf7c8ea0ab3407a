"""Make real video clips from the shipped real photos, for the tests and benchmarks of video support.

No video can be downloaded (the tests run offline), so this encodes genuine clips instead: each photo
in turn, centre-cropped to fill the frame, with a seeded one-pixel jitter per frame so the encoder does
real work while the picture stays plainly the photo. H.264 (MP4, MOV, M4V, MKV, 3GP), VP9 (WebM) or
MPEG-4 Part 2; a keyframe every 2 s by default; optionally a sine-tone audio track; optionally turned
the way a phone records (sideways pixels plus a display matrix saying how to show them).

Needs numpy, Pillow, PyAV (av >= 14, for VideoStream.set_display_rotation) and the sample photos of
scikit-image and matplotlib (see sample_photos.py).
Usage: python scripts/sample_video.py OUT.mp4 --seconds 60 --size 1920x1080 --photos chelsea,coffee
       [--codec vp9] [--rotation 90] [--fps 30] [--gop 60] [--audio] [--audio-only]
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import av
import numpy as np
import numpy.typing as npt
from av.audio.stream import AudioStream
from av.video.stream import VideoStream
from PIL import Image

# Suffix -> FFmpeg muxer. Named, not guessed: FFmpeg would write a .m4v as a raw MPEG-4 elementary stream.
CONTAINERS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".3gp": "3gp"}
CODECS = ("h264", "vp9", "mpeg4")
# Photo names this module adds to sample_photos.sample_sources()'s own.
ALIASES = {"motorcycle": "motorcycle_left"}
SAMPLE_RATE = 48_000
TONE_HZ = 440.0
JITTERS = ((0, 0), (1, 0), (0, 1), (1, 1))  # (dx, dy) pixel shifts; each frame shows one, seeded
SEED = 0

Pixels = npt.NDArray[np.uint8]


@functools.cache
def _sample_photos() -> ModuleType:
    """scripts/sample_photos.py, loaded by path: works whether this file is run as a script, imported as
    scripts.sample_video or with scripts/ on sys.path, and leaves sys.path alone."""
    loaded = sys.modules.get("sample_photos")
    if loaded is not None:
        return loaded
    path = Path(__file__).resolve().parent / "sample_photos.py"
    spec = importlib.util.spec_from_file_location("sample_photos", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def photo_names() -> list[str]:
    """The names photo() accepts."""
    return sorted({*_sample_photos().sample_sources(), *ALIASES})


def photo(name: str) -> Pixels:
    """RGB pixels (H x W x 3 uint8) of a real photo shipped by an installed package: "chelsea" (a cat),
    "coffee" (an espresso), "motorcycle", "rocket", "astronaut" (scikit-image), "grace_hopper" (matplotlib)."""
    sources: dict[str, Path] = _sample_photos().sample_sources()
    key = ALIASES.get(name, name)
    if key not in sources:
        raise KeyError(f"unknown photo {name!r}; known: {', '.join(photo_names())}")
    with Image.open(sources[key]) as img:
        return np.asarray(img.convert("RGB"))


def _fill(rgb: Pixels, width: int, height: int) -> Pixels:
    """`rgb` scaled to cover width x height, keeping its aspect, and centre-cropped to it (no bars)."""
    img = Image.fromarray(rgb)
    scale = max(width / img.width, height / img.height)
    w, h = max(width, round(img.width * scale)), max(height, round(img.height * scale))
    left, top = (w - width) // 2, (h - height) // 2
    img = img.resize((w, h), Image.Resampling.BICUBIC).crop((left, top, left + width, top + height))
    return np.asarray(img)


def _frames_of(rgb: Pixels, size: tuple[int, int], rotation: int) -> list[av.VideoFrame]:
    """The jittered variants of one photo as ready yuv420p frames, stored `size` (width, height) big and
    turned the camera's way: counter-clockwise by `rotation`, so that turning them clockwise by it shows
    the photo upright. Converted once here, so encoding a long clip costs no per-frame pixel work."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"need an H x W x 3 uint8 RGB array, got {rgb.shape} {rgb.dtype}")
    width, height = size
    shown = _fill(rgb, *((height, width) if rotation % 180 else (width, height)))
    frames = []
    for dx, dy in JITTERS:
        stored = np.ascontiguousarray(np.rot90(np.roll(shown, (dy, dx), axis=(0, 1)), k=rotation // 90))
        frames.append(av.VideoFrame.from_ndarray(stored, format="rgb24").reformat(format="yuv420p"))
    return frames


def _video_codec(codec: str, muxer: str) -> tuple[str, dict[str, str]]:
    """The FFmpeg encoder for `codec` in this build, and its fastest sensible options."""
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    if muxer == "webm" and codec != "vp9":
        raise ValueError(f"WebM holds VP8/VP9/AV1 only: use codec='vp9', not {codec!r}")
    if codec == "h264":
        name = "libx264" if "libx264" in av.codecs_available else "h264"
        return name, {"preset": "ultrafast", "crf": "23"} if name == "libx264" else {}
    if codec == "vp9":
        # Constant quality (bit rate 0 is set on the context), realtime speed, row threading.
        return "libvpx-vp9", {"deadline": "realtime", "cpu-used": "8", "row-mt": "1", "crf": "32"}
    return "mpeg4", {}


def _audio_stream(container: av.container.OutputContainer, muxer: str) -> AudioStream:
    """A mono sine-tone stream: AAC, or Opus where the container (WebM) takes no AAC."""
    if muxer == "webm":
        name = "libopus" if "libopus" in av.codecs_available else "opus"
    else:
        name = "aac"
    stream = container.add_stream(name, rate=SAMPLE_RATE)
    if not isinstance(stream, AudioStream):
        raise TypeError(f"{name} made a {type(stream).__name__}, not an audio stream")
    stream.layout = "mono"
    return stream


def _tone(start: int, stop: int) -> av.AudioFrame:
    """Samples start..stop of the tone, as a float planar mono frame (the encoder resamples it)."""
    t = np.arange(start, stop, dtype=np.float64) / SAMPLE_RATE
    samples = (0.2 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.float32).reshape(1, -1)
    frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    frame.pts = start
    return frame


def _muxer(out: Path) -> str:
    muxer = CONTAINERS.get(out.suffix.lower())
    if muxer is None:
        raise ValueError(f"unsupported container {out.suffix!r}; use one of {', '.join(CONTAINERS)}")
    return muxer


def write_clip(out: Path, frames_from: Sequence[Pixels], seconds: float, *, fps: int = 10,
               size: tuple[int, int] = (640, 360), codec: str = "h264", rotation: int = 0,
               gop: int | None = None, audio: bool = False) -> Path:
    """Write a `seconds` long clip of the photos `frames_from` to `out` and return `out`.

    The photos show in turn, each for an equal share of the clip, centre-cropped to fill the picture.
    The container comes from the suffix (.mp4 .m4v .mov .mkv .webm .3gp), `codec` is "h264", "vp9"
    (WebM needs it) or "mpeg4"; pixels are yuv420p, with a keyframe every `gop` frames (default 2 s).
    `size` (width, height, both even) is the stored frame, as a camera writes it. With `rotation`
    (90, 180 or 270: the clockwise turn that shows the clip upright, as the old `rotate` tag said; a
    phone held upright records 90) the stored pixels are the photo turned counter-clockwise by it and the
    video stream carries the display matrix saying so: a 90 shows as a portrait height x width picture.
    It reads back through PyAV as VideoFrame.rotation == -rotation (counter-clockwise, in -180..180).
    `audio` adds a mono 440 Hz tone track (AAC; Opus in WebM).
    """
    out = Path(out)
    muxer = _muxer(out)
    if rotation not in (0, 90, 180, 270):
        raise ValueError(f"rotation must be 0, 90, 180 or 270, got {rotation}")
    width, height = size
    if width <= 0 or height <= 0 or width % 2 or height % 2:
        raise ValueError(f"size must be positive and even for yuv420p, got {width}x{height}")
    if not frames_from:
        raise ValueError("need at least one photo")
    if fps <= 0 or seconds <= 0:
        raise ValueError(f"need positive fps and seconds, got {fps} and {seconds}")
    encoder, options = _video_codec(codec, muxer)
    photos = [_frames_of(rgb, size, rotation) for rgb in frames_from]
    count = max(1, round(seconds * fps))
    rng = np.random.default_rng(SEED)
    jitter = rng.integers(0, len(JITTERS), size=count)
    with av.open(str(out), "w", format=muxer) as container:
        stream = container.add_stream(encoder, rate=fps, options=options)
        if not isinstance(stream, VideoStream):
            raise TypeError(f"{encoder} made a {type(stream).__name__}, not a video stream")
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        ctx.gop_size = gop if gop is not None else fps * 2
        ctx.thread_count = 0  # as many as the encoder likes; libavcodec's default is one
        if codec == "vp9":
            ctx.bit_rate = 0
        elif codec == "mpeg4":
            ctx.bit_rate = max(200_000, width * height * fps // 10)
        if rotation:
            stream.set_display_rotation(-rotation)  # FFmpeg's display matrix angle is counter-clockwise
        sound = _audio_stream(container, muxer) if audio else None
        for i in range(count):
            frame = photos[i * len(photos) // count][jitter[i]]
            frame.pts = i  # the same frame objects are re-sent: the encoder takes a reference each time
            container.mux(stream.encode(frame))
            if sound is not None:
                container.mux(sound.encode(_tone(i * SAMPLE_RATE // fps, (i + 1) * SAMPLE_RATE // fps)))
        container.mux(stream.encode(None))
        if sound is not None:
            container.mux(sound.encode(None))
    return out


def audio_only(out: Path, seconds: float) -> Path:
    """Write `out` (.mp4 etc.) holding only a `seconds` long AAC tone and no video: a hostile case."""
    out = Path(out)
    muxer = _muxer(out)
    with av.open(str(out), "w", format=muxer) as container:
        sound = _audio_stream(container, muxer)
        total = max(1, round(seconds * SAMPLE_RATE))
        for start in range(0, total, SAMPLE_RATE):
            container.mux(sound.encode(_tone(start, min(total, start + SAMPLE_RATE))))
        container.mux(sound.encode(None))
    return out


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    return int(width), int(height)


def main(argv: list[str] | None = None) -> int:
    """Write one clip (or an audio-only file) and print its path and size."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", type=_size, default=(640, 360), help="stored WIDTHxHEIGHT, e.g. 1920x1080")
    parser.add_argument("--photos", default="chelsea,coffee", help="comma-separated names: " + ", ".join(photo_names()))
    parser.add_argument("--codec", choices=CODECS, help="default: vp9 for .webm, h264 otherwise")
    parser.add_argument("--rotation", type=int, default=0, choices=(0, 90, 180, 270))
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--gop", type=int, help="frames between keyframes (default: 2 s worth)")
    parser.add_argument("--audio", action="store_true", help="add a sine-tone audio track")
    parser.add_argument("--audio-only", action="store_true", help="write only an audio track, no video")
    args = parser.parse_args(argv)
    out: Path = args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.audio_only:
        written = audio_only(out, args.seconds)
    else:
        codec = args.codec or ("vp9" if out.suffix.lower() == ".webm" else "h264")
        photos = [photo(name.strip()) for name in args.photos.split(",") if name.strip()]
        written = write_clip(out, photos, args.seconds, fps=args.fps, size=args.size, codec=codec,
                             rotation=args.rotation, gop=args.gop, audio=args.audio)
    print(f"wrote {written} ({written.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
