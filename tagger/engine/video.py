"""Video clips through FFmpeg's libraries (PyAV): a few keyframes spread over the clip, never the whole stream.

A clip is tagged from `frames` moments spread evenly over its length. For each, the file is sought
to the keyframe at or before that moment and only that keyframe is decoded (the decoder skips every
other frame), so a clip costs about `frames` photos whatever its length. Each frame is turned the way
the phone recorded it (the display matrix), then made the model's input like any photo.

Hostile files are bounded, not trusted: frame sizes over `decode.max_pixels` are refused from the
stream's header before anything is decoded, decoding stops at `video.max_seconds` of wall time with
the frames it has, and a container that claims more length than its frames reach is sampled where it
has frames. A file with no video stream, or whose stream gives no frame, is refused with the reason.
"""
from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image

from tagger.engine.decode import preprocess
from tagger.engine.labels import Tag
from tagger.engine.weights import Preprocess
from tagger.errors import DecodeError
from tagger.fileio import Folders, open_regular

MAX_PACKETS_PER_SAMPLE = 2_000  # demuxed after one seek before the sample is given up (a stream without keyframes)
# Frames decoded after a keyframe to reach a moment far from it: 5 s at 30 fps, a fraction of a second
# of decoding at 1080p; a clip whose keyframes are further apart is sampled where this gets to.
MAX_FORWARD_FRAMES = 150
# A keyframe this close before a sampled moment stands for it (phones write one every 1-2 s): only
# clips whose keyframes are further apart pay for decoding the frames in between.
NEAR_ENOUGH_S = 2.0
SAMPLED_HASH_ABOVE = 64 * 1024 * 1024  # bigger clips are hashed from spread-out blocks, not read whole
_HASH_BLOCKS = 64
_HASH_BLOCK = 256 * 1024


@dataclass(frozen=True)
class ClipBudget:
    """What one clip may cost: frames sampled, wall time spent decoding, pixels per frame."""

    frames: int = 8
    seconds: float = 30.0
    max_pixels: int = 100_000_000


@dataclass(frozen=True)
class Clip:
    """A clip's sampled frames, as model inputs, and what is known of it."""

    arrays: np.ndarray  # frames x 3 x crop x crop, float32
    times: tuple[float, ...]  # seconds into the clip of each frame
    width: int  # as shown, after the recorded rotation
    height: int
    duration: float  # seconds: the container's claim, or as far as its frames reach


def sampled_sha256(fh: BinaryIO, size: int) -> str:
    """The content hash of a clip: every byte up to SAMPLED_HASH_ABOVE, above it the size and 64
    blocks of 256 kB spread over the file (16 MB read whatever the clip's size, where a full hash of
    a 10 GB clip costs a minute). Two clips of one size that differ only between those blocks would
    share their tags: only a file made to collide could."""
    digest = hashlib.sha256()
    if size <= SAMPLED_HASH_ABOVE:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
        return digest.hexdigest()
    digest.update(b"tagger-sampled-1:%d:" % size)
    step = (size - _HASH_BLOCK) / (_HASH_BLOCKS - 1)
    for i in range(_HASH_BLOCKS):
        fh.seek(int(i * step))
        digest.update(fh.read(_HASH_BLOCK))
    return "s" + digest.hexdigest()[1:]  # marked: never equal to a whole-file hash


def sample_times(duration: float, frames: int) -> list[float]:
    """The moments a clip is sampled at: the middle of each of `frames` equal spans."""
    return [duration * (i + 0.5) / frames for i in range(frames)]


def sample_clip(fh: BinaryIO, budget: ClipBudget, spec: Preprocess) -> Clip:
    """The model's inputs from a clip's keyframes; DecodeError naming why it has none."""
    started = time.monotonic()
    with _opened(fh) as (container, stream):
        _check_size(stream, budget.max_pixels)
        duration = _duration(container, stream)
        arrays: list[np.ndarray] = []
        times: list[float] = []
        shown: tuple[int, int] | None = None  # the first frame's width and height, upright
        span = duration / budget.frames
        for target in sample_times(duration, budget.frames):
            if time.monotonic() - started > budget.seconds:
                break
            # with no length to spread over, the next keyframes in order
            near = max(span / 2, NEAR_ENOUGH_S)
            frame = _frame_near(container, stream, target, near, started, budget) if duration > 0 else None
            if frame is None and duration <= 0:
                frame = _next_keyframe(container, stream, started, budget)
            if frame is None:
                continue
            moment = _seconds(frame)
            if any(abs(moment - t) < 1e-3 for t in times):
                continue  # the same keyframe again (keyframes sparser than the samples)
            if frame.width * frame.height > budget.max_pixels:  # a stream whose size changes midway
                raise DecodeError(f"video frame of {frame.width}x{frame.height} pixels is over the limit "
                                  f"of {budget.max_pixels:,} (decode.max_pixels)")
            shown = shown or ((frame.height, frame.width) if _turns(frame) % 2 else (frame.width, frame.height))
            arrays.append(preprocess(Image.fromarray(upright(frame, 2 * spec.resize)), spec))
            times.append(moment)
        if not arrays:
            spent = time.monotonic() - started
            why = (f"no frame decoded within {budget.seconds:g} s (video.max_seconds)" if spent > budget.seconds
                   else "its video stream gives no frame (corrupt or truncated?)")
            raise DecodeError(f"video: {why}")
    order = np.argsort(times, kind="stable")
    duration = max(duration, max(times))
    assert shown is not None
    width, height = shown
    return Clip(np.stack([arrays[i] for i in order]), tuple(times[i] for i in order), width, height, duration)


def clip_or_error(path: Path, folders: Folders, budget: ClipBudget, spec: Preprocess) -> Clip | DecodeError:
    """sample_clip of a file, for a scan's decoder threads: the error returned, never raised (a decoder
    bug on one hostile clip becomes that clip's error, not the batch's)."""
    try:
        fh, _ = open_regular(path, folders)
        with fh:
            return sample_clip(fh, budget, spec)
    except DecodeError as exc:
        return exc
    except Exception as exc:
        return DecodeError(f"cannot decode video: {type(exc).__name__}: {exc}")


def frame_at(fh: BinaryIO, seconds: float, max_pixels: int) -> Image.Image:
    """The upright keyframe at or before `seconds` (the frame a tag came from: the same seek as the
    scan's), or the first one; DecodeError when there is none."""
    started = time.monotonic()
    budget = ClipBudget(1, 30.0, max_pixels)
    with _opened(fh) as (container, stream):
        _check_size(stream, max_pixels)
        frame = _frame_near(container, stream, max(0.0, seconds), 0.0005, started, budget)
        if frame is None:
            container.seek(0)
            frame = _next_keyframe(container, stream, started, budget)
        if frame is None:
            raise DecodeError("video stream gives no frame (corrupt or truncated?)")
        return Image.fromarray(upright(frame))


def upright(frame: Any, short_side: int | None = None) -> np.ndarray:
    """A decoded frame's RGB pixels turned as its display matrix says (phones record portrait clips
    as landscape pixels and a rotation).

    With `short_side`, a bigger frame is reduced to it by FFmpeg while it converts the colours (an
    area average, like a JPEG's draft decode): a 1080p frame shrunk by Pillow cost 6 ms of a clip's
    21 ms per frame.
    """
    width, height = int(frame.width), int(frame.height)
    if short_side and min(width, height) > short_side:
        scale = short_side / min(width, height)
        size = {"width": max(1, round(width * scale)), "height": max(1, round(height * scale))}
        pixels = frame.to_ndarray(format="rgb24", interpolation="AREA", **size)
    else:
        pixels = frame.to_ndarray(format="rgb24")
    turns = _turns(frame)
    return np.ascontiguousarray(np.rot90(pixels, turns)) if turns else pixels


def _turns(frame: Any) -> int:
    """Quarter turns counterclockwise that show a frame upright: PyAV gives FFmpeg's display-matrix
    angle, counterclockwise (a phone held upright records -90: a turn clockwise)."""
    try:
        return int(round(float(getattr(frame, "rotation", 0) or 0) / 90.0)) % 4
    except (TypeError, ValueError):
        return 0


def clip_tags(frame_tags: Sequence[Sequence[Tag]], times: Sequence[float], top_k: int) -> list[Tag]:
    """A clip's tags from its frames': each class at its best frame's score, with that frame's time.

    The best frame, not the mean: a clip that pans from the cat to the sofa shows both, and a mean
    would halve each. A class seen in one frame only is still seen."""
    best: dict[int, Tag] = {}
    for tags, moment in zip(frame_tags, times):
        for tag in tags:
            if tag.class_id not in best or tag.score > best[tag.class_id].score:
                best[tag.class_id] = replace(tag, frame_s=round(moment, 3))
    return sorted(best.values(), key=lambda t: (-t.score, t.class_id))[:top_k]


@contextmanager
def _opened(fh: BinaryIO) -> Iterator[tuple[Any, Any]]:
    """The container and its first video stream, the decoder set to output keyframes only."""
    try:
        import av
    except ImportError:  # optional: without PyAV a video is refused with this reason
        raise DecodeError("video support is not installed (pip install av)") from None
    try:
        container = av.open(fh, mode="r", metadata_errors="ignore")
    except av.error.FFmpegError as exc:
        raise DecodeError(f"not a video FFmpeg can read: {_reason(exc)}") from None
    try:
        if not container.streams.video:
            kinds: list[str] = sorted({str(s.type) for s in container.streams}) or ["no"]
            raise DecodeError(f"no video stream in this file (it has {', '.join(kinds)} streams)")
        stream = container.streams.video[0]
        stream.codec_context.skip_frame = "NONKEY"  # the decoder drops every frame but keyframes
        stream.codec_context.thread_count = 1  # one frame's memory, whatever the file asks for
        yield container, stream
    except av.error.FFmpegError as exc:
        raise DecodeError(f"corrupt video: {_reason(exc)}") from None
    finally:
        container.close()


def _check_size(stream: Any, max_pixels: int) -> None:
    """Refuse the frame size the stream's header announces when over `max_pixels`, before decoding."""
    width, height = int(stream.codec_context.width or 0), int(stream.codec_context.height or 0)
    if width * height > max_pixels:
        raise DecodeError(f"video claims {width}x{height} = {width * height:,} pixels per frame, over the limit "
                          f"of {max_pixels:,} (decode.max_pixels)")


def _duration(container: Any, stream: Any) -> float:
    """The clip's length in seconds: what the container claims, or where its packets really end when
    that is much less (a header that lies); 0 when neither is known."""
    claims = []
    if stream.duration and stream.time_base:
        claims.append(float(stream.duration * stream.time_base))
    if container.duration:
        claims.append(container.duration / 1_000_000)
    good = [c for c in claims if 0 < c < 1e7]  # 115 days: anything longer is not a clip's length
    claimed = min(good) if good else 0.0
    end = _packets_end(container, stream, claimed)
    if end is not None and (claimed <= 0 or end < 0.9 * claimed):
        return end
    return claimed


def _packets_end(container: Any, stream: Any, claimed: float) -> float | None:
    """Where the stream's packets end, read (not decoded) from the last keyframe before the claimed
    end; None when unknown (no packets, or more than MAX_PACKETS_PER_SAMPLE of them after it)."""
    import av

    base: Fraction = stream.time_base or Fraction(1, 1000)
    start = stream.start_time or 0
    end = None
    try:
        container.seek(int(max(claimed, 0.0) / base) + start if claimed > 0 else 2**62, stream=stream, backward=True)
        for count, packet in enumerate(container.demux(stream)):
            if count > MAX_PACKETS_PER_SAMPLE:
                return None
            if packet.pts is not None:
                finish = float((packet.pts - start + (packet.duration or 0)) * base)
                end = finish if end is None else max(end, finish)
    except av.error.FFmpegError:
        return end
    return end if end is not None and end > 0 else None


def _frame_near(
    container: Any, stream: Any, seconds: float, tolerance: float, started: float, budget: ClipBudget
) -> Any | None:
    """The frame at `seconds` or just before it: the keyframe at or before it where that is within
    `tolerance`; else (keyframes far apart: a screen recording, a long-GOP encoder) the frames after
    that keyframe are decoded, every one, up to `seconds`, at most MAX_FORWARD_FRAMES of them. The
    scan and the viewer's frame of a tag find the same frame this way."""
    import av

    frame = _keyframe_at(container, stream, seconds, started, budget)
    if frame is None or _seconds(frame) >= seconds - tolerance:
        return frame
    # The decoder gives a keyframe out only after reading on (its reordering delay): back to it, and
    # this time every frame decoded.
    _seek(container, stream, _seconds(frame))
    stream.codec_context.skip_frame = "DEFAULT"
    decoded = 0
    try:
        for count, packet in enumerate(container.demux(stream)):
            if count > MAX_PACKETS_PER_SAMPLE or decoded >= MAX_FORWARD_FRAMES or time.monotonic() - started > budget.seconds:
                break
            try:
                for later in packet.decode():
                    decoded += 1
                    if _seconds(later) > seconds + 0.0005:
                        return frame  # past it: the frame before stands
                    frame = later
                    if _seconds(later) >= seconds - tolerance:
                        return frame
            except av.error.InvalidDataError:
                continue
    except av.error.FFmpegError:
        pass
    finally:
        stream.codec_context.skip_frame = "NONKEY"
    return frame


def _keyframe_at(container: Any, stream: Any, seconds: float, started: float, budget: ClipBudget) -> Any | None:
    """The keyframe at or before `seconds`, or None (past the real end of a clip that claims more)."""
    _seek(container, stream, seconds)
    return _next_keyframe(container, stream, started, budget)


def _seek(container: Any, stream: Any, seconds: float) -> None:
    """To the keyframe at or before `seconds` (the decoder's buffers emptied)."""
    base: Fraction = stream.time_base or Fraction(1, 1000)
    start = stream.start_time or 0
    try:
        container.seek(int(round(seconds / base)) + start, stream=stream, backward=True, any_frame=False)
        stream.codec_context.flush_buffers()
    except Exception:  # noqa: BLE001 - an unseekable file: read on from where it is
        pass


def _next_keyframe(container: Any, stream: Any, started: float, budget: ClipBudget) -> Any | None:
    """The next decoded frame (keyframes only), within the packet and time budgets."""
    import av

    try:
        for count, packet in enumerate(container.demux(stream)):
            if count > MAX_PACKETS_PER_SAMPLE or time.monotonic() - started > budget.seconds:
                return None
            try:
                for frame in packet.decode():
                    return frame
            except av.error.InvalidDataError:
                continue  # one damaged packet: the next keyframe may still decode
    except av.error.EOFError:
        return None
    except av.error.FFmpegError:
        return None
    try:  # the end of the stream: frames the decoder still holds
        for frame in stream.codec_context.decode(None):
            return frame
    except av.error.FFmpegError:
        return None
    return None


def _seconds(frame: Any) -> float:
    moment = frame.time
    return float(moment) if moment is not None and moment >= 0 else 0.0


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return os.fsencode(str(text)).decode("utf-8", "backslashreplace")
