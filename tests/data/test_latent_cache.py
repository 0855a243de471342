"""The latent cache on disk: format versions (2 writes target_masks always; 1, where it may be missing, is still
read), refusal of unknown versions, and the layout a finished build leaves."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from scail2.data.latent_cache import LATENT_CACHE, CacheEncoder, LatentCache, build_cache
from scail2.data.pairs import ProceduralPairGenerator, SynthConfig
from scail2.data.shards import write_dataset
from scail2.errors import Scail2Error

CONFIG = SynthConfig(height=32, width=48, frames=5, seed=4)


class _EncoderOfVersion1:
    """Writes records as caches of format version 1 could hold them: no target_masks, the older mode words."""

    text_encoder = None

    def __init__(self, inner: CacheEncoder):
        self.inner = inner

    def describe(self) -> dict:
        return self.inner.describe()

    def encode(self, sample) -> dict[str, torch.Tensor]:
        record = self.inner.encode(sample)
        del record["target_masks"]
        sample.mode = {"animate": "animation", "replace": "replacement"}[sample.mode]  # stored after encoding
        return record


def _set_version(cache: Path, version: int) -> None:
    for name in ("meta.json", "manifest.json"):
        header = json.loads((cache / name).read_text())
        (cache / name).write_text(json.dumps({**header, "version": version}))


@pytest.fixture(scope="module")
def encoder() -> CacheEncoder:
    from tests.pipelines.components import tiny_vae

    torch.manual_seed(0)
    return CacheEncoder(tiny_vae())


@pytest.fixture(scope="module")
def folders(encoder, tmp_path_factory) -> tuple[Path, Path]:
    """(MotionPair dataset of 2 pairs in 2 shards, its finished cache)."""
    root = tmp_path_factory.mktemp("latent")
    assert write_dataset(ProceduralPairGenerator(CONFIG), root / "data", 2, shard_size=1, progress=False).complete
    assert build_cache(root / "data", root / "cache", encoder, progress=False)
    return root / "data", root / "cache"


@pytest.fixture
def source(folders) -> Path:
    return folders[0]


@pytest.fixture
def cache(folders) -> Path:
    return folders[1]


def test_new_caches_are_version_2_and_every_record_has_target_masks(cache):
    assert sorted(p.name for p in cache.iterdir()) == [
        "cache-00000.json",
        "cache-00000.tar",
        "cache-00001.json",
        "cache-00001.tar",
        "manifest.json",
        "meta.json",
    ]
    for name in ("meta.json", "manifest.json"):
        header = json.loads((cache / name).read_text())
        assert (
            (header["format"], header["version"])
            == ("scail2-latent-cache", 2)
            == (LATENT_CACHE.name, LATENT_CACHE.version)
        )
    loaded = LatentCache(cache)
    assert loaded.version == 2 and len(loaded) == 2
    for index in range(len(loaded)):
        tensors = loaded[index].tensors
        assert tensors["target_masks"].shape == (1, *tensors["target_latents"].shape[1:])


def test_a_version_1_cache_without_target_masks_still_loads(source, encoder, cache, tmp_path):
    old = tmp_path / "v1"
    assert build_cache(source, old, _EncoderOfVersion1(encoder), progress=False)
    _set_version(old, 1)
    loaded = LatentCache(old)
    assert loaded.version == 1 and len(loaded) == 2
    record, current = loaded[1], LatentCache(cache)[1]
    assert "target_masks" not in record.tensors and record.key == current.key
    for index in range(len(loaded)):  # read in the current vocabulary
        assert (loaded[index].mode, loaded[index].replace) == (LatentCache(cache)[index].mode, loaded[index].replace)
        assert loaded[index].mode in ("animate", "replace")
    torch.testing.assert_close(record.tensors["target_latents"], current.tensors["target_latents"], rtol=0, atol=0)


@pytest.mark.parametrize("name", ["meta.json", "manifest.json"])
def test_unknown_versions_are_refused_with_one_line(cache, tmp_path, name):
    copy = tmp_path / "copy"
    shutil.copytree(cache, copy)
    header = json.loads((copy / name).read_text())
    (copy / name).write_text(json.dumps({**header, "version": 3}))
    with pytest.raises(
        Scail2Error,
        match=rf"{name} has cache format version 3; this scail2 reads version 1, 2: "
        r"upgrade scail2 or write it again with `scail2 cache`$",
    ) as caught:
        LatentCache(copy)
    assert "\n" not in str(caught.value)


def test_an_unfinished_version_1_cache_is_not_finished_with_version_2_records(source, encoder, cache, tmp_path):
    old = tmp_path / "v1"
    shutil.copytree(cache, old)
    for name in ("manifest.json", "cache-00001.json", "cache-00001.tar"):
        (old / name).unlink()
    meta = json.loads((old / "meta.json").read_text())
    (old / "meta.json").write_text(json.dumps({**meta, "version": 1}))
    with pytest.raises(Scail2Error, match=r"meta.json describes a different dataset \(differs in version\)"):
        build_cache(source, old, encoder, progress=False)
    with pytest.raises(Scail2Error, match="manifest.json is missing: the cache run is unfinished"):
        LatentCache(old)
