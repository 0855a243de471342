"""The mask folder contract: lossless palette PNGs, meta.json versioning, mode backgrounds, edits, atomicity."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from scail2.errors import Scail2Error
from scail2.preprocess import mask_folder
from scail2.preprocess.palette import BLACK, IDENTITY_COLORS, WHITE
from scail2.preprocess.segmentation.extract import MaskSettings, ProvidedMasks

META = {"width": 29, "height": 17, "fps": "30000/1001", "method": "test", "identities": []}


def random_ids(frames: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 7, size=(frames, 17, 29), dtype=np.uint8)


def write_folder(path, ids: np.ndarray, reference: np.ndarray | None = None, meta: dict = META):
    with mask_folder.MaskFolderWriter(path) as writer:
        for frame in ids:
            writer.write_frame(frame)
        if reference is not None:
            writer.write_reference(reference)
        writer.commit(dict(meta))
    return mask_folder.open_mask_folder(path)


def test_identity_maps_round_trip_losslessly(tmp_path):
    ids = random_ids()
    reference = random_ids(1, seed=5)[0]
    folder = write_folder(tmp_path / "masks", ids, reference)
    assert folder.num_frames == 3 and folder.size == (17, 29) and str(folder.fps) == "30000/1001"
    assert np.array_equal(np.stack(list(folder.iter_ids())), ids)
    assert np.array_equal(folder.reference_ids(), reference)
    with Image.open(tmp_path / "masks" / "frames" / "000001.png") as image:  # any viewer shows upstream colours
        assert image.mode == "P" and image.convert("RGB").getpixel((0, 0)) == ((BLACK, *IDENTITY_COLORS)[ids[1, 0, 0]])
    meta = json.loads((tmp_path / "masks" / "meta.json").read_text())
    assert (
        meta["format"] == "scail2-masks"
        and meta["format_version"] == mask_folder.FORMAT_VERSION
        and meta["frames"] == 3
    )


def test_palette_frames_take_the_modes_background(tmp_path):
    ids = np.zeros((2, 17, 29), np.uint8)
    ids[:, 3:9, 4:10] = 1
    ids[:, 3:9, 15:20] = 2
    folder = write_folder(tmp_path / "masks", ids)
    animate = folder.palette_frames("animate", "driving")
    replace = folder.palette_frames("replace", "driving")
    assert animate.shape == (2, 17, 29, 3) and animate.dtype == torch.uint8
    assert tuple(animate[0, 0, 0].tolist()) == BLACK and tuple(replace[0, 0, 0].tolist()) == WHITE
    assert (
        tuple(animate[1, 5, 5].tolist()) == IDENTITY_COLORS[0]
        and tuple(replace[1, 5, 16].tolist()) == IDENTITY_COLORS[1]
    )
    assert folder.identities == ()  # meta lists none here
    assert torch.equal(mask_folder.palette_to_identities(animate), torch.from_numpy(ids))


def test_edited_rgb_frames_are_snapped_back(tmp_path):
    ids = np.zeros((1, 17, 29), np.uint8)
    ids[0, 2:8, 2:8] = 3
    folder = write_folder(tmp_path / "masks", ids)
    rgb = mask_folder.identities_to_palette(ids[0], "animate", "driving").numpy().astype(np.int16)
    rgb[10:14, 20:25] = (250, 10, 5)  # a painted red (identity 2), slightly off
    rgb[2:8, 2:8] += 3  # a lossy save moved the green a little
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(tmp_path / "masks" / "frames" / "000000.png")
    edited = folder.frame_ids(0)
    assert (edited[2:8, 2:8] == 3).all() and (edited[10:14, 20:25] == 2).all() and edited[0, 0] == 0


def test_unknown_version_and_broken_folders_are_refused(tmp_path):
    folder = write_folder(tmp_path / "masks", random_ids(2))
    meta_path = folder.path / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "format_version": mask_folder.FORMAT_VERSION + 1}))
    with pytest.raises(Scail2Error, match="format version 2 is not supported"):
        mask_folder.open_mask_folder(folder.path)
    meta_path.write_text(json.dumps({**meta, "format": "something-else"}))
    with pytest.raises(Scail2Error, match="not a scail2 mask folder"):
        mask_folder.open_mask_folder(folder.path)
    meta_path.write_text(json.dumps(meta))
    (folder.path / "frames" / "000001.png").unlink()
    with pytest.raises(Scail2Error, match="1 mask frames are missing"):
        mask_folder.open_mask_folder(folder.path)
    with pytest.raises(Scail2Error, match="no meta.json"):
        mask_folder.open_mask_folder(tmp_path)


def test_failed_writes_leave_nothing_and_existing_folders_need_overwrite(tmp_path):
    target = tmp_path / "masks"
    with pytest.raises(RuntimeError):
        with mask_folder.MaskFolderWriter(target) as writer:
            writer.write_frame(random_ids(1)[0])
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    write_folder(target, random_ids(2))
    with pytest.raises(Scail2Error, match="already exists; pass --overwrite"):
        mask_folder.MaskFolderWriter(target)
    with mask_folder.MaskFolderWriter(target, overwrite=True) as writer:
        writer.write_frame(random_ids(1, seed=9)[0])
        writer.commit(dict(META))
    assert mask_folder.open_mask_folder(target).num_frames == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["masks"]


@pytest.mark.parametrize("kind", ["palette", "binary"])
def test_provided_masks_round_trip_losslessly(tmp_path, kind):
    ids = random_ids(4, seed=2) if kind == "palette" else (random_ids(4, seed=2) > 3).astype(np.uint8)
    grey = np.repeat((ids * 255)[..., None], 3, axis=-1).astype(np.uint8)
    user = mask_folder.identities_to_palette(ids, "replace", "driving").numpy() if kind == "palette" else grey
    provided = ProvidedMasks(torch.from_numpy(user), MaskSettings(method="provided"), "user masks")
    frames = np.zeros((4, 17, 29, 3), np.uint8)
    folder = write_folder(tmp_path / "masks", np.stack([m.numpy() for m in provided.render(frames)]))
    assert np.array_equal(np.stack(list(folder.iter_ids())), ids)
    assert [entry["index"] for entry in provided.identities] == sorted(int(k) for k in np.unique(ids) if k)
