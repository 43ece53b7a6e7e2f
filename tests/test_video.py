"""Video in and out: `seglab predict RUN clip.mp4|.mkv|.avi|.webm` streams the frames, segments them in batches
with the test-time flags and writes an overlay video with the same frame count, frame rate and size, plus
per-frame label PNGs; an unreadable or truncated video is an error naming the file and the frame."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch
from deploy_fixtures import randomize_run, train_tiny_run
from PIL import Image
from skimage import data

from seglab import predict as predict_module
from seglab.cli import main as seglab
from seglab.data.base import voc_palette
from seglab.engine.checkpoint import load_run
from seglab.engine.inference import predict_logits
from seglab.errors import BadSampleError
from seglab.video import VIDEO_FORMATS, VIDEO_SUFFIXES, read_frames
from seglab.visual import overlay

FRAMES, RATE = 12, Fraction(10)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return randomize_run(train_tiny_run(tmp_path_factory.mktemp("runs")))


def write_clip(path, width=48, height=40, frames=FRAMES):
    """Encode `frames` crops of a real photo, panning 2 px per frame, with PyAV; return the path."""
    container_format, codec = VIDEO_FORMATS[path.suffix]
    photo = data.astronaut()
    with av.open(str(path), "w", format=container_format) as container:
        stream = container.add_stream(codec, rate=RATE)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p" if width % 2 == 0 and height % 2 == 0 else "yuv444p"
        for i in range(frames):
            crop = np.ascontiguousarray(photo[100 + 2 * i : 100 + 2 * i + height, 200 : 200 + width])
            for packet in stream.encode(av.VideoFrame.from_ndarray(crop, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def decode(path):
    """Return (frames as RGB arrays, (width, height), average rate) of a video, decoded by PyAV."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        return frames, (stream.codec_context.width, stream.codec_context.height), stream.average_rate


@pytest.mark.parametrize("suffix", VIDEO_SUFFIXES)
def test_a_12_frame_video_in_gives_a_12_frame_overlay_video_out(run, tmp_path, suffix, capsys):
    clip = write_clip(tmp_path / f"clip{suffix}")
    out = tmp_path / "pred"
    argv = ["predict", str(run), str(clip), "--out", str(out), "--frame-labels", "--batch-size", "5", "--flip"]
    assert seglab([*argv, "--save-probs", "npy"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote the overlay video {out / 'overlays' / clip.name} (12 frames) and per-frame label PNGs" in printed
    frames, size, rate = decode(out / "overlays" / clip.name)
    assert (len(frames), size, rate) == (FRAMES, (48, 40), RATE)
    inputs, _, _ = decode(clip)
    model, palette = load_run(run).model, voc_palette(6)
    labels = sorted((out / "labels" / "clip").iterdir())
    assert [p.name for p in labels] == [f"{i:06d}.png" for i in range(1, FRAMES + 1)]
    for frame, written, label_png in zip(inputs, frames, labels, strict=True):
        expected = predict_logits(model, torch.from_numpy(frame).permute(2, 0, 1)[None], flip=True)[0]
        label = np.array(Image.open(label_png))
        assert np.array_equal(label, expected.argmax(0).numpy())
        probs = np.load(out / "probs" / "clip" / label_png.with_suffix(".npy").name)
        np.testing.assert_allclose(probs.astype(np.float32), expected.numpy(), atol=1e-3)
        # The written frame is the overlay of that prediction, up to the codec's loss.
        error = np.abs(written.astype(float) - overlay(frame, label, palette, 255)).mean()
        assert error < 10 < np.abs(written.astype(float) - frame).mean(), error


def test_odd_frame_sizes_are_kept(run, tmp_path):
    clip = write_clip(tmp_path / "odd.mp4", width=47, height=33)
    assert seglab(["predict", str(run), str(clip), "--out", str(tmp_path / "pred")]) == 0
    frames, size, rate = decode(tmp_path / "pred" / "overlays" / "odd.mp4")
    assert (len(frames), size, rate) == (FRAMES, (47, 33), RATE)
    assert not (tmp_path / "pred" / "labels" / "odd").exists()  # per-frame labels only with --frame-labels


def test_frames_stream_in_batches(run, tmp_path, monkeypatch):
    """Frames are decoded as they are needed: at each forward pass no more than one batch has been read."""
    clip = write_clip(tmp_path / "clip.webm")
    pulled, calls = [0], []

    def counting_read(path):
        info, frames = read_frames(path)

        def counted():
            for frame in frames:
                pulled[0] += 1
                yield frame

        return info, counted()

    def recording_predict(model, images, **options):
        calls.append((images.shape[0], pulled[0]))
        return predict_logits(model, images, **options)

    monkeypatch.setattr(predict_module, "read_frames", counting_read)
    monkeypatch.setattr(predict_module, "predict_logits", recording_predict)
    assert seglab(["predict", str(run), str(clip), "--out", str(tmp_path / "pred"), "--batch-size", "5"]) == 0
    assert calls == [(5, 5), (5, 10), (2, 12)]


def cut(path, fraction):
    """Keep the first `fraction` of a file's bytes, as an interrupted copy would."""
    payload = path.read_bytes()
    path.write_bytes(payload[: int(len(payload) * fraction)])
    return path


def test_truncated_and_unreadable_videos_name_the_file_and_frame(run, tmp_path, capsys):
    mkv = cut(write_clip(tmp_path / "cut.mkv"), 0.7)  # Matroska declares no frame count, but its duration
    decodable = len(decode(mkv)[0])
    assert 0 < decodable < FRAMES
    with pytest.raises(BadSampleError, match=rf"cut\.mkv: truncated video: frame {decodable + 1} \(of about 12"):
        list(read_frames(mkv)[1])
    out = tmp_path / "pred"
    assert seglab(["predict", str(run), str(mkv), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("seglab predict: error: ") and f"cut.mkv: truncated video: frame {decodable + 1}" in err
    assert "\n" not in err and list((out / "overlays").iterdir()) == []  # no partial overlay video is left
    avi = cut(write_clip(tmp_path / "cut.avi"), 0.8)  # AVI declares its frame count
    with pytest.raises(BadSampleError, match=r"cut\.avi: truncated video: frame \d+ of the 12 frames it declares"):
        list(read_frames(avi)[1])
    mp4 = cut(write_clip(tmp_path / "cut.mp4"), 0.5)  # MP4's index comes last: nothing can be opened
    garbage = tmp_path / "garbage.webm"
    garbage.write_bytes(b"not a video at all" * 10)
    for path in (mp4, garbage):
        with pytest.raises(BadSampleError, match=rf"{path.name}: unreadable video: "):
            read_frames(path)


def test_a_frame_that_cannot_be_decoded_is_named(tmp_path, monkeypatch):
    clip = write_clip(tmp_path / "clip.mp4")
    real_open = av.open

    class FailingAfterThree:
        """The container PyAV opens, whose decoder fails on the fourth frame (as on a corrupt packet)."""

        def __init__(self, *args, **kwargs):
            self.container = real_open(*args, **kwargs)
            self.streams, self.close = self.container.streams, self.container.close

        def decode(self, stream):
            for i, frame in enumerate(self.container.decode(stream)):
                if i == 3:
                    raise av.error.InvalidDataError(1094995529, "Invalid data found when processing input")
                yield frame

    monkeypatch.setattr(av, "open", FailingAfterThree)
    info, frames = read_frames(clip)
    assert (info.width, info.height, info.rate, info.frames) == (48, 40, RATE, FRAMES)
    assert len([next(frames) for _ in range(3)]) == 3
    with pytest.raises(BadSampleError, match=r"clip\.mp4: unreadable video at frame 4: .*Invalid data found"):
        next(frames)
