"""Head boxes for DirectAnimator's face cue from a face detector, per character and frame (`--face-detector`).

    mask     the top of each character's mask (`scail2.preprocess.cues.head_box_from_mask`), no extra needed
    opencv   OpenCV's frontal-face Haar cascade, the file bundled in the opencv-python-headless wheel
             (`cv2.data.haarcascades`: nothing downloaded at run time), behind the `face` extra

Each detection belongs to the character whose identity mask covers most of its box (at least `MIN_MASK_SHARE`
of it; detections mostly on the background are dropped). Where a character has several, the one nearest its
mask-derived head box is kept (a face is where the head is; a false detection on a hand or a shirt pattern
rarely is). Where a character has none, its mask-derived box is kept and counted, so the cue folder's
meta.json says how often the detector found the face. The boxes are then smoothed over time as the
mask-derived ones are (`smooth_boxes`).

OpenCV 5 no longer ships the Haar cascades, hence the `<5` bound of the extra. The cascade's box covers the
face from brows to chin, smaller than a head; the face cue's enlargement (`face_scale`) still frames the head.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scail2.errors import Scail2Error
from scail2.preprocess.cue_settings import FACE_DETECTORS, CueSettings
from scail2.preprocess.cues import DrivingCues, character_identities, extract_cues, head_box_from_mask, smooth_boxes

CASCADE_FILE = "haarcascade_frontalface_default.xml"
# The detector runs on the frame scaled so its longer side is at most this (1080p: 3x faster, faces of 24
# pixels and up at this scale are found, which a person in the frame has).
DETECT_SIDE = 640
# The smallest share of a detection's box one character's mask must cover for it to be that character's face.
MIN_MASK_SHARE = 0.3


@dataclass
class DetectedBoxes:
    """Head boxes [T, K, 4] (smoothed) and, per character, the frames where the detector found its face."""

    boxes: np.ndarray
    detected: list[int]  # per character: frames with a detection
    fallback: list[int]  # per character: frames present in the mask but without a detection (mask-derived box)

    def review(self, detector: str) -> dict:
        """What the cue folder's meta.json records about the boxes."""
        return {"detector": detector, "detected_frames": self.detected, "mask_box_frames": self.fallback}


def opencv_cascade():
    """The bundled frontal-face cascade, or the one-line error naming the extra."""
    from scail2.optional import require

    cv2 = require("cv2", purpose="the --face-detector opencv face detector")
    data = getattr(cv2, "data", None)  # the pip wheels ship the cascades there; other builds may not
    cascade = cv2.CascadeClassifier(data.haarcascades + CASCADE_FILE) if data is not None else None
    if cascade is None or cascade.empty():
        raise Scail2Error(
            f"OpenCV {cv2.__version__} has no {CASCADE_FILE}; pip install 'opencv-python-headless>=4.8,<5'"
        )
    return cascade


def detect_faces(cascade, frame: np.ndarray) -> np.ndarray:
    """Face boxes [N, 4] (x0, y0, x1, y1) in a uint8 [H, W, 3] frame's pixels."""
    import cv2

    height, width = frame.shape[:2]
    scale = min(1.0, DETECT_SIDE / max(height, width))
    gray = cv2.cvtColor(np.ascontiguousarray(frame), cv2.COLOR_RGB2GRAY)
    if scale < 1:
        gray = cv2.resize(gray, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    found = cascade.detectMultiScale(cv2.equalizeHist(gray), scaleFactor=1.1, minNeighbors=5, minSize=(24, 24))
    if len(found) == 0:
        return np.zeros((0, 4), dtype=np.float32)
    x, y, w, h = np.asarray(found, dtype=np.float32).T
    return np.stack([x, y, x + w, y + h], axis=1) / scale


def owner(ids: np.ndarray, box: np.ndarray, identities: list[int]) -> int | None:
    """Index into `identities` of the character whose mask covers most of `box` (at least MIN_MASK_SHARE)."""
    x0, y0, x1, y1 = np.round(box).astype(int)
    region = ids[max(0, y0) : max(0, y1), max(0, x0) : max(0, x1)]
    if region.size == 0:
        return None
    shares = [np.count_nonzero(region == identity) / region.size for identity in identities]
    best = int(np.argmax(shares))
    return best if shares[best] >= MIN_MASK_SHARE else None


def nearest(candidates: list[np.ndarray], reference: np.ndarray) -> np.ndarray:
    """The candidate box whose centre is nearest the reference box's (the first when there is no reference)."""
    if np.isnan(reference[0]):
        return candidates[0]
    centre = lambda b: np.array([b[0] + b[2], b[1] + b[3]]) / 2  # noqa: E731
    return min(candidates, key=lambda b: float(np.linalg.norm(centre(b) - centre(reference))))


def opencv_detector():
    """frame uint8 [H, W, 3] -> face boxes [N, 4], by the bundled cascade."""
    cascade = opencv_cascade()
    return lambda frame: detect_faces(cascade, frame)


def detected_head_boxes(
    frames: np.ndarray, ids: np.ndarray, identities: list[int], settings: CueSettings, detect=None
) -> DetectedBoxes:
    """Head boxes per character and frame from a face detector (`detect`: frame -> boxes [N, 4]; default
    OpenCV's), the mask-derived box where it finds none, smoothed over `settings.box_smoothing` frames.
    `frames` uint8 [T, H, W, 3], `ids` [T, H, W]."""
    detect = detect if detect is not None else opencv_detector()
    raw = np.full((ids.shape[0], len(identities), 4), np.nan, dtype=np.float32)
    detected, fallback = [0] * len(identities), [0] * len(identities)
    for t in range(ids.shape[0]):
        mask_boxes = [head_box_from_mask(ids[t] == identity, settings.head_fraction) for identity in identities]
        faces: dict[int, list[np.ndarray]] = {}
        for box in detect(frames[t]):
            k = owner(ids[t], box, identities)
            if k is not None:
                faces.setdefault(k, []).append(box)
        for k, mask_box in enumerate(mask_boxes):
            if k in faces:
                raw[t, k] = nearest(faces[k], mask_box)
                detected[k] += 1
            elif not np.isnan(mask_box[0]):
                raw[t, k] = mask_box
                fallback[k] += 1
    return DetectedBoxes(smooth_boxes(raw, settings.box_smoothing), detected, fallback)


def extract_cues_with(
    frames: np.ndarray, ids: np.ndarray, settings: CueSettings, detector: str
) -> tuple[DrivingCues, dict]:
    """`extract_cues` with head boxes from `detector` (one of FACE_DETECTORS) -> (cues, what meta.json records
    about the boxes)."""
    if detector not in FACE_DETECTORS:
        raise Scail2Error(f"--face-detector {detector!r} is not one of {', '.join(FACE_DETECTORS)}")
    if detector == "mask":
        return extract_cues(frames, ids, settings), {"detector": "mask"}
    found = detected_head_boxes(frames, ids, character_identities(ids), settings)
    return extract_cues(frames, ids, settings, boxes=found.boxes), found.review(detector)
