"""Video/image/mask reading and MP4/PNG writing: frame counts, exact fps, audio, atomic writes, bad input."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from scail2.errors import Scail2Error
from scail2.preprocess.resize import frame_resizer
from scail2.preprocess.video_io import (
    Mp4Writer,
    list_png_frames,
    probe_video,
    read_image,
    read_mask_frames,
    read_video,
    write_mp4,
    write_png_frames,
)

SAMPLES = Path("/work/shared/samples/wan_animate")


def smooth_frames(num_frames: int = 9, height: int = 48, width: int = 80) -> np.ndarray:
    """Moving colour gradients: survive H.264 / yuv420p nearly unchanged, and every frame differs."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = []
    for t in range(num_frames):
        red = 128 + 90 * np.sin(x / width * 2 * np.pi + t * 0.4)
        green = 128 + 90 * np.cos(y / height * 2 * np.pi + t * 0.3)
        blue = np.full_like(x, 60 + 15 * t)
        frames.append(np.stack([red, green, blue], axis=-1))
    return np.clip(np.round(np.stack(frames)), 0, 255).astype(np.uint8)


def make_source(
    path: Path,
    *,
    fps: Fraction = Fraction(24),
    frames: np.ndarray | None = None,
    audio_codec: str | None = "aac",
    audio_seconds: float = 2.0,
    container: str = "mp4",
) -> Path:
    """A small video with an optional 440 Hz tone, written directly with PyAV (not with the code under test)."""
    frames = smooth_frames() if frames is None else frames
    with av.open(str(path), "w", format=container) as output:
        video = output.add_stream("libx264", rate=fps, options={"crf": "8"})
        video.width, video.height, video.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        audio = output.add_stream(audio_codec, rate=16000) if audio_codec else None
        if audio is not None:
            audio.layout = "mono"
        for frame in frames:
            output.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(video.encode(None))
        if audio is not None:
            samples = int(16000 * audio_seconds)
            tone = (0.3 * np.sin(2 * np.pi * 440 * np.arange(samples) / 16000)).astype(np.float32)
            sample_format = "fltp" if audio_codec == "aac" else "s16"
            data = tone if sample_format == "fltp" else (tone * 32767).astype(np.int16)
            chunk = 1024
            for start in range(0, samples, chunk):
                piece = data[None, start : start + chunk]
                frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(piece), format=sample_format, layout="mono")
                frame.sample_rate, frame.pts = 16000, start
                output.mux(audio.encode(frame))
            output.mux(audio.encode(None))
    return path


def stream_summary(path: Path) -> dict[str, tuple[str, float]]:
    with av.open(str(path)) as container:
        return {s.type: (s.codec_context.name, float(s.duration * s.time_base)) for s in container.streams}


# -- reading -------------------------------------------------------------------------------------------


def test_read_video_gives_frames_exact_fps_and_audio_flag(tmp_path):
    source = make_source(tmp_path / "in.mp4", fps=Fraction(30000, 1001))
    video = read_video(source)
    assert video.frames.shape == (9, 48, 80, 3) and video.frames.dtype == torch.uint8
    assert video.fps == Fraction(30000, 1001)
    assert video.has_audio
    assert read_video(source, max_frames=4).num_frames == 4
    # Decoding must not shift colours (swscale's default path is ~1 level dark).
    error = video.frames.float() - torch.from_numpy(smooth_frames()).float()
    assert error.abs().mean() < 2.0 and error.mean((0, 1, 2)).abs().max() < 0.5


def test_frame_transform_resizes_while_decoding(tmp_path):
    source = make_source(tmp_path / "in.mp4", audio_codec=None)
    video = read_video(source, frame_transform=frame_resizer((32, 64)))
    assert video.frames.shape == (9, 32, 64, 3)
    assert not video.has_audio
    info = probe_video(source)
    assert (info.width, info.height, info.declared_frames, info.fps) == (80, 48, 9, Fraction(24))


def test_display_rotation_is_applied(tmp_path):
    frames = np.zeros((3, 48, 80, 3), np.uint8)
    frames[:, :16, :32] = 255  # a block in the top-left corner of the stored frame
    with av.open(str(tmp_path / "phone.mp4"), "w") as output:
        stream = output.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 80, 48, "yuv420p"
        stream.set_display_rotation(90)  # shown turned 90 degrees counter-clockwise
        for frame in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode(None))
    upright = read_video(tmp_path / "phone.mp4").frames
    assert upright.shape == (3, 80, 48, 3)
    assert upright[:, -16:, :16].float().mean() > 200 and upright[:, :16, :16].float().mean() < 50  # now bottom-left


def test_unreadable_missing_and_streamless_files_are_one_line_errors(tmp_path):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video" * 100)
    with pytest.raises(Scail2Error, match=r"garbage.mp4: cannot be read as a video .*re-encode"):
        read_video(garbage)
    with pytest.raises(Scail2Error, match="missing.mp4: video not found"):
        read_video(tmp_path / "missing.mp4")
    audio_only = tmp_path / "audio_only.mp4"
    with av.open(str(audio_only), "w") as output:
        stream = output.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        output.mux(stream.encode(frame))
        output.mux(stream.encode(None))
    with pytest.raises(Scail2Error, match="audio_only.mp4: has no video frames"):
        read_video(audio_only)
    no_frames = tmp_path / "no_frames.mp4"
    with av.open(str(no_frames), "w") as output:
        stream = output.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 80, 48, "yuv420p"
        output.start_encoding()
        output.mux(stream.encode(None))
    with pytest.raises(Scail2Error, match="no_frames.mp4: has no video frames"):
        read_video(no_frames)


def test_truncated_video_is_reported(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (30, 48, 80, 3), dtype=np.uint8)  # noise: big packets
    complete = tmp_path / "complete.mp4"
    with av.open(str(complete), "w", options={"movflags": "+faststart"}) as output:
        stream = output.add_stream("libx264", rate=24)
        stream.width, stream.height, stream.pix_fmt = 80, 48, "yuv420p"
        for frame in frames:
            output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        output.mux(stream.encode(None))
    data = complete.read_bytes()
    truncated = tmp_path / "cut.mp4"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(Scail2Error, match=r"cut.mp4: truncated or corrupt after frame \d+"):
        read_video(truncated)


def test_read_image_rgba_greyscale_and_bad_files(tmp_path):
    rgba = np.zeros((30, 50, 4), np.uint8)
    rgba[..., 0], rgba[5:20, 10:30, 3] = 200, 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "ref.png")
    image = read_image(tmp_path / "ref.png")
    assert image.rgb.shape == (30, 50, 3) and image.alpha.shape == (30, 50)
    assert image.alpha[10, 20] == 255 and image.alpha[0, 0] == 0 and image.rgb[0, 0, 0] == 200
    Image.fromarray(np.full((7, 9), 90, np.uint8), "L").save(tmp_path / "grey.jpg")
    grey = read_image(tmp_path / "grey.jpg")
    assert grey.rgb.shape == (7, 9, 3) and grey.alpha is None
    broken = tmp_path / "broken.png"
    broken.write_bytes((tmp_path / "ref.png").read_bytes()[:60])
    with pytest.raises(Scail2Error, match="broken.png: cannot be read as an image"):
        read_image(broken)


def test_mask_folder_is_read_in_natural_order(tmp_path):
    folder = tmp_path / "masks"
    folder.mkdir()
    for index in (0, 1, 2, 10):
        Image.fromarray(np.full((6, 8, 3), index * 20, np.uint8)).save(folder / f"frame_{index}.png")
    assert [p.name for p in list_png_frames(folder)] == ["frame_0.png", "frame_1.png", "frame_2.png", "frame_10.png"]
    frames = read_mask_frames(folder)
    assert frames.shape == (4, 6, 8, 3)
    assert frames[:, 0, 0, 0].tolist() == [0, 20, 40, 200]
    Image.fromarray(np.zeros((5, 8, 3), np.uint8)).save(folder / "frame_11.png")
    with pytest.raises(Scail2Error, match="frame_11.png: is 8x5 but the first mask frame is 8x6"):
        read_mask_frames(folder)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Scail2Error, match="holds no .png files"):
        read_mask_frames(empty)


def test_mask_video_is_read_like_a_video(tmp_path):
    source = make_source(tmp_path / "mask.mp4", audio_codec=None)
    assert read_mask_frames(source, max_frames=5).shape == (5, 48, 80, 3)


# -- writing -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fps", [Fraction(30000, 1001), Fraction(25, 2), Fraction(24)])
def test_write_mp4_keeps_frame_count_and_exact_fps(tmp_path, fps):
    frames = smooth_frames()
    out = write_mp4(tmp_path / "out.mp4", frames, fps, crf=12)
    back = read_video(out)
    assert back.num_frames == 9 and back.fps == fps and not back.has_audio
    error = back.frames.float() - torch.from_numpy(frames).float()
    assert error.abs().mean() < 2.0 and error.mean((0, 1, 2)).abs().max() < 0.5
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]  # no temporary left behind


def test_odd_sizes_are_padded_with_the_edge(tmp_path):
    frames = smooth_frames(3, 47, 79)
    back = read_video(write_mp4(tmp_path / "odd.mp4", frames, 24, crf=12)).frames
    assert back.shape == (3, 48, 80, 3)
    assert (back[:, -1, :79].float() - back[:, -2, :79].float()).abs().mean() < 3  # repeated last row


def test_audio_is_copied_and_trimmed_to_the_video(tmp_path):
    source = make_source(tmp_path / "in.mp4", audio_seconds=2.0)  # 9 frames at 24 fps = 0.375 s
    with Mp4Writer(tmp_path / "out.mp4", 24, audio_source=source) as writer:
        for frame in smooth_frames():  # one frame at a time, as segments arrive
            writer.write(frame)
    streams = stream_summary(tmp_path / "out.mp4")
    assert streams["video"] == ("h264", 0.375)
    assert streams["audio"][0] == "aac"
    assert 0.375 <= streams["audio"][1] < 0.375 + 0.07  # whole AAC packets (64 ms at 16 kHz)


def test_audio_that_mp4_cannot_hold_is_reencoded_to_aac(tmp_path):
    source = make_source(tmp_path / "in.mkv", audio_codec="pcm_s16le", audio_seconds=0.375, container="matroska")
    out = write_mp4(tmp_path / "out.mp4", smooth_frames(), 24, audio_source=source)
    streams = stream_summary(out)
    assert streams["audio"][0] == "aac"
    assert abs(streams["audio"][1] - 0.375) < 0.07
    assert read_video(out).has_audio


def test_failed_write_leaves_nothing_behind(tmp_path):
    with pytest.raises(RuntimeError, match="generation failed"):
        with Mp4Writer(tmp_path / "out.mp4", 24) as writer:
            writer.write(smooth_frames(2))
            raise RuntimeError("generation failed")
    with pytest.raises(ValueError, match="no frames"):
        with Mp4Writer(tmp_path / "out.mp4", 24):
            pass
    assert list(tmp_path.iterdir()) == []


def test_png_frames_are_lossless_and_atomic(tmp_path):
    frames = np.random.default_rng(3).integers(0, 256, (3, 10, 14, 3), dtype=np.uint8)
    folder = write_png_frames(tmp_path / "frames", frames)
    assert torch.equal(read_mask_frames(folder), torch.from_numpy(frames))
    with pytest.raises(Scail2Error, match="already exists"):
        write_png_frames(folder, frames)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["frames"]


@pytest.mark.slow
@pytest.mark.skipif(not (SAMPLES / "animate" / "video.mp4").is_file(), reason="shared samples not present")
def test_real_sample_keeps_106_frames_30_fps_and_audio(tmp_path):
    source = SAMPLES / "animate" / "video.mp4"
    video = read_video(source, frame_transform=frame_resizer((256, 448)))
    assert video.frames.shape == (106, 256, 448, 3) and video.fps == Fraction(30) and video.has_audio
    out = write_mp4(tmp_path / "out.mp4", video.frames, video.fps, audio_source=source, preset="ultrafast")
    info = probe_video(out)
    assert (info.declared_frames, info.fps, info.has_audio, info.audio_codec) == (106, Fraction(30), True, "aac")
    assert abs(stream_summary(out)["audio"][1] - 106 / 30) < 0.03
