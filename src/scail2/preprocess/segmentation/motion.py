"""Weight-free foreground segmentation of a clip: background subtraction, a static layer, refinement.

Fixed (or nearly fixed) camera, the main case:
1. `camera.estimate_camera_motion`: each frame's similarity transform onto the middle frame, so a
   drifting or slowly zooming camera still has one background (identity when nothing moves).
2. The background: the per-pixel median of the aligned frames, sampled back into every frame, and the
   change probability m_t of each pixel against it (`change_maps`: exposure matched, overlays that stay
   put on screen and flickering pixels tolerated).
3. The motion region: where the clip moves between nearby frames (`motion_region`); characters live in it.
   Inside it the background is re-taken as a clean plate: per pixel, the median of the frames that look
   most like the scene around the region (a character who stays in one spot most of the clip drops out).
4. The static layer S: where a character barely moves (a seated speaker's torso) it *is* the median.
   `static_prior` compares the median with the scene around the motion region continued into it, and
   colour models of moving pixels versus the outside scene refine that (`static_layer`). Pieces of the
   median outside the motion region that stand out from the scene and stay joined to the movement in most
   frames (the body of someone who only waves) join S (`still_parts`).
5. The per-frame prior P = (1 - S) m + S (1 - m / 2): where the median is scene, a change means
   character; where the median shows the character, matching it means character and a change is
   undecided (left to colour). Outside the motion region changes count for little.
6. `colour_model.refine_probability` over the clip; pieces of a frame's mask with neither movement of
   their own nor a still part of a character are dropped (`keep_moving_pieces`); `matte_boundary` puts
   each edge where the compositing equation says a pixel is half covered (against the continued scene
   where the median shows the character).
7. A second pass of 2-6 whose median leaves out, per pixel, the frames the first pass masked in the
   character's colours: where a character stood for most of the clip the median held the character,
   and the first pass saw a ghost wherever the scene reappeared.

When even the aligned frames mostly differ from their median (strong parallax, fast motion), the first
frame is segmented as a still image (`still.py`) and carried forward frame by frame with colour models
of the frames so far. This is weaker; `ClipSegmentation.method` says which path ran.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from scail2.preprocess.segmentation import camera
from scail2.preprocess.segmentation.background import BackgroundSettings, change_probability, exposure_gains
from scail2.preprocess.segmentation.colour_model import (
    ColourSamples,
    RefineSettings,
    colour_bins,
    colour_evidence,
    fit_histogram,
    refine_probability,
)
from scail2.preprocess.segmentation.filters import (
    box_mean,
    component_areas,
    dilate,
    erode,
    fill_holes,
    gaussian_blur,
    label_components,
    remove_small_components,
    rgb_to_lab,
)
from scail2.preprocess.segmentation.still import StillSettings, barrier_distance, border_seeds, still_probability

logger = logging.getLogger(__name__)

MAX_LOGIT = 6.0
MAD_TO_SIGMA = 1.4826
# Frames the median is taken over (evenly spaced), which bounds its memory and time on long clips.
MEDIAN_SAMPLES = 96
# Colour distance ([0, 1] RGB) within which a frame's pixel matches the scene continued into the motion region.
PLATE_MATCH = 0.1


@dataclass(frozen=True)
class MotionSettings:
    background: BackgroundSettings = field(default_factory=BackgroundSettings)
    camera: camera.CameraSettings = field(default_factory=camera.CameraSettings)
    refine: RefineSettings = field(default_factory=RefineSettings)
    still: StillSettings = field(default_factory=StillSettings)
    closing_fraction: float = 0.04  # closing radius of the motion region [fraction of the longer side]
    static_margin_fraction: float = 0.015  # the static layer's scene model starts this far from the motion region
    propagation_blur_fraction: float = 0.01  # moving camera: blur of the previous frame's result
    motion_lag: int = 2  # frames between the images compared to find where things move
    energy_fraction: float = 0.15  # motion energy above this share of its 99.5th percentile marks movement
    region_min_relative_area: float = 0.1  # moving pieces smaller than this share of the largest are flicker
    static_departure: float = 0.1  # colour distance from the surrounding scene at which the median is 50/50 character
    static_slope: float = 4.0  # logit per doubling of that distance
    static_max_logit: float = 3.0  # cap of that evidence, so the colour models can overrule it
    min_moving_pixels: int = 4  # a piece of a frame's mask needs this many moving pixels to count
    static_change_frequency: float = 0.05  # pixels changing in this share of frames are judged by their changes too
    outside_region_weight: float = 0.1  # a change away from any movement is this much less likely a character
    plate_quantile: float = 0.4  # the clean plate is the median of this share of frames that look most like the scene
    still_part_contrast: float = 20.0  # Lab barrier distance from the border at which a still piece stands out
    still_part_max_fraction: float = 0.25  # ... and covers at most this share of the frame
    still_part_max_region: float = 0.1  # beyond a motion region this large, still parts are small next to it:
    still_part_region_share: float = 0.15  # ... at most this share of the region's area (a head above a spin)
    still_part_colour_evidence: float = 1.0  # ... and its colours this much likelier (mean log) among moving pixels
    anchor_share: float = 0.6  # a still piece belongs to a character when movement touches it in this share of frames
    background_passes: int = 2  # the second pass takes the background from the frames the first found uncovered
    uncovered_share: float = 0.05  # ... at pixels that this share of the frames (at least 2) see uncovered
    covered_margin_fraction: float = 0.01  # the first pass's masks are grown by this much before that


@dataclass
class ClipSegmentation:
    probability: torch.Tensor  # [T, h, w] foreground probability
    method: str  # "background" (fixed or aligned camera) or "propagation"
    camera: torch.Tensor | None = None  # [T, 4] similarity transforms onto the middle frame
    background: torch.Tensor | None = None  # [3, h, w] median in the middle frame's coordinates
    static_layer: torch.Tensor | None = None  # [h, w] idem
    motion_region: torch.Tensor | None = None  # [h, w] bool, idem
    changed_fraction: float = 0.0  # median share of a frame that differs from the background


def _logit(p: torch.Tensor) -> torch.Tensor:
    return torch.logit(p.clamp(1e-4, 1.0 - 1e-4)).clamp(-MAX_LOGIT, MAX_LOGIT)


def _pixels(size: tuple[int, int], fraction: float) -> int:
    return max(1, round(fraction * max(size)))


# ---------------------------------------------------------------------------------------------------
# 1. Background in the reference frame
# ---------------------------------------------------------------------------------------------------


@dataclass
class AlignedBackground:
    params: torch.Tensor | None  # [T, 4], None when the camera does not move
    median: torch.Tensor  # [3, h, w] in reference coordinates
    per_frame: torch.Tensor  # [T, 3, h, w] the median seen from each frame
    valid: torch.Tensor  # [T, h, w] bool: the frame's pixel maps inside the reference

    def to_reference(self, maps: torch.Tensor) -> torch.Tensor:
        """Per-frame maps [T, h, w] -> the same maps in reference coordinates (zeros outside)."""
        if self.params is None:
            return maps
        return camera.warp(maps[:, None], camera.invert(self.params))[:, 0]

    def to_frames_image(self, reference_image: torch.Tensor) -> torch.Tensor:
        """A reference image [3, h, w] -> [T, 3, h, w] seen from each frame."""
        if self.params is None:
            return reference_image.expand(self.per_frame.shape[0], -1, -1, -1)
        return camera.warp(reference_image[None], self.params)

    def to_frames(self, reference_map: torch.Tensor) -> torch.Tensor:
        """A reference map [h, w] -> [T, h, w] seen from each frame."""
        if self.params is None:
            return reference_map.expand(self.per_frame.shape[0], -1, -1)
        return camera.warp(reference_map[None, None].float(), self.params)[:, 0]


def aligned_background(
    images: torch.Tensor,
    settings: MotionSettings,
    params: torch.Tensor | None = None,
    plate: tuple[torch.Tensor, torch.Tensor] | None = None,
    covered: torch.Tensor | None = None,
) -> AlignedBackground:
    """The clip's background median, with the camera's motion taken out when there is any.

    `params` reuses an earlier camera estimate. With `plate` = (scene [3, h, w], region bool [h, w]), pixels
    inside the region take the median of only the frames that look most like the scene there
    (`clean_plate`): a character who stands in one place for most of the clip no longer paints itself
    into the background. With `covered` (bool [T, h, w], frame coordinates: an earlier pass's character
    masks), a pixel's median leaves out the frames where it is covered, wherever at least
    `uncovered_share` of the frames see it uncovered.
    """
    count, _, height, width = images.shape
    if params is None:
        params = camera.estimate_camera_motion(images, settings.camera) if count >= 3 else None
        if (
            params is not None
            and float(camera.displacement_pixels(params, height, width).max()) < settings.camera.still_pixels
        ):
            params = None
    picks = torch.linspace(0, count - 1, min(MEDIAN_SAMPLES, count)).round().long().unique()
    if params is None:
        colours = images[picks]
    else:
        inverse = camera.invert(params[picks])
        stack = torch.cat([images[picks], torch.ones(len(picks), 1, height, width)], dim=1)
        aligned = torch.stack([camera.warp(stack[k : k + 1], inverse[k : k + 1])[0] for k in range(len(picks))])
        colours = torch.where(aligned[:, 3:] > 0.999, aligned[:, :3], torch.nan)
    median = colours.nanmedian(dim=0).values
    if plate is not None:
        scene, region = plate
        median = torch.where(region, clean_plate(colours, scene, settings.plate_quantile), median)
    if covered is not None:
        hidden = covered[picks].float()
        if params is not None:
            hidden = torch.stack(
                [camera.warp(hidden[k : k + 1, None], inverse[k : k + 1])[0, 0] for k in range(len(picks))]
            )
        uncovered = torch.where(hidden[:, None] < 0.5, colours, torch.nan)
        enough = (~uncovered[:, 0].isnan()).sum(dim=0) >= max(2, settings.uncovered_share * len(picks))
        median = torch.where(enough, uncovered.nanmedian(dim=0).values, median)
    if params is None:
        return AlignedBackground(
            None, median, median.expand(count, -1, -1, -1), torch.ones(count, height, width, dtype=torch.bool)
        )
    median = torch.where(median.isnan(), images[count // 2], median)
    inside = torch.cat([median, torch.ones(1, height, width)])[None]
    seen = camera.warp(inside, params)
    return AlignedBackground(params, median, seen[:, :3], seen[:, 3] > 0.999)


def clean_plate(colours: torch.Tensor, scene: torch.Tensor, quantile: float) -> torch.Tensor:
    """[3, h, w]: per pixel, the median of the `quantile` share of frames `colours` [K, 3, h, w] (NaN where
    a frame does not see the pixel) whose colour departs least from `scene` [3, h, w]."""
    departure = (gaussian_blur(colours.nan_to_num(), 1.0) - gaussian_blur(scene, 1.0)).pow(2).sum(dim=1)
    departure = torch.where(colours[:, 0].isnan(), torch.inf, departure)
    rank = max(1, int(quantile * colours.shape[0]))
    threshold = departure.kthvalue(rank, dim=0).values
    chosen = (departure <= threshold) & departure.isfinite()
    plate = torch.where(chosen[:, None], colours, torch.nan).nanmedian(dim=0).values
    # Only where some frames do look like the continued scene: elsewhere that guess is too rough to trust.
    trusted = threshold <= PLATE_MATCH**2
    return torch.where(trusted, plate, colours.nanmedian(dim=0).values)


def _distance(images: torch.Tensor, background: torch.Tensor, settings: BackgroundSettings) -> torch.Tensor:
    gains = exposure_gains(images, background, settings.max_gain)
    distance = (images * gains - background).pow(2).sum(dim=1).sqrt()
    return box_mean(distance, 1) if settings.denoise else distance


def change_maps(images: torch.Tensor, background: AlignedBackground, settings: BackgroundSettings):
    """(change probability [T, h, w], threshold) of every pixel against the background.

    With a moving camera, a pixel also counts as unchanged when it matches the plain (screen-fixed)
    median: captions, logos and picture-in-picture boxes stay put on screen while the scene moves.
    A pixel's own threshold rises with the flicker it shows in most frames (the 30th percentile of its
    change between consecutive frames), so twinkling lights or a rippling backdrop are not taken for
    characters, while a character who stands still for most of the clip still differs from a clean
    background.
    """
    distance = _distance(images, background.per_frame, settings)
    distance = torch.where(background.valid, distance, torch.inf)
    if background.params is not None:
        screen = images[:: max(1, images.shape[0] // MEDIAN_SAMPLES)].median(dim=0).values
        distance = torch.minimum(distance, _distance(images, screen[None], settings))
    step = max(1, distance.shape[0] // 16)
    finite = distance[::step][distance[::step].isfinite()]
    noise = float(finite.median()) * MAD_TO_SIGMA
    # Flicker is how much a pixel changes between consecutive frames in most of them: twinkling lights and
    # rippling water do, a character standing still over the (clean) background does not. With a moving
    # camera it is the distance to the aligned background instead.
    if background.params is None:
        typical = _distance(images[1:], images[:-1], settings)[::step]
    else:  # consecutive frames differ by the camera's motion; the aligned background does not
        typical = distance[::step]
    flicker = torch.quantile(typical.clamp_max(10.0), settings.flicker_quantile, dim=0)  # [h, w]
    threshold = torch.maximum(
        torch.tensor(max(settings.min_threshold, settings.noise_multiple * noise)), settings.flicker_multiple * flicker
    )
    change = change_probability(distance.clamp_max(10.0), threshold)
    return torch.where(distance.isfinite(), change, 0.5), threshold


# ---------------------------------------------------------------------------------------------------
# 2. Motion region and static layer (reference coordinates)
# ---------------------------------------------------------------------------------------------------


def motion_region(images: torch.Tensor, settings: MotionSettings) -> torch.Tensor:
    """bool [h, w]: the space the characters move in, from the motion energy between nearby frames.

    Differences over a short lag ignore slow drifts (a backdrop panning, light changing) that a
    clip-wide median mistakes for change. Their mean over the clip (the motion energy) is thresholded
    relative to its high end, so scattered flicker (twinkling lights, noise) stays out while a person's
    head, hands and outline stand out; small pieces are dropped, then the rest is closed and filled.
    """
    frames = images.shape[0]
    lag = max(1, min(settings.motion_lag, frames // 3))
    distance = box_mean((images[lag:] - images[:-lag]).pow(2).sum(dim=1).sqrt(), 1)
    energy = distance.mean(dim=0)  # [h, w]
    noise = float(distance[:: max(1, len(distance) // 16)].median()) * MAD_TO_SIGMA
    threshold = max(noise, settings.energy_fraction * float(torch.quantile(energy.flatten(), 0.995)))
    moving = remove_small_components(energy > threshold, 0.002 * energy.numel())
    labels, count = label_components(moving)
    if count > 1:  # keep the pieces of some size next to the largest (characters, not flicker)
        areas = component_areas(labels, count)
        keep = areas >= settings.region_min_relative_area * areas[1:].max()
        keep[0] = False
        moving = keep[labels]
    radius = _pixels(moving.shape, settings.closing_fraction)
    return fill_holes(erode(dilate(moving, radius), radius))


def inpaint_outside(
    image: torch.Tensor, known: torch.Tensor, scales=(4, 8, 16, 32, 64), stretch: float = 2.0
) -> torch.Tensor:
    """Fill the unknown part of `image` [3, h, w] from the `known` (bool [h, w]) part: normalised
    Gaussian averages of growing size, each pixel taking the finest scale that reaches it.

    The Gaussians are `stretch` times wider than the scale across and that much shorter up and down:
    scenes change far more from top to bottom (sky, horizon, floor, wall) than from side to side, so a
    gap is better filled from its left and right than from above and below.
    """
    weight = known.float()
    filled = image.clone()
    done = known.clone()
    for sigma in scales:
        spread = (sigma / stretch, sigma * stretch)
        coverage = gaussian_blur(weight, spread)
        estimate = gaussian_blur(image * weight, spread) / coverage.clamp_min(1e-6)
        reached = coverage > 0.05
        filled = torch.where(~done & reached, estimate, filled)
        done |= reached
    return filled


def static_prior(
    images: torch.Tensor,
    change: torch.Tensor,
    median: torch.Tensor,
    scene: torch.Tensor,
    region: torch.Tensor,
    settings: MotionSettings,
) -> torch.Tensor:
    """Logits [h, w] that the median shows a character sitting still rather than the scene.

    `scene` is the scene around the motion region continued into it. Where a pixel rarely changes, a
    median far from that scene is a character sitting still. Where it changes, the changed values are
    compared with the median: whichever departs less from the scene is the scene (a walker's path shows
    the ground in the median; a seated speaker's ghost shows the backdrop only when he moves away).
    Limitation: a part that sits still while other parts pass in front of it (a torso behind
    gesturing hands) is judged like a path and tends to be missed.
    """

    def departure(colours: torch.Tensor) -> torch.Tensor:  # [..., 3, h, w] -> [..., h, w]
        return (gaussian_blur(colours, 2.0) - gaussian_blur(scene, 2.0)).pow(2).sum(dim=-3).sqrt().clamp_min(1e-3)

    of_median = departure(median)
    weights = change.clamp_min(1e-6)
    of_changes = (departure(images) * weights).sum(dim=0) / weights.sum(dim=0)
    still = torch.log2(of_median / settings.static_departure)
    compared = torch.log2(of_median / of_changes)
    frequency = (change > 0.5).float().mean(dim=0)
    mix = (frequency / settings.static_change_frequency).clamp(0.0, 1.0)
    prior = settings.static_slope * ((1.0 - mix) * still + mix * compared)
    return torch.where(region, prior.clamp(-settings.static_max_logit, settings.static_max_logit), -MAX_LOGIT)


def scene_around(median: torch.Tensor, region: torch.Tensor, settings: MotionSettings):
    """(scene [3, h, w], outside bool [h, w]): the median away from the motion region, continued into it."""
    outside = ~dilate(region, _pixels(region.shape, settings.static_margin_fraction))
    return inpaint_outside(median, outside), outside


def static_layer(
    images: torch.Tensor,
    change: torch.Tensor,
    median: torch.Tensor,
    region: torch.Tensor,
    region_seen: torch.Tensor,
    scene: tuple[torch.Tensor, torch.Tensor],
    settings: MotionSettings,
) -> torch.Tensor:
    """Probability [h, w] that the median shows a character rather than the scene: `static_prior`, then
    colour models (the changing pixels for characters, the median outside the region for the scene).

    The clip statistics are taken in frame coordinates; with a slowly moving camera that blurs them a
    little, which the colour models absorb. `scene` is `scene_around(median, region)`.
    """
    scene, outside = scene
    prior = static_prior(images, change, median, scene, region, settings)
    step = max(1, images.shape[0] // 32)
    moving = (change[::step] > 0.5) & region_seen[::step]
    foreground = ColourSamples(colour_bins(images[::step]), moving.float())
    scenery = ColourSamples(colour_bins(median[None])[0][outside], torch.ones(int(outside.sum())))
    layer = refine_probability(
        median[None], prior[None], settings.refine, foreground_samples=foreground, background_samples=scenery
    )[0]
    return layer * region


def anchored_pieces(candidates: torch.Tensor, moving: torch.Tensor, settings: MotionSettings) -> torch.Tensor:
    """bool [h, w]: the pieces of `candidates` [h, w] that movement (`moving` [T, h, w], same coordinates)
    touches in at least `anchor_share` of the frames that move at all.

    A standing body stays joined to its waving hand all clip long; a prop that a walker passes is
    touched for a few frames only.
    """
    labels, count = label_components(candidates)
    if count == 0:
        return torch.zeros_like(candidates)
    active = moving.flatten(1).sum(dim=1) >= settings.min_moving_pixels
    if not bool(active.any()):
        return torch.zeros_like(candidates)
    near = dilate(moving[active], 2)
    touched = torch.zeros(count + 1)
    for frame in near:
        touched[torch.unique(labels[frame])] += 1
    keep = touched >= settings.anchor_share * int(active.sum())
    keep[0] = False
    return keep[labels]


def still_parts(
    median: torch.Tensor,
    region: torch.Tensor,
    moving: torch.Tensor,
    settings: MotionSettings,
    moving_colours: torch.Tensor | None = None,
) -> torch.Tensor:
    """bool [h, w]: pieces of the median outside the motion region that stand out from the scene (their
    minimum barrier distance from the top, left and right borders, as in `still.py`) and that the
    clip's movement stays joined to: the body of someone who only waves, nods or talks. Pieces that reach
    the top, left or right border or cover more than `still_part_max_fraction` of the frame are scenery.

    When the movement itself spans more than `still_part_max_region` of the frame (someone who walks,
    dances or spins), a still part beside it can only be a small piece of the same character: the head
    above a spinning body. It must then cover at most `still_part_region_share` of the region, and its
    colours must be clearly likelier among the moving pixels (`moving_colours`, a `fit_histogram` table)
    than in the scene outside the region (`still_part_colour_evidence`): a skin-coloured head passes
    (2.5 on a procedural spin), the prop or fence a dancing hand keeps brushing does not (0.1 and 0.7).
    """
    height, width = median.shape[-2:]
    wide = float(region.float().mean()) > settings.still_part_max_region
    if wide and moving_colours is None:
        return torch.zeros_like(region)
    seeds = border_seeds(height, width, settings.still.border_fraction)
    distance = barrier_distance(rgb_to_lab(median[None])[0], seeds, settings.still.passes).sum(dim=0)
    labels, count = label_components((distance > settings.still_part_contrast) & ~region)
    # Scenery, not a body: pieces that reach the top, left or right border, or cover much of the frame.
    scenery = torch.unique(labels[dilate(seeds, 2)])
    areas = component_areas(labels, count)
    keep = areas <= settings.still_part_max_fraction * height * width
    if wide:
        bins = colour_bins(median[None])[0]
        evidence = colour_evidence(bins, moving_colours, fit_histogram(bins, (~region).float()))
        mean_evidence = torch.zeros(count + 1).index_add_(0, labels.flatten(), evidence.flatten()) / areas.clamp_min(1)
        keep &= areas <= settings.still_part_region_share * float(region.sum())
        keep &= mean_evidence > settings.still_part_colour_evidence
    keep[scenery] = False
    keep[0] = False
    return anchored_pieces(keep[labels], moving, settings)


# ---------------------------------------------------------------------------------------------------
# 3. The two paths
# ---------------------------------------------------------------------------------------------------


def segment_with_background(
    images: torch.Tensor, background: AlignedBackground, settings: MotionSettings
) -> ClipSegmentation:
    """The fixed (or aligned) camera path: motion region, clean plate, then `background_passes` passes of
    steps 2-6, each later one with the background taken from the frames the previous pass found uncovered."""
    region = motion_region(images, settings)  # frame coordinates: the camera barely moves in 2 frames
    region = background.to_reference(region[None].float().expand(images.shape[0], -1, -1)).amax(dim=0) > 0.5
    first_guess, _ = scene_around(background.median, region, settings)
    plate = (first_guess, region)
    background = aligned_background(images, settings, background.params, plate=plate)
    result = segment_pass(images, background, region, settings)
    for _ in range(settings.background_passes - 1):
        covered = dilate(
            character_coloured(images, result.probability), _pixels(region.shape, settings.covered_margin_fraction)
        )
        background = aligned_background(images, settings, background.params, plate=plate, covered=covered)
        result = segment_pass(images, background, region, settings)
    return result


def character_coloured(images: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
    """bool [T, h, w]: mask pixels (`probability` > 0.5) whose colour is likelier under the masks' colour
    model than under the rest's. A ghost (the true background where a wrong median holds the character)
    is masked but coloured like the scene, so the next background pass still sees the scene there."""
    bins = colour_bins(images)
    evidence = colour_evidence(bins, fit_histogram(bins, probability), fit_histogram(bins, 1.0 - probability))
    return (probability > 0.5) & (evidence > 0)


def segment_pass(
    images: torch.Tensor, background: AlignedBackground, region: torch.Tensor, settings: MotionSettings
) -> ClipSegmentation:
    """Steps 2-6 of the module docstring against one background, inside a motion `region` (reference
    coordinates)."""
    change, _ = change_maps(images, background, settings.background)
    moving_reference = background.to_reference((change > 0.5).float()) > 0.5
    step = max(1, images.shape[0] // 32)
    in_region = background.to_frames(region)[::step] > 0.5
    moving_colours = fit_histogram(colour_bins(images[::step]), ((change[::step] > 0.5) & in_region).float())
    standing = still_parts(background.median, region, moving_reference, settings, moving_colours)
    region = region | standing
    region_seen = background.to_frames(region) > 0.5
    scene = scene_around(background.median, region, settings)
    layer = torch.maximum(
        static_layer(images, change, background.median, region, region_seen, scene, settings), standing.float()
    )
    layer_seen = background.to_frames(layer)
    prior = (1.0 - layer_seen) * change + layer_seen * (1.0 - 0.5 * change)
    prior = torch.where(region_seen, prior, settings.outside_region_weight * prior)  # characters move
    probability = refine_probability(images, _logit(prior), settings.refine)
    # A piece of a frame's mask counts as a character when it moves, or when it is a still part of one.
    anchored = anchored_pieces(layer > 0.5, moving_reference, settings)
    moving = ((change > 0.5) & (layer_seen < 0.5)) | (background.to_frames(anchored.float()) > 0.5)
    mask = keep_moving_pieces(probability > 0.5, moving, settings.min_moving_pixels)
    # Where the median shows the character itself, edges are matted against the scene continued inwards.
    plate = torch.where(layer_seen[:, None] > 0.5, background.to_frames_image(scene[0]), background.per_frame)
    mask = matte_boundary(images, plate, mask) & background.valid
    probability = torch.where(mask, probability.clamp_min(0.5 + 1e-3), probability.clamp_max(0.5 - 1e-3))
    return ClipSegmentation(probability, "background", background.params, background.median, layer, region)


def keep_moving_pieces(mask: torch.Tensor, moving: torch.Tensor, min_pixels: int) -> torch.Tensor:
    """Per frame, drop pieces of the mask without movement of their own: a static blob is only a character
    when something of it moves (a seated speaker's still torso joins his moving head and hands)."""
    kept = torch.zeros_like(mask)
    for t in range(mask.shape[0]):
        labels, count = label_components(mask[t])
        if count == 0:
            continue
        evidence = torch.bincount(labels[moving[t]], minlength=count + 1)
        keep = evidence >= min_pixels
        keep[0] = False
        kept[t] = keep[labels]
    return kept


def segment_by_propagation(images: torch.Tensor, settings: MotionSettings) -> ClipSegmentation:
    """Still-image segmentation of frame 0, carried forward frame by frame."""
    probability = torch.empty(images.shape[0], *images.shape[-2:])
    probability[0] = still_probability(images[0], settings.still)
    sigma = _pixels(images.shape[-2:], settings.propagation_blur_fraction)
    bins = colour_bins(images)
    for t in range(1, images.shape[0]):
        previous = gaussian_blur(probability[t - 1], sigma)
        history = slice(max(0, t - 8), t)
        foreground = ColourSamples(bins[history], probability[history])
        scene = ColourSamples(bins[history], 1.0 - probability[history])
        probability[t] = refine_probability(
            images[t : t + 1],
            _logit(previous)[None],
            settings.refine,
            foreground_samples=foreground,
            background_samples=scene,
        )[0]
    return ClipSegmentation(probability, "propagation")


def segment_clip(images: torch.Tensor, settings: MotionSettings = MotionSettings()) -> ClipSegmentation:
    """Foreground probability of every frame of `images` float [T, 3, h, w] in [0, 1]."""
    if images.shape[0] < 3:
        logger.warning(
            "%d frames are too few for a background model; masks come from still-image segmentation", images.shape[0]
        )
        return segment_by_propagation(images, settings)
    background = aligned_background(images, settings)
    change, _ = change_maps(images, background, settings.background)
    changed = float((change > 0.5).flatten(1).float().mean(dim=1).median())
    if changed > settings.background.moving_camera_fraction:
        logger.warning(
            "%.0f%% of a typical frame differs from the background even after aligning the camera; "
            "masks come from still-image segmentation carried through the clip (lower quality; "
            "--method sam2 does better)",
            100 * changed,
        )
        result = segment_by_propagation(images, settings)
    else:
        result = segment_with_background(images, background, settings)
    result.changed_fraction = changed
    return result


def matte_boundary(
    images: torch.Tensor, background: torch.Tensor, foreground: torch.Tensor, band: int = 2, min_contrast: float = 0.1
) -> torch.Tensor:
    """Move mask edges to where a pixel is at least half covered, by the compositing equation.

    A boundary pixel is I = a F + (1 - a) B with the background B [T, 3, h, w] known; F is taken from
    the nearby interior of the mask. Within `band` pixels of the edge, a pixel is foreground when
    a >= 1/2 (where F and B differ by at least `min_contrast`; elsewhere the mask is kept).
    """
    inner = erode(foreground, 1).float()[:, None]  # [T, 1, h, w]
    weight = gaussian_blur(inner, 1.5)
    colour = gaussian_blur(images * inner, 1.5) / weight.clamp_min(1e-6)  # local foreground colour
    towards = colour - background
    along = ((images - background) * towards).sum(dim=1)
    contrast = towards.pow(2).sum(dim=1)
    coverage = along / contrast.clamp_min(1e-6)
    boundary = dilate(foreground, band) & ~erode(foreground, band)
    usable = boundary & (weight[:, 0] > 0.05) & (contrast > min_contrast**2)
    return torch.where(usable, coverage >= 0.5, foreground)
