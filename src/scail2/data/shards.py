"""MotionPair datasets on disk: WebDataset tar shards of lossless PNGs, `meta.json` and a manifest.

Layout of a dataset directory:

    meta.json             format name and version, the generator's settings, pair and shard counts
    shard-000000.tar ...  WebDataset shards; sample key = the pair index (9 digits)
    manifest.json         written once every shard exists: per-shard first index, count, bytes, sha256

Members of one sample (frames of a video are stacked vertically in one PNG, [F*H, W]):

    <key>.json                    format, version, task, mode, frames, height, width, metadata
    <key>.reference.png           RGB          <key>.driving.png  <key>.target.png
    <key>.reference_mask.png      palette PNG: index = identity (0 background), palette = upstream colours
                                  with the mode's background, so a viewer shows the model's mask
    <key>.reference_detail.png    palette PNG: index 1 limb ends, 2 face/head (likewise for driving, target)

Writing is resumable: a shard is written under a `.partial` name and renamed when complete, so a killed
run leaves only whole shards behind, and every sample depends only on its index, so finishing a run later
gives the same bytes as an uninterrupted one. Readers refuse unknown format versions and foreign or
corrupt shards with a `Scail2Error` that names the file.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Iterable, Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from scail2.data.format import FormatSpec, atomic_path, shard_record
from scail2.data.pairs import MASK_BACKGROUNDS, PairGenerator, PairSample
from scail2.errors import Scail2Error
from scail2.modes import parse_mode
from scail2.optional import require
from scail2.preprocess.palette import IDENTITY_COLORS

# Version 2 stores the modes as "animate" / "replace"; version 1 stored "animation" / "replacement".
MOTIONPAIR = FormatSpec(
    "scail2-motionpair",
    version=2,
    supported=(1, 2),
    description="a scail2 MotionPair sample",
    command="synth",
    settings="generator settings",
)
FORMAT, FORMAT_VERSION, SUPPORTED_VERSIONS = MOTIONPAIR.name, MOTIONPAIR.version, MOTIONPAIR.supported
STREAMS = ("reference", "driving", "target")
DEFAULT_SHARD_SIZE = 256
PNG_LEVEL = 1  # fast deflate: the shards are written once and read many times, size matters less than speed
TAR_MTIME = 0  # fixed member times keep the tar bytes reproducible


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.tar"


# ---------------------------------------------------------------------------------------------------
# One sample <-> tar members
# ---------------------------------------------------------------------------------------------------


def encode_png(array: np.ndarray, palette: list[int] | None = None) -> bytes:
    """Lossless PNG bytes. Indexed images go through Pillow (unfiltered, fast); RGB goes through FFmpeg's PNG
    encoder via PyAV when it is installed, about twice as fast as Pillow's adaptive filtering."""
    if palette is None and array.ndim == 3:
        encoded = _png_rgb_pyav(array)
        if encoded is not None:
            return encoded
    image = Image.fromarray(array)
    if palette is not None:
        image.putpalette(palette)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_LEVEL)
    return buffer.getvalue()


def _png_rgb_pyav(array: np.ndarray) -> bytes | None:
    try:
        import av
    except ImportError:  # the `video` extra is optional; Pillow writes an equally valid PNG
        return None
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = array.shape[1], array.shape[0], "rgb24"
    codec.thread_count = 1
    codec.options = {"pred": "up", "compression_level": str(PNG_LEVEL)}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
    packets = codec.encode(frame) + codec.encode(None)
    return b"".join(bytes(packet) for packet in packets)


def _palette(background: tuple[int, int, int]) -> list[int]:
    return [channel for colour in (background, *IDENTITY_COLORS) for channel in colour]


# Detail tags as an indexed PNG too: unfiltered (fast) and readable in a viewer.
DETAIL_PALETTE = [0, 0, 0, 255, 160, 0, 0, 200, 255]  # 0 rest, 1 limb ends (orange), 2 face/head (azure)


def encode_sample(sample: PairSample) -> dict[str, bytes]:
    """The tar members of one sample (keys without the sample key), plus `__key__`."""
    sample.check()
    frames, height, width = sample.driving.shape[:3]
    record: dict = {"__key__": sample.key}
    for stream in STREAMS:
        pixels, ids, detail = (getattr(sample, stream + suffix) for suffix in ("", "_ids", "_detail"))
        rows = (frames if stream != "reference" else 1) * height
        record[f"{stream}.png"] = encode_png(pixels.reshape(rows, width, 3))
        palette = _palette(MASK_BACKGROUNDS[sample.mode][stream])
        record[f"{stream}_mask.png"] = encode_png(ids.reshape(rows, width), palette)
        record[f"{stream}_detail.png"] = encode_png(detail.reshape(rows, width), DETAIL_PALETTE)
    header = MOTIONPAIR.header(
        key=sample.key,
        task=sample.task,
        mode=sample.mode,
        frames=frames,
        height=height,
        width=width,
        metadata=sample.metadata,
    )
    record["json"] = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return record


def decode_png(data: bytes, mode: str, shape: tuple[int, ...], source: str) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # PIL raises several types for damaged data
        raise Scail2Error(f"{source} is not a readable PNG ({error}); the shard is corrupt: regenerate it") from None
    array = np.asarray(image)
    if image.mode != mode or array.shape != shape:
        raise Scail2Error(
            f"{source} holds a {image.mode} image of shape {list(array.shape)}, expected {mode} "
            f"{list(shape)}; the shard is corrupt or foreign: regenerate it"
        )
    return array


def decode_json_member(data: bytes, where: str, name: str = "json", spec: FormatSpec = MOTIONPAIR) -> dict:
    """A sample's JSON member, parsed and its header checked against `spec`; one-line errors otherwise."""
    try:
        header = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise Scail2Error(f"{where} has an unreadable {name} member; the shard is corrupt: regenerate it") from None
    spec.check_header(header, where)
    return header


def decode_sample(record: dict, source: str = "sample") -> PairSample:
    """A `PairSample` from the tar members of one sample (as WebDataset yields them)."""
    key = record.get("__key__", "?")
    where = f"{source} (sample {key})"
    if "json" not in record:
        raise Scail2Error(
            f"{where} has no json member: not a scail2 MotionPair shard; point the reader at a "
            f"directory written by `scail2 synth`"
        )
    header = decode_json_member(record["json"], where)
    frames, height, width = header["frames"], header["height"], header["width"]
    arrays = {}
    for stream in STREAMS:
        count = frames if stream != "reference" else 1
        for suffix, mode, channels in (("", "RGB", (3,)), ("_mask", "P", ()), ("_detail", "P", ())):
            member = f"{stream}{suffix}.png"
            if member not in record:
                raise Scail2Error(f"{where} lacks {member}; the shard is corrupt or foreign: regenerate it")
            array = decode_png(record[member], mode, (count * height, width, *channels), f"{where} {member}")
            shape = (height, width, *channels) if stream == "reference" else (frames, height, width, *channels)
            arrays[f"{stream}{suffix.replace('_mask', '_ids')}"] = array.reshape(shape)
    # version 1 shards store the older words "animation" / "replacement"
    mode = parse_mode(header["mode"], f"{where} mode")
    metadata = {**header["metadata"], "mode": mode} if "mode" in header["metadata"] else header["metadata"]
    sample = PairSample(header["key"], header["task"], mode, metadata=metadata, **arrays)
    sample.check()
    return sample


# ---------------------------------------------------------------------------------------------------
# Writing a dataset
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteReport:
    written_shards: int  # shards this call produced
    skipped_shards: int  # shards already complete from an earlier run
    pairs_written: int
    complete: bool  # every shard of the dataset exists and the manifest is written


def resolve_sharding(shard_index: int | None, num_shards: int | None, environ=os.environ) -> tuple[int, int]:
    """This process's share of the shards: explicit values, else RANK / WORLD_SIZE (torchrun, schedulers)."""
    if shard_index is None and num_shards is None:
        shard_index, num_shards = int(environ.get("RANK", 0)), int(environ.get("WORLD_SIZE", 1))
    elif shard_index is None or num_shards is None:
        raise Scail2Error("give both --shard-index and --num-shards (or neither, to use RANK and WORLD_SIZE)")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise Scail2Error(
            f"shard index {shard_index} is not in 0..{num_shards - 1}: fix --shard-index/--num-shards "
            f"or RANK/WORLD_SIZE"
        )
    return shard_index, num_shards


def dataset_meta(generator: PairGenerator, num_pairs: int, shard_size: int) -> dict:
    return MOTIONPAIR.header(
        num_pairs=num_pairs,
        shard_size=shard_size,
        num_shards=-(-num_pairs // shard_size),
        generator=generator.describe(),
        members={
            "json": "header and metadata",
            "<stream>.png": "RGB, frames stacked vertically",
            "<stream>_mask.png": "palette PNG: index = identity, palette = upstream colours",
            "<stream>_detail.png": "palette PNG: index 1 limb ends, 2 face/head",
            "streams": list(STREAMS),
        },
    )


def _encoded_samples(generator: PairGenerator, indices: list[int], workers: int) -> Iterator[dict]:
    if workers <= 1:
        for index in indices:
            yield encode_sample(generator.generate(index))
        return
    import multiprocessing

    with multiprocessing.get_context().Pool(workers, initializer=_worker_init, initargs=(generator,)) as pool:
        yield from pool.imap(_worker_encode, indices, chunksize=2)


_WORKER_GENERATOR: PairGenerator | None = None


def _worker_init(generator: PairGenerator) -> None:
    global _WORKER_GENERATOR
    _WORKER_GENERATOR = generator


def _worker_encode(index: int) -> dict:
    return encode_sample(_WORKER_GENERATOR.generate(index))


def write_shard(path: Path, records: Iterable[dict], on_sample: Callable[[], None]) -> None:
    """Write records to `path` via `<name>.partial`, renamed only once complete and on disk (one process writes
    a shard, so the fixed name lets a resumed run overwrite what a killed one left)."""
    webdataset = require("webdataset", purpose="dataset shards")

    with atomic_path(path, partial=path.with_name(path.name + ".partial")) as partial, open(partial, "wb") as stream:
        writer = webdataset.TarWriter(stream, user="scail2", group="scail2", encoder=False, mtime=TAR_MTIME)
        try:
            for record in records:
                writer.write(record)
                on_sample()
        finally:
            writer.close()
        stream.flush()
        os.fsync(stream.fileno())


def write_shards(
    out: Path,
    spec: FormatSpec,
    meta: dict,
    records: Callable[[list[int]], Iterator[dict]],
    *,
    shard_index: int,
    num_shards: int,
    progress: bool,
    desc: str,
) -> WriteReport:
    """Write meta.json (or check it, resuming), this process's missing shards and, once all exist, the manifest.

    `meta` gives num_pairs, shard_size and num_shards; `records(indices)` yields the tar records of those pair
    indices in order. The process writes the shards s with s % num_shards == shard_index.
    """
    from tqdm import tqdm

    spec.claim_folder(out, meta)
    mine = [s for s in range(meta["num_shards"]) if s % num_shards == shard_index]
    pending = [s for s in mine if not (out / shard_name(s)).exists()]
    ranges = {s: shard_pairs(meta, s) for s in mine}
    indices = [i for s in pending for i in ranges[s]]
    done = sum(len(ranges[s]) for s in mine) - len(indices)
    with (
        tqdm(total=done + len(indices), initial=done, unit="pair", disable=not progress, desc=desc) as bar,
        closing(records(indices)) as stream,
    ):
        for shard in pending:
            write_shard(out / shard_name(shard), (next(stream) for _ in ranges[shard]), lambda: bar.update(1))
    complete = finish_manifest(out, meta, spec)
    return WriteReport(len(pending), len(mine) - len(pending), len(indices), complete)


def shard_pairs(meta: dict, shard: int) -> range:
    """The pair indices shard number `shard` holds."""
    first = shard * meta["shard_size"]
    return range(first, min(first + meta["shard_size"], meta["num_pairs"]))


def write_dataset(
    generator: PairGenerator,
    out_dir: str | Path,
    num_pairs: int,
    *,
    shard_size: int = DEFAULT_SHARD_SIZE,
    workers: int = 1,
    shard_index: int = 0,
    num_shards: int = 1,
    progress: bool = True,
) -> WriteReport:
    """Write pairs 0..num_pairs-1 of `generator` as shards under `out_dir`, resuming what exists.

    With `num_shards` > 1 this process writes only the shards s with s % num_shards == shard_index.
    """
    if num_pairs < 1 or shard_size < 1 or workers < 1:
        raise Scail2Error(f"need positive --num, shard size and --workers (got {num_pairs}, {shard_size}, {workers})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return write_shards(
        out,
        MOTIONPAIR,
        dataset_meta(generator, num_pairs, shard_size),
        lambda indices: _encoded_samples(generator, indices, workers),
        shard_index=shard_index,
        num_shards=num_shards,
        progress=progress,
        desc="synth",
    )


def finish_manifest(out: Path, meta: dict, spec: FormatSpec = MOTIONPAIR) -> bool:
    """Write manifest.json if every shard exists (the last of several processes to finish does it)."""
    paths = [out / shard_name(s) for s in range(meta["num_shards"])]
    if not all(p.exists() for p in paths):
        return False
    shards = [
        shard_record(path, first_index=shard_pairs(meta, s).start, count=len(shard_pairs(meta, s)))
        for s, path in enumerate(paths)
    ]
    spec.write_manifest(out, shards, num_pairs=meta["num_pairs"])
    return True


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def read_shard(path: str | Path, expected_count: int | None = None, decode=None) -> Iterator[PairSample]:
    """Decode every sample of one shard, refusing foreign, corrupt or truncated shards.

    `decode(record, source)` turns a WebDataset record into a sample (default: `decode_sample`); other shard
    formats built on these tars (preference pairs) pass their own.
    """
    decode = decode or decode_sample
    import tarfile

    webdataset = require("webdataset", purpose="dataset shards")

    path = Path(path)
    if not path.is_file():
        raise Scail2Error(f"{path} does not exist; re-run the same `scail2 synth` command to finish the dataset")
    count = 0
    try:
        for record in webdataset.WebDataset(str(path), shardshuffle=False, empty_check=False):
            yield decode(record, str(path))
            count += 1
    except (tarfile.TarError, OSError, EOFError) as error:
        raise Scail2Error(
            f"{path} is not a readable tar shard ({error}); it is corrupt or foreign: regenerate it"
        ) from None
    if expected_count is not None and count != expected_count:
        raise Scail2Error(
            f"{path} holds {count} samples, the manifest says {expected_count}; the shard is "
            f"truncated or corrupt: delete it and re-run `scail2 synth` to regenerate it"
        )


class MotionPairDataset:
    """A finished dataset directory: checks meta.json, the manifest and (with `verify`) shard checksums.

    Formats laid out the same way (preference pairs) subclass it with their own spec and sample decoder.
    """

    spec = MOTIONPAIR
    decode = staticmethod(decode_sample)

    def __init__(self, directory: str | Path, verify: bool = True):
        self.directory = Path(directory)
        self.meta, self.manifest = self.spec.open_finished(self.directory, verify)

    def __len__(self) -> int:
        return int(self.manifest["num_pairs"])

    @property
    def shard_paths(self) -> list[Path]:
        return [self.directory / entry["name"] for entry in self.manifest["shards"]]

    def __iter__(self) -> Iterator[PairSample]:
        for entry in self.manifest["shards"]:
            yield from read_shard(self.directory / entry["name"], entry["count"], decode=self.decode)


def webdataset_pipeline(directory: str | Path, **kwargs):
    """A `webdataset.WebDataset` over a finished dataset that yields `PairSample`s (for training loaders)."""
    webdataset = require("webdataset", purpose="dataset shards")

    dataset = MotionPairDataset(directory, verify=False)
    urls = [str(p) for p in dataset.shard_paths]
    return webdataset.WebDataset(urls, **kwargs).map(lambda record: decode_sample(record, record.get("__url__", "")))


# ---------------------------------------------------------------------------------------------------
# Random access to single members
# ---------------------------------------------------------------------------------------------------


def _member_offsets(path: Path) -> dict[str, dict[str, tuple[int, int]]]:
    """Per sample key, per member suffix ("json", "target.png", ...): (offset of its data in the tar, size)."""
    import tarfile

    found: dict[str, dict[str, tuple[int, int]]] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar:
                key, _, suffix = member.name.partition(".")
                found.setdefault(key, {})[suffix] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError) as error:
        raise Scail2Error(
            f"{path} is not a readable tar shard ({error}); it is corrupt or foreign: regenerate it"
        ) from None
    return found


class PairVideos:
    """Random access to the videos and character masks of a finished dataset, decoding only the member asked
    for (a training clip needs one stream of one pair; `MotionPairDataset` decodes whole samples in order).

    Pairs are numbered in manifest order; every pair must have the frame count and size of pair 0.
    """

    def __init__(self, directory: str | Path):
        dataset = MotionPairDataset(directory, verify=False)
        self.directory = dataset.directory
        self.members: list[tuple[Path, dict[str, tuple[int, int]]]] = []  # per pair: shard, suffix -> (offset, size)
        for entry, path in zip(dataset.manifest["shards"], dataset.shard_paths):
            found = _member_offsets(path)
            if len(found) != entry["count"]:
                raise Scail2Error(
                    f"{path} holds {len(found)} samples, the manifest says {entry['count']}; delete it "
                    f"and re-run `scail2 synth` to regenerate it"
                )
            self.members.extend((path, found[key]) for key in sorted(found))
        self.frames, self.height, self.width = self._size(0)

    def __len__(self) -> int:
        return len(self.members)

    def _source(self, index: int) -> str:
        return f"{self.members[index][0]} (pair {index})"

    def _read(self, index: int, suffix: str) -> bytes:
        path, members = self.members[index]
        if suffix not in members:
            raise Scail2Error(f"{self._source(index)} lacks {suffix}; the shard is corrupt or foreign: regenerate it")
        offset, size = members[suffix]
        with path.open("rb") as handle:
            handle.seek(offset)
            return handle.read(size)

    def _size(self, index: int) -> tuple[int, int, int]:
        header = decode_json_member(self._read(index, "json"), self._source(index))
        return int(header["frames"]), int(header["height"]), int(header["width"])

    def _frames(self, index: int, member: str, mode: str, channels: tuple[int, ...]) -> np.ndarray:
        frames = 1 if member.startswith("reference") else self.frames
        shape = (frames * self.height, self.width, *channels)
        array = decode_png(self._read(index, member), mode, shape, f"{self._source(index)} {member}")
        return array.reshape(frames, self.height, self.width, *channels)  # frames are stacked vertically

    def video(self, index: int, stream: str) -> np.ndarray:
        """uint8 [F, H, W, 3] of `stream` ("target", "driving"; "reference" gives one frame)."""
        return self._frames(index, f"{stream}.png", "RGB", (3,))

    def character_mask(self, index: int, stream: str) -> np.ndarray:
        """bool [F, H, W]: where any character of `stream` is (its identity map, stored as palette indices)."""
        return self._frames(index, f"{stream}_mask.png", "P", ()) > 0
