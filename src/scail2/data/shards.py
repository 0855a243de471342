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

import hashlib
import io
import json
import os
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image

from scail2.data.pairs import MASK_BACKGROUNDS, PairGenerator, PairSample
from scail2.errors import Scail2Error
from scail2.optional import require
from scail2.preprocess.palette import IDENTITY_COLORS

FORMAT = "scail2-motionpair"
FORMAT_VERSION = 1
SUPPORTED_VERSIONS = (1,)
STREAMS = ("reference", "driving", "target")
DEFAULT_SHARD_SIZE = 256
PNG_LEVEL = 1  # fast deflate: the shards are written once and read many times, size matters less than speed
TAR_MTIME = 0  # fixed member times keep the tar bytes reproducible


def shard_name(shard: int) -> str:
    return f"shard-{shard:06d}.tar"


# ---------------------------------------------------------------------------------------------------
# One sample <-> tar members
# ---------------------------------------------------------------------------------------------------


def _png(array: np.ndarray, palette: list[int] | None = None) -> bytes:
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
        record[f"{stream}.png"] = _png(pixels.reshape(rows, width, 3))
        palette = _palette(MASK_BACKGROUNDS[sample.mode][stream])
        record[f"{stream}_mask.png"] = _png(ids.reshape(rows, width), palette)
        record[f"{stream}_detail.png"] = _png(detail.reshape(rows, width), DETAIL_PALETTE)
    header = {"format": FORMAT, "version": FORMAT_VERSION, "key": sample.key, "task": sample.task,
              "mode": sample.mode, "frames": frames, "height": height, "width": width, "metadata": sample.metadata}
    record["json"] = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    return record


def _check_header(header: dict, source: str) -> None:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise Scail2Error(f"{source} is not a scail2 MotionPair sample (format {header.get('format')!r} "
                          f"instead of {FORMAT!r}); point the reader at a directory written by `scail2 synth`")
    if header.get("version") not in SUPPORTED_VERSIONS:
        raise Scail2Error(f"{source} has format version {header.get('version')}; this scail2 reads version "
                          f"{', '.join(map(str, SUPPORTED_VERSIONS))}: upgrade scail2 or regenerate the data")


def _decode_png(data: bytes, mode: str, shape: tuple[int, ...], source: str) -> np.ndarray:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as error:  # PIL raises several types for damaged data
        raise Scail2Error(f"{source} is not a readable PNG ({error}); the shard is corrupt: regenerate it") from None
    array = np.asarray(image)
    if image.mode != mode or array.shape != shape:
        raise Scail2Error(f"{source} holds a {image.mode} image of shape {list(array.shape)}, expected {mode} "
                          f"{list(shape)}; the shard is corrupt or foreign: regenerate it")
    return array


def decode_sample(record: dict, source: str = "sample") -> PairSample:
    """A `PairSample` from the tar members of one sample (as WebDataset yields them)."""
    key = record.get("__key__", "?")
    where = f"{source} (sample {key})"
    if "json" not in record:
        raise Scail2Error(f"{where} has no json member: not a scail2 MotionPair shard; point the reader at a "
                          f"directory written by `scail2 synth`")
    try:
        header = json.loads(record["json"])
    except (ValueError, UnicodeDecodeError):
        raise Scail2Error(f"{where} has an unreadable json member; the shard is corrupt: regenerate it") from None
    _check_header(header, where)
    frames, height, width = header["frames"], header["height"], header["width"]
    arrays = {}
    for stream in STREAMS:
        count = frames if stream != "reference" else 1
        for suffix, mode, channels in (("", "RGB", (3,)), ("_mask", "P", ()), ("_detail", "P", ())):
            member = f"{stream}{suffix}.png"
            if member not in record:
                raise Scail2Error(f"{where} lacks {member}; the shard is corrupt or foreign: regenerate it")
            array = _decode_png(record[member], mode, (count * height, width, *channels), f"{where} {member}")
            shape = (height, width, *channels) if stream == "reference" else (frames, height, width, *channels)
            arrays[f"{stream}{suffix.replace('_mask', '_ids')}"] = array.reshape(shape)
    sample = PairSample(header["key"], header["task"], header["mode"], metadata=header["metadata"], **arrays)
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
        raise Scail2Error(f"shard index {shard_index} is not in 0..{num_shards - 1}: fix --shard-index/--num-shards "
                          f"or RANK/WORLD_SIZE")
    return shard_index, num_shards


def dataset_meta(generator: PairGenerator, num_pairs: int, shard_size: int) -> dict:
    return {
        "format": FORMAT, "version": FORMAT_VERSION, "num_pairs": num_pairs, "shard_size": shard_size,
        "num_shards": -(-num_pairs // shard_size), "generator": generator.describe(),
        "members": {"json": "header and metadata", "<stream>.png": "RGB, frames stacked vertically",
                    "<stream>_mask.png": "palette PNG: index = identity, palette = upstream colours",
                    "<stream>_detail.png": "palette PNG: index 1 limb ends, 2 face/head", "streams": list(STREAMS)},
    }


def _write_json_atomic(path: Path, data: dict) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.partial")  # several machines may write the same file
    partial.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(partial, path)


def _prepare_meta(out: Path, meta: dict) -> None:
    path = out / "meta.json"
    if path.exists():
        existing = _read_json(path)
        _check_header(existing, str(path))
        if existing != json.loads(json.dumps(meta)):
            differing = sorted(k for k in set(existing) | set(meta) if existing.get(k) != meta.get(k))
            raise Scail2Error(f"{path} describes a different dataset (differs in {', '.join(differing)}); resume "
                              f"with the same settings or choose another --out")
        return
    _write_json_atomic(path, meta)


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


def _write_shard(path: Path, records: Iterable[dict], on_sample) -> None:
    """Write records to `path` via a `.partial` file, renamed only once complete and on disk."""
    webdataset = require("webdataset", purpose="dataset shards")

    partial = path.with_name(path.name + ".partial")
    try:
        with open(partial, "wb") as stream:
            writer = webdataset.TarWriter(stream, user="scail2", group="scail2", encoder=False, mtime=TAR_MTIME)
            try:
                for record in records:
                    writer.write(record)
                    on_sample()
            finally:
                writer.close()
            stream.flush()
            os.fsync(stream.fileno())
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    os.replace(partial, path)


def write_dataset(generator: PairGenerator, out_dir: str | Path, num_pairs: int, *,
                  shard_size: int = DEFAULT_SHARD_SIZE, workers: int = 1, shard_index: int = 0, num_shards: int = 1,
                  progress: bool = True) -> WriteReport:
    """Write pairs 0..num_pairs-1 of `generator` as shards under `out_dir`, resuming what exists.

    With `num_shards` > 1 this process writes only the shards s with s % num_shards == shard_index.
    """
    from tqdm import tqdm

    if num_pairs < 1 or shard_size < 1 or workers < 1:
        raise Scail2Error(f"need positive --num, shard size and --workers (got {num_pairs}, {shard_size}, {workers})")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dataset_meta(generator, num_pairs, shard_size)
    _prepare_meta(out, meta)
    mine = [s for s in range(meta["num_shards"]) if s % num_shards == shard_index]
    pending = [s for s in mine if not (out / shard_name(s)).exists()]
    ranges = {s: range(s * shard_size, min((s + 1) * shard_size, num_pairs)) for s in mine}
    indices = [i for s in pending for i in ranges[s]]
    done = sum(len(ranges[s]) for s in mine) - len(indices)
    with (tqdm(total=done + len(indices), initial=done, unit="pair", disable=not progress, desc="synth") as bar,
          closing(_encoded_samples(generator, indices, workers)) as stream):
        for shard in pending:
            records = (next(stream) for _ in ranges[shard])
            _write_shard(out / shard_name(shard), records, lambda: bar.update(1))
    complete = finish_manifest(out, meta)
    return WriteReport(len(pending), len(mine) - len(pending), len(indices), complete)


def finish_manifest(out: Path, meta: dict) -> bool:
    """Write manifest.json if every shard exists (the last of several processes to finish does it)."""
    paths = [out / shard_name(s) for s in range(meta["num_shards"])]
    if not all(p.exists() for p in paths):
        return False
    shards = []
    for shard, path in enumerate(paths):
        first = shard * meta["shard_size"]
        count = min(meta["shard_size"], meta["num_pairs"] - first)
        shards.append({"name": path.name, "first_index": first, "count": count, "bytes": path.stat().st_size,
                       "sha256": _sha256(path)})
    _write_json_atomic(out / "manifest.json", {"format": FORMAT, "version": FORMAT_VERSION,
                                               "num_pairs": meta["num_pairs"], "shards": shards})
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise Scail2Error(f"{path} is missing; is this a directory written by `scail2 synth`?") from None
    except (ValueError, UnicodeDecodeError):
        raise Scail2Error(f"{path} is not valid JSON; the dataset is corrupt: regenerate it") from None


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
        raise Scail2Error(f"{path} is not a readable tar shard ({error}); it is corrupt or foreign: regenerate "
                          f"it") from None
    if expected_count is not None and count != expected_count:
        raise Scail2Error(f"{path} holds {count} samples, the manifest says {expected_count}; the shard is "
                          f"truncated or corrupt: delete it and re-run `scail2 synth` to regenerate it")


class MotionPairDataset:
    """A finished dataset directory: checks meta.json, the manifest and (with `verify`) shard checksums."""

    def __init__(self, directory: str | Path, verify: bool = True):
        self.directory = Path(directory)
        self.meta = _read_json(self.directory / "meta.json")
        _check_header(self.meta, str(self.directory / "meta.json"))
        manifest_path = self.directory / "manifest.json"
        if not manifest_path.exists():
            raise Scail2Error(f"{manifest_path} is missing: the synth run is unfinished; re-run the same "
                              f"`scail2 synth` command to finish it")
        self.manifest = _read_json(manifest_path)
        _check_header(self.manifest, str(manifest_path))
        for entry in self.manifest["shards"]:
            path = self.directory / entry["name"]
            if not path.is_file():
                raise Scail2Error(f"{path} is listed in the manifest but missing; re-run `scail2 synth` to "
                                  f"regenerate it")
            if verify and (path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]):
                raise Scail2Error(f"{path} does not match its manifest checksum; it is corrupt or foreign: delete "
                                  f"it and re-run `scail2 synth` to regenerate it")

    def __len__(self) -> int:
        return int(self.manifest["num_pairs"])

    @property
    def shard_paths(self) -> list[Path]:
        return [self.directory / entry["name"] for entry in self.manifest["shards"]]

    def __iter__(self) -> Iterator[PairSample]:
        for entry in self.manifest["shards"]:
            yield from read_shard(self.directory / entry["name"], entry["count"])


def webdataset_pipeline(directory: str | Path, **kwargs):
    """A `webdataset.WebDataset` over a finished dataset that yields `PairSample`s (for training loaders)."""
    webdataset = require("webdataset", purpose="dataset shards")

    dataset = MotionPairDataset(directory, verify=False)
    urls = [str(p) for p in dataset.shard_paths]
    return webdataset.WebDataset(urls, **kwargs).map(lambda record: decode_sample(record, record.get("__url__", "")))
