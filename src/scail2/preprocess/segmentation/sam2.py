"""SAM 2 through transformers (`Sam2VideoModel`), from a local weights folder, streamed frame by frame.

The folder is what `Sam2VideoModel.save_pretrained` writes (a converted `facebook/sam2.1-hiera-*`
checkpoint, for example). Nothing is downloaded. Frames are prepared the way transformers'
`Sam2VideoVideoProcessor` does it (bilinear resize to the model's square input, /255, ImageNet
mean and standard deviation; values from the folder's processor config when present). That is done
here because transformers' video processor imports torchvision, which this project does not need
otherwise.

Prompts are boxes and/or positive points per character, each on one frame. `auto_prompts` derives
them from the weight-free method: the box of each tracked character where it first appears fully.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from scail2.errors import Scail2Error

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PROCESSOR_CONFIGS = ("video_preprocessor_config.json", "preprocessor_config.json")


@dataclass
class ObjectPrompt:
    """One character's prompt on one frame, in the video's pixel coordinates."""

    frame: int = 0
    box: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
    points: list[tuple[float, float]] = field(default_factory=list)  # positive clicks (x, y)

    def __post_init__(self) -> None:
        if self.box is None and not self.points:
            raise ValueError("a prompt needs a box or at least one point")


def parse_boxes(text: str) -> list[ObjectPrompt]:
    """'x0,y0,x1,y1;x0,y0,x1,y1' -> one box prompt per character."""
    prompts = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        values = _numbers(part, "--boxes")
        if len(values) != 4 or values[2] <= values[0] or values[3] <= values[1]:
            raise Scail2Error(f"--boxes: {part!r} is not x0,y0,x1,y1 with x1 > x0 and y1 > y0 (video pixels)")
        prompts.append(ObjectPrompt(box=tuple(values)))
    return prompts


def parse_points(text: str) -> list[ObjectPrompt]:
    """'x,y x,y;x,y' -> characters separated by ';', each with one or more positive points."""
    prompts = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        points = []
        for pair in part.split():
            values = _numbers(pair, "--points")
            if len(values) != 2:
                raise Scail2Error(f"--points: {pair!r} is not x,y (video pixels); separate characters with ';'")
            points.append((values[0], values[1]))
        prompts.append(ObjectPrompt(points=points))
    return prompts


def _numbers(text: str, option: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise Scail2Error(f"{option}: {text!r} holds something that is not a number") from None


def merge_prompts(boxes: list[ObjectPrompt], points: list[ObjectPrompt], frame: int) -> list[ObjectPrompt]:
    """Boxes and points given for the same characters (same order) become one prompt each."""
    if boxes and points and len(boxes) != len(points):
        raise Scail2Error(
            f"--boxes names {len(boxes)} characters but --points {len(points)}; give one entry per "
            "character in both, in the same order, or only one of them"
        )
    count = max(len(boxes), len(points))
    return [
        ObjectPrompt(frame=frame, box=boxes[k].box if boxes else None, points=points[k].points if points else [])
        for k in range(count)
    ]


class Sam2Tracker:
    """A SAM 2 video model and its preprocessing, loaded from a local folder."""

    def __init__(self, model_dir: str | Path, device: str | torch.device = "cpu"):
        folder = Path(model_dir)
        if not (folder / "config.json").is_file():
            raise Scail2Error(
                f"{folder}: no config.json; pass a folder written by Sam2VideoModel.save_pretrained "
                "(a converted SAM 2 checkpoint); nothing is downloaded"
            )
        from transformers import Sam2VideoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        try:
            self.model = Sam2VideoModel.from_pretrained(str(folder)).to(device).eval()
        except (OSError, ValueError) as error:
            raise Scail2Error(
                f"{folder}: cannot be loaded as a SAM 2 video model ({str(error).splitlines()[0]})"
            ) from None
        self.device = torch.device(device)
        self.size, mean, std = self._preprocessing(folder)
        self.mean = torch.tensor(mean).view(3, 1, 1)
        self.std = torch.tensor(std).view(3, 1, 1)

    def _preprocessing(self, folder: Path) -> tuple[int, tuple, tuple]:
        size, mean, std = int(self.model.config.image_size), IMAGENET_MEAN, IMAGENET_STD
        for name in PROCESSOR_CONFIGS:
            if (folder / name).is_file():
                config = json.loads((folder / name).read_text())
                size = int(config.get("size", {}).get("height", size))
                mean, std = tuple(config.get("image_mean", mean)), tuple(config.get("image_std", std))
                break
        return size, mean, std

    def prepare(self, frame: np.ndarray) -> torch.Tensor:
        """uint8 [H, W, 3] -> float32 [3, S, S] normalised model input."""
        image = torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float()[None] / 255.0
        image = F.interpolate(image, size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)
        return (image[0] - self.mean) / self.std

    def _add_prompt(self, session, object_id: int, prompt: ObjectPrompt, height: int, width: int) -> None:
        scale = torch.tensor([self.size / width, self.size / height])
        coords, labels = [], []
        if prompt.box is not None:  # a box is two corner points with labels 2 and 3, before any clicks
            coords += [prompt.box[:2], prompt.box[2:]]
            labels += [2, 3]
        coords += list(prompt.points)
        labels += [1] * len(prompt.points)
        point_inputs = {
            "point_coords": (torch.tensor(coords, dtype=torch.float32) * scale).view(1, 1, -1, 2),
            "point_labels": torch.tensor(labels, dtype=torch.int32).view(1, 1, -1),
        }
        index = session.obj_id_to_idx(object_id)
        session.add_point_inputs(index, prompt.frame, point_inputs)
        session.remove_mask_inputs(index, prompt.frame)
        session.obj_with_new_inputs = sorted(set(session.obj_with_new_inputs) | {object_id})

    @torch.inference_mode()
    def track(self, frames: Iterable[np.ndarray], prompts: list[ObjectPrompt]) -> Iterator[torch.Tensor]:
        """Mask logits [K, H, W] (one per prompt, in prompt order) for every frame, streamed.

        Before a character's prompt frame its logits are -inf.
        """
        from transformers.models.sam2_video.modeling_sam2_video import Sam2VideoInferenceSession

        session = None
        for t, frame in enumerate(frames):
            height, width = frame.shape[:2]
            if session is None:
                session = Sam2VideoInferenceSession(
                    video_height=height, video_width=width, inference_device=self.device, dtype=torch.float32
                )
            for object_id, prompt in enumerate(prompts, start=1):
                if prompt.frame == t:
                    self._add_prompt(session, object_id, prompt, height, width)
            logits = torch.full((len(prompts), height, width), -torch.inf)
            if session.get_obj_num():
                output = self.model(inference_session=session, frame=self.prepare(frame).to(self.device))
                masks = F.interpolate(
                    output.pred_masks.float().cpu(), size=(height, width), mode="bilinear", align_corners=False
                )[:, 0]  # [objects, H, W]
                for slot, object_id in enumerate(output.object_ids):
                    logits[object_id - 1] = masks[slot]
                session.processed_frames.pop(t - 1, None)  # past frames live on as memories; bound the RAM
            yield logits


def logits_to_identities(logits: torch.Tensor) -> torch.Tensor:
    """[K, H, W] per-character logits -> uint8 [H, W]: the most confident character where any is > 0."""
    best, index = logits.max(dim=0)
    return torch.where(best > 0, index + 1, 0).to(torch.uint8)


def auto_prompts(ids: torch.Tensor, scale_x: float, scale_y: float) -> list[ObjectPrompt]:
    """One box prompt per identity of a small identity map [T, h, w] (ids 1..K), scaled to video pixels.

    Each identity is prompted on the first frame where its mask reaches half its peak area.
    """
    prompts = []
    for identity in range(1, int(ids.max()) + 1):
        areas = (ids == identity).flatten(1).sum(dim=1)
        if int(areas.max()) == 0:
            continue
        frame = int(torch.nonzero(areas >= 0.5 * areas.max())[0])
        ys, xs = torch.nonzero(ids[frame] == identity, as_tuple=True)
        box = (
            float(xs.min()) * scale_x,
            float(ys.min()) * scale_y,
            float(xs.max() + 1) * scale_x,
            float(ys.max() + 1) * scale_y,
        )
        prompts.append(ObjectPrompt(frame=frame, box=box))
    return prompts
