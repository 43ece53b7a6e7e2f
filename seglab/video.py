"""Video files in and out, streamed frame by frame with PyAV (`seglab[video]`), for `seglab predict`.

`read_frames` decodes one frame at a time (never the whole video) as RGB uint8 [H, W, 3]; a file that
cannot be opened, a frame that cannot be decoded, or a video that ends before the frames its header
declares (a truncated file) is a `BadSampleError` naming the file and the frame. `VideoWriter` encodes
frames into the same container format at the same size and frame rate, written to a temp file beside
the target and renamed when complete, so an interrupted or failed prediction leaves no partial video.
Frames are numbered from 1 in messages and file names, as ffmpeg numbers images.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from seglab.errors import BadSampleError, ConfigError
from seglab.plugins import optional_import
from seglab.runs import fsync_dir, temp_path

# Container format (for PyAV) and encoder of each video suffix seglab reads and writes. H.264 and VP9 take
# any size (odd ones in 4:4:4 chroma); MPEG-4 part 2 is what AVI players expect.
VIDEO_FORMATS = {
    ".mp4": ("mp4", "libx264"),
    ".mkv": ("matroska", "libx264"),
    ".avi": ("avi", "mpeg4"),
    ".webm": ("webm", "libvpx-vp9"),
}
VIDEO_SUFFIXES = tuple(VIDEO_FORMATS)
DURATION_TAG = re.compile(r"^(\d+):(\d\d):(\d\d(?:\.\d+)?)$")


def is_video(path: str | Path) -> bool:
    """Return True when the file name has a video suffix seglab reads (.mp4, .mkv, .avi, .webm)."""
    return Path(path).suffix.lower() in VIDEO_FORMATS


def _av():
    return optional_import("av", "video", "reading and writing videos")


@dataclass(frozen=True)
class VideoInfo:
    """What a video's header says: size, frame rate, declared frame count (0: unknown) and duration (s)."""

    width: int
    height: int
    rate: Fraction
    frames: int
    duration: float | None


def _stream_duration(stream) -> float | None:
    """Return the video stream's own duration in seconds (its header field, else Matroska's DURATION tag)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    match = DURATION_TAG.match(stream.metadata.get("DURATION", ""))
    if match:
        hours, minutes, seconds = match.groups()
        return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
    return None


def _unreadable(path: Path, err: Exception, frame: int | None = None) -> BadSampleError:
    where = "unreadable video" if frame is None else f"unreadable video at frame {frame}"
    return BadSampleError(path, f"{where}: {err}", kind="video_unreadable")


def read_frames(path: str | Path) -> tuple[VideoInfo, Iterator[np.ndarray]]:
    """Return the video's header facts and an iterator over its frames (RGB uint8 [H, W, 3]), decoded lazily.

    The iterator raises `BadSampleError` naming the file and the frame when a frame cannot be decoded or
    the video ends early: fewer frames than its header declares, or, where it declares none, frames
    ending more than one frame period before its declared duration.
    """
    av = _av()
    path = Path(path)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        raise _unreadable(path, err) from err
    if not container.streams.video:
        container.close()
        raise BadSampleError(path, "holds no video stream", kind="video_unreadable")
    stream = container.streams.video[0]
    stream.thread_type = "AUTO"
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        container.close()
        raise BadSampleError(path, "video declares no frame rate", kind="video_unreadable")
    info = VideoInfo(
        stream.codec_context.width, stream.codec_context.height, Fraction(rate), stream.frames, _stream_duration(stream)
    )
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0

    def frames() -> Iterator[np.ndarray]:
        decoded, end = 0, 0.0
        try:
            packets = container.decode(stream)
            while True:
                try:
                    frame = next(packets)
                except StopIteration:
                    break
                except (av.FFmpegError, OSError) as err:
                    raise _unreadable(path, err, decoded + 1) from err
                decoded += 1
                if frame.time is not None:
                    end = frame.time + 1 / float(info.rate)
                yield frame.to_ndarray(format="rgb24")
        finally:
            container.close()
        if info.frames and decoded < info.frames:
            raise BadSampleError(
                path,
                f"truncated video: frame {decoded + 1} of the {info.frames} frames it declares cannot be decoded",
                kind="video_truncated",
            )
        if not info.frames and info.duration and end < start + info.duration - 1 / float(info.rate):
            expected = round(info.duration * float(info.rate))
            raise BadSampleError(
                path,
                f"truncated video: frame {decoded + 1} (of about {expected} in its declared {info.duration:.2f} s) "
                "cannot be decoded",
                kind="video_truncated",
            )

    return info, frames()


class VideoWriter:
    """Encode RGB uint8 frames [H, W, 3] into `path` (format from its suffix) at `rate`; atomic on close.

    Use as a context manager: leaving it normally finishes the file and renames it into place; leaving
    with an exception deletes the partial file.
    """

    def __init__(self, path: str | Path, width: int, height: int, rate: Fraction) -> None:
        av = _av()
        self.path = Path(path)
        suffix = self.path.suffix.lower()
        if suffix not in VIDEO_FORMATS:
            raise ConfigError(f"{self.path}: cannot write {suffix} videos; use one of {', '.join(VIDEO_SUFFIXES)}")
        container_format, codec = VIDEO_FORMATS[suffix]
        self.temp = temp_path(self.path)
        self.container = av.open(str(self.temp), mode="w", format=container_format)
        self.stream = self.container.add_stream(codec, rate=rate)
        self.stream.width, self.stream.height = width, height
        even = width % 2 == 0 and height % 2 == 0
        # 4:2:0 chroma halves each side, so H.264 and VP9 need 4:4:4 for odd sizes; MPEG-4 encodes odd sizes in 4:2:0.
        self.stream.pix_fmt = "yuv420p" if even or codec == "mpeg4" else "yuv444p"
        self.frames = 0

    def write(self, frame: np.ndarray) -> None:
        """Encode one RGB uint8 frame [H, W, 3]."""
        av = _av()
        picture = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        for packet in self.stream.encode(picture):
            self.container.mux(packet)
        self.frames += 1

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is not None:
            self.container.close()
            self.temp.unlink(missing_ok=True)
            return
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        with open(self.temp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(self.temp, self.path)
        fsync_dir(self.path.parent)
