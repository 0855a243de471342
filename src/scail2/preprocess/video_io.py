"""Reading and writing the videos, images and masks a user gives and gets back (PyAV, Pillow).

Inputs: any container and codec PyAV (FFmpeg) decodes, at any frame rate and length. Frames come out
as uint8 RGB `[T, H, W, 3]`; `read_video(frame_transform=...)` applies a per-frame transform while
decoding (for example a resize to the target size), so a long 1080p driving video never sits in
memory at full size. Frame rates are exact `Fraction`s (30000/1001 stays 30000/1001).

Outputs: `Mp4Writer` / `write_mp4` encode H.264 yuv420p at an exact frame rate, carry the audio of a
source video along (stream copy when MP4 can hold the codec, AAC re-encode otherwise), and write to a
temporary name that is renamed only once the file is complete. `write_png_frames` writes lossless
frames the same way.

Every problem with a user's file is a one-line `Scail2Error` naming the file and the fix.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from scail2.data.format import atomic_folder, partial_path
from scail2.errors import Scail2Error
from scail2.optional import LazyModule

av = LazyModule("av", purpose="reading and writing videos")

logger = logging.getLogger(__name__)

# Audio codecs the MP4 muxer stores as they are; anything else (PCM, Vorbis, ...) is re-encoded to AAC.
MP4_AUDIO_COPY_CODECS = frozenset({"aac", "mp3", "ac3", "eac3", "alac", "opus", "flac"})
AAC_SAMPLE_RATES = frozenset({96000, 88200, 64000, 48000, 44100, 32000, 24000, 22050, 16000, 12000, 11025, 8000})
# swscale's default RGB<->YUV path rounds towards zero (about -1 level on every channel); these flags
# make both directions unbiased (mean error < 0.01 level against the exact BT.709 formula).
# (libswscale's SWS_BILINEAR | SWS_ACCURATE_RND | SWS_FULL_CHR_H_INT, PyAV's `Interpolation` flags of those names)
ACCURATE_COLOR_CONVERSION = 0x2 | 0x40000 | 0x2000
REENCODE_FIX = "re-encode it, e.g. `ffmpeg -i IN -c:v libx264 -pix_fmt yuv420p OUT.mp4`"

FrameTransform = Callable[[np.ndarray], Any]


# ---------------------------------------------------------------------------------------------------
# 1. Reading videos
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VideoInfo:
    """What the container says about a video, before decoding it."""

    path: Path
    width: int  # coded size; frames are read upright, so a display rotation of +-90 degrees swaps them
    height: int
    fps: Fraction  # exact average frame rate
    declared_frames: int  # 0 where the container does not record a count
    has_audio: bool
    audio_codec: str | None


@dataclass
class Video:
    """A decoded video: `frames` stacks what the frame transform returned (default uint8 [T, H, W, 3])."""

    frames: torch.Tensor
    fps: Fraction
    has_audio: bool
    path: Path
    frame_timing: dict | None = None  # a variable-frame-rate source's timing (`variable_rate`); None: constant

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])


def _require_file(path: Path, what: str) -> None:
    if not path.exists():
        raise Scail2Error(f"{path}: {what} not found; check the path")
    if not path.is_file():
        raise Scail2Error(f"{path}: {what} is not a file; give the path of a file")


def _open_input(path: Path) -> av.container.InputContainer:
    _require_file(path, "video")
    try:
        return av.open(str(path), mode="r")
    except (av.error.FFmpegError, UnicodeDecodeError) as error:
        raise Scail2Error(f"{path}: cannot be read as a video ({error.__class__.__name__}); {REENCODE_FIX}") from None


def _frame_rate(stream: av.video.stream.VideoStream, path: Path) -> Fraction:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return Fraction(rate)
    raise Scail2Error(f"{path}: the video has no usable frame rate; {REENCODE_FIX} -r FPS")


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise Scail2Error(f"{path}: has no video frames (no video stream); give a video with at least one frame")
    return container.streams.video[0]


def probe_video(path: str | Path) -> VideoInfo:
    """Container facts about `path` without decoding frames."""
    path = Path(path)
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        audio = container.streams.audio[0] if container.streams.audio else None
        return VideoInfo(
            path=path,
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            fps=_frame_rate(stream, path),
            declared_frames=int(stream.frames or 0),
            has_audio=audio is not None,
            audio_codec=audio.codec_context.name if audio is not None else None,
        )


def _upright_rgb(frame: av.VideoFrame) -> np.ndarray:
    """uint8 RGB [H, W, 3] as a player shows it: the stream's colour matrix and its display rotation applied."""
    rgb = frame.to_ndarray(format="rgb24", interpolation=ACCURATE_COLOR_CONVERSION)
    quarter_turns = round(frame.rotation / 90) % 4  # counter-clockwise, as np.rot90 turns
    return np.ascontiguousarray(np.rot90(rgb, quarter_turns)) if quarter_turns else rgb


def iter_video_frames(
    path: str | Path, *, max_frames: int | None = None, times: list[float] | None = None
) -> Iterator[np.ndarray]:
    """Yield the frames of `path` one by one as uint8 RGB arrays [H, W, 3], in display order and upright.

    Raises Scail2Error for an unreadable file, a file without a video stream, a file that breaks off
    in the middle (truncated or corrupt) and a video with no decodable frame.
    """
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be at least 1, got {max_frames}")
    with _open_input(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        count = 0
        try:
            for packet in container.demux(stream):
                if packet.is_corrupt:  # the demuxer read past the end of a cut-off file
                    raise av.error.InvalidDataError(0, "corrupt packet")
                for frame in packet.decode():
                    if times is not None:
                        times.append(float(frame.time) if frame.time is not None else float("nan"))
                    yield _upright_rgb(frame)
                    count += 1
                    if max_frames is not None and count >= max_frames:
                        return
        except av.error.FFmpegError as error:
            raise Scail2Error(
                f"{path}: truncated or corrupt after frame {count} ({error.__class__.__name__}); "
                f"re-download the file or {REENCODE_FIX}"
            ) from None
        if count == 0:
            raise Scail2Error(f"{path}: has no video frames (none decodable); give a video with at least one frame")
        declared = int(stream.frames or 0)
        if declared and count < declared:
            logger.warning("%s: the container declares %d frames but %d decoded", path, declared, count)


def _stack(items: list[Any]) -> torch.Tensor:
    tensors = [torch.from_numpy(np.ascontiguousarray(item)) if isinstance(item, np.ndarray) else item for item in items]
    return torch.stack(tensors)


def read_video(
    path: str | Path, *, max_frames: int | None = None, frame_transform: FrameTransform | None = None
) -> Video:
    """Decode a whole video: frames (uint8 [T, H, W, 3], or stacked `frame_transform` outputs), exact fps, audio flag.

    `frame_transform` runs on each decoded uint8 [H, W, 3] frame as soon as it is decoded (for example
    `scail2.preprocess.resize.frame_resizer((512, 896))`), so only transformed frames are kept.
    """
    path = Path(path)
    info = probe_video(path)
    transform = frame_transform or (lambda frame: frame)
    times: list[float] = []
    frames = [transform(frame) for frame in iter_video_frames(path, max_frames=max_frames, times=times)]
    timing = variable_rate(times, info.fps)
    if timing is not None:
        logger.warning(
            "%s: variable frame rate (frames %.0f to %.0f ms apart); read at its average %s fps, so moments "
            "shift by up to %.0f ms (recorded in the manifest as driving_timing)",
            path, timing["min_interval_ms"], timing["max_interval_ms"], info.fps, timing["max_shift_ms"],
        )  # fmt: skip
    return Video(frames=_stack(frames), fps=info.fps, has_audio=info.has_audio, path=path, frame_timing=timing)


VFR_TOLERANCE = 0.25  # frame intervals further than this share of the average from it make a variable rate


def variable_rate(times: list[float], fps: Fraction) -> dict | None:
    """The timing of a variable-frame-rate video from its frames' presentation times (seconds), or None when
    every interval is within VFR_TOLERANCE of 1/fps (or the times are unknown). Frames are read at `fps`, one
    after the other; `max_shift_ms` is how far that moves a frame from its own time."""
    stamps = np.asarray(times, dtype=np.float64)
    if len(stamps) < 3 or not np.isfinite(stamps).all():
        return None
    intervals = np.diff(stamps)
    period = 1 / float(fps)
    if np.abs(intervals - period).max() <= VFR_TOLERANCE * period:
        return None
    shift = np.abs(stamps - stamps[0] - np.arange(len(stamps)) * period).max()
    return {
        "variable_frame_rate": True,
        "average_fps": str(fps),
        "min_interval_ms": round(float(intervals.min()) * 1000, 3),
        "max_interval_ms": round(float(intervals.max()) * 1000, 3),
        "max_shift_ms": round(float(shift) * 1000, 3),
        "frame_times_s": [round(float(t - stamps[0]), 6) for t in stamps],
    }


# ---------------------------------------------------------------------------------------------------
# 2. Reading images and masks
# ---------------------------------------------------------------------------------------------------


@dataclass
class LoadedImage:
    """An image as uint8 RGB [H, W, 3] plus its alpha channel [H, W] when it has one."""

    rgb: np.ndarray
    alpha: np.ndarray | None
    path: Path


def read_image(path: str | Path) -> LoadedImage:
    """Read an image of any size and mode (RGB, RGBA, palette, greyscale, 16-bit), upright per its EXIF tag.

    The alpha channel is returned separately (RGBA, LA and palette images with transparency); the RGB
    values under transparent pixels are kept as stored, like upstream's `convert("RGB")`.
    """
    path = Path(path)
    _require_file(path, "image")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise Scail2Error(
            f"{path}: cannot be read as an image ({error.__class__.__name__}: {error}); give a PNG or JPEG file"
        ) from None
    has_alpha = image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = np.asarray(image.convert("RGBA"))
        return LoadedImage(rgb=np.ascontiguousarray(rgba[..., :3]), alpha=np.ascontiguousarray(rgba[..., 3]), path=path)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale: scale to 8 bits rather than letting Pillow clip it.
        grey = np.asarray(image, dtype=np.float64)
        scale = 257.0 if grey.max() > 255 else 1.0
        grey8 = np.clip(np.round(grey / scale), 0, 255).astype(np.uint8)
        return LoadedImage(rgb=np.repeat(grey8[..., None], 3, axis=-1), alpha=None, path=path)
    return LoadedImage(rgb=np.asarray(image.convert("RGB")).copy(), alpha=None, path=path)


def _natural_key(name: str) -> list[Any]:
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_png_frames(folder: str | Path) -> list[Path]:
    """The PNG files of `folder` in natural order (frame_2 before frame_10)."""
    folder = Path(folder)
    pngs = (p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    files = sorted(pngs, key=lambda p: _natural_key(p.name))
    if not files:
        raise Scail2Error(f"{folder}: the mask folder holds no .png files; put one PNG per frame in it")
    return files


def _read_png_folder(folder: Path, max_frames: int | None, transform: FrameTransform) -> torch.Tensor:
    files = list_png_frames(folder)[:max_frames]
    frames = []
    first_size = None
    for file in files:
        image = read_image(file)
        size = image.rgb.shape[:2]
        if first_size is None:
            first_size = size
        elif size != first_size:
            raise Scail2Error(
                f"{file}: is {size[1]}x{size[0]} but the first mask frame is {first_size[1]}x{first_size[0]}; "
                "give all mask frames the same size"
            )
        frames.append(transform(image.rgb))
    return _stack(frames)


def read_mask_frames(
    path: str | Path, *, max_frames: int | None = None, frame_transform: FrameTransform | None = None
) -> torch.Tensor:
    """Read a mask video or a folder of PNG frames as uint8 RGB [T, H, W, 3] (or stacked transform outputs)."""
    path = Path(path)
    transform = frame_transform or (lambda frame: frame)
    if path.is_dir():
        return _read_png_folder(path, max_frames, transform)
    return read_video(path, max_frames=max_frames, frame_transform=transform).frames


# ---------------------------------------------------------------------------------------------------
# 3. Writing
# ---------------------------------------------------------------------------------------------------


def _as_uint8_frames(frames: np.ndarray | torch.Tensor) -> np.ndarray:
    array = frames.detach().cpu().numpy() if isinstance(frames, torch.Tensor) else np.asarray(frames)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(f"expected uint8 frames [T, H, W, 3] or [H, W, 3], got shape {tuple(array.shape)}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames, got {array.dtype}")
    return array


def _pad_to_even(frame: np.ndarray) -> np.ndarray:
    """yuv420p needs even sides: repeat the last row/column where a side is odd (nothing is cropped)."""
    pad_h, pad_w = frame.shape[0] % 2, frame.shape[1] % 2
    if pad_h or pad_w:
        frame = np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    return frame


class _AudioCarrier:
    """Moves the first audio stream of a source video into the output: stream copy or AAC re-encode.

    Packets are handed over lazily up to a given time, so audio and video interleave in the file.
    Audio keeps its timing relative to the start of the source's video stream and stops at the end of
    the written video.
    """

    def __init__(self, source: Path, output: av.container.OutputContainer):
        self.source = _open_input(source)
        self.in_stream = self.source.streams.audio[0]
        self.copy = self.in_stream.codec_context.name in MP4_AUDIO_COPY_CODECS
        video_streams = self.source.streams.video
        video_start = video_streams[0].start_time if video_streams else None
        video_tb = video_streams[0].time_base if video_streams else None
        self.offset_seconds = Fraction(video_start) * video_tb if video_start is not None and video_tb else Fraction(0)
        if self.copy:
            self.out_stream = output.add_stream_from_template(self.in_stream)
        else:
            rate = self.in_stream.codec_context.sample_rate
            self.out_stream = output.add_stream("aac", rate=rate if rate in AAC_SAMPLE_RATES else 48000)
            # Source layouts can be unnamed ("1 channels"); AAC wants a named one. More than two channels are downmixed.
            self.out_stream.layout = "mono" if self.in_stream.codec_context.layout.nb_channels == 1 else "stereo"
            self.resampler = av.AudioResampler(
                format="fltp", layout=self.out_stream.layout, rate=self.out_stream.rate, frame_size=1024
            )
        self.output = output
        self.packets = self.source.demux(self.in_stream)
        self.pending: av.Packet | None = None
        self.next_pts = 0

    def _packet_start(self, packet: av.Packet) -> Fraction:
        return Fraction(packet.pts) * packet.time_base - self.offset_seconds

    def _next_packet(self) -> av.Packet | None:
        if self.pending is None:
            for packet in self.packets:
                if packet.pts is not None and packet.size > 0:
                    self.pending = packet
                    break
        return self.pending

    def send_until(self, end_seconds: Fraction) -> None:
        """Mux every source packet that starts before `end_seconds` (output time)."""
        while (packet := self._next_packet()) is not None and self._packet_start(packet) < end_seconds:
            self.pending = None
            if self.copy:
                shift = round(self.offset_seconds / packet.time_base)
                packet.pts -= shift
                packet.dts = packet.dts - shift if packet.dts is not None else None
                packet.stream = self.out_stream
                self.output.mux(packet)
            else:
                self._reencode(packet.decode())

    def _reencode(self, frames: Iterable[av.AudioFrame] | None) -> None:
        for frame in frames if frames is not None else [None]:
            for chunk in self.resampler.resample(frame):
                chunk.pts = self.next_pts
                chunk.time_base = Fraction(1, self.out_stream.rate)
                self.next_pts += chunk.samples
                self.output.mux(self.out_stream.encode(chunk))

    def finish(self, end_seconds: Fraction) -> None:
        try:
            self.send_until(end_seconds)
            if not self.copy:
                self._reencode(None)
                self.output.mux(self.out_stream.encode(None))
        finally:
            self.source.close()

    def close(self) -> None:
        self.source.close()


class Mp4Writer:
    """Write uint8 RGB frames to an H.264 (yuv420p) MP4 at an exact frame rate, atomically.

    Use as a context manager; frames can be written in pieces (`write` takes [T, H, W, 3] or [H, W, 3]).
    The file is written under a temporary name and renamed to `path` when the block ends without an
    exception; on an exception the temporary file is removed. `audio_source` names a video whose
    first audio stream is carried into the output (trimmed to the written video's duration).
    Odd frame sides are padded by one repeated row/column (yuv420p needs even sides).
    """

    def __init__(
        self,
        path: str | Path,
        fps: Fraction | int | float,
        *,
        audio_source: str | Path | None = None,
        crf: int = 18,
        preset: str = "medium",
    ):
        self.path = Path(path)
        self.fps = Fraction(fps).limit_denominator(1_000_000) if isinstance(fps, float) else Fraction(fps)
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {fps}")
        self.audio_source = Path(audio_source) if audio_source is not None else None
        self.options = {"crf": str(crf), "preset": preset}
        self.tmp_path = partial_path(self.path)
        self.container: av.container.OutputContainer | None = None
        self.stream: av.video.stream.VideoStream | None = None
        self.audio: _AudioCarrier | None = None
        self.carry_audio = False
        self.frames_written = 0

    def __enter__(self) -> Mp4Writer:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        has_audio = self.audio_source is not None and probe_video(self.audio_source).has_audio
        self.container = av.open(str(self.tmp_path), mode="w", format="mp4", options={"movflags": "+faststart"})
        self.carry_audio = has_audio
        return self

    def _open_stream(self, height: int, width: int) -> None:
        stream = self.container.add_stream("libx264", rate=self.fps, options=self.options)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.codec_context.time_base = 1 / self.fps
        # Tag the colour matrix the frames are converted with, so players decode the colours back.
        context = stream.codec_context
        # FFmpeg enum value 1 is BT.709 for matrix, primaries and transfer, and "limited (MPEG)" for range.
        context.colorspace, context.color_primaries, context.color_trc, context.color_range = 1, 1, 1, 1
        self.stream = stream
        if self.carry_audio:  # added after the video stream, so the video is stream 0
            self.audio = _AudioCarrier(self.audio_source, self.container)

    def write(self, frames: np.ndarray | torch.Tensor) -> None:
        """Append frames: uint8 RGB [T, H, W, 3] or one frame [H, W, 3]."""
        if self.container is None:
            raise RuntimeError("Mp4Writer.write() outside its `with` block")
        for frame in _as_uint8_frames(frames):
            frame = _pad_to_even(frame)
            if self.stream is None:
                self._open_stream(*frame.shape[:2])
            elif frame.shape[:2] != (self.stream.height, self.stream.width):
                first = (self.stream.height, self.stream.width)
                raise ValueError(f"frame size {frame.shape[:2]} differs from the first frame's {first}")
            video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
            video_frame = video_frame.reformat(
                format="yuv420p",
                dst_colorspace="ITU709",
                dst_color_range="MPEG",
                interpolation=ACCURATE_COLOR_CONVERSION,
            )
            video_frame.pts = self.frames_written
            video_frame.time_base = 1 / self.fps
            self.container.mux(self.stream.encode(video_frame))
            self.frames_written += 1
            if self.audio is not None:
                self.audio.send_until(self.frames_written / self.fps)

    def __exit__(self, exc_type: Any, exc: Any, traceback: Any) -> None:
        completed = False
        try:
            if exc_type is None:
                self._finish()
                completed = True
        finally:
            if self.audio is not None:
                self.audio.close()
            if self.container is not None:
                self.container.close()
                self.container = None
            if completed:
                os.replace(self.tmp_path, self.path)
            else:
                self.tmp_path.unlink(missing_ok=True)

    def _finish(self) -> None:
        if self.frames_written == 0:
            raise ValueError(f"{self.path}: no frames were written")
        self.container.mux(self.stream.encode(None))
        if self.audio is not None:
            self.audio.finish(self.frames_written / self.fps)


def write_mp4(
    path: str | Path,
    frames: np.ndarray | torch.Tensor | Iterable[np.ndarray | torch.Tensor],
    fps: Fraction | int | float,
    *,
    audio_source: str | Path | None = None,
    crf: int = 18,
    preset: str = "medium",
) -> Path:
    """Write frames (uint8 [T, H, W, 3], or an iterable of frame batches) to `path`; see `Mp4Writer`."""
    path = Path(path)
    batches = [frames] if isinstance(frames, (np.ndarray, torch.Tensor)) else frames
    with Mp4Writer(path, fps, audio_source=audio_source, crf=crf, preset=preset) as writer:
        for batch in batches:
            writer.write(batch)
    return path


def write_png_frames(folder: str | Path, frames: np.ndarray | torch.Tensor, *, overwrite: bool = False) -> Path:
    """Write uint8 RGB frames as lossless PNGs `frame_000000.png`... into `folder`, atomically."""
    folder = Path(folder)
    if folder.exists() and not overwrite:
        raise Scail2Error(f"{folder}: already exists; delete it or choose another frames folder")
    with atomic_folder(folder) as tmp:
        for index, frame in enumerate(_as_uint8_frames(frames)):
            Image.fromarray(frame).save(tmp / f"frame_{index:06d}.png", compress_level=3)
    return folder
