"""The anti-aliased numpy rasteriser: tapered capsules by signed distance, composited back to front.

Each part is evaluated only on the pixels it can reach. Those (part, pixel) samples are kept in flat
arrays, so several frames with all their characters (each part tagged with its frame) are a few dozen
vectorised numpy operations, not a loop over parts or frames. A sample's signed distance d (pixels,
negative inside) gives the coverage clip(0.5 - d, 0, 1), the usual one-pixel analytic anti-aliasing. The
outline is the outer `outline` pixels of a part, the fill the rest, shaded towards the rim so limbs read
as round.

Compositing is the painter's algorithm done in closed form: the samples are grouped by pixel in drawing
order and each is attenuated by the transmittance of the samples drawn after it on the same pixel.

Masks are exact by construction: a pixel belongs to a part when the pixel centre lies inside it (d <= 0,
i.e. coverage >= 1/2); the identity and region tag of a pixel are those of the last such part drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

PATTERN_FLAT, PATTERN_STRIPES, PATTERN_SPOTS, PATTERN_GRADIENT = range(4)


@dataclass
class PartBatch:
    """Parts in drawing order (back to front); lengths in pixels, colours 0..255. Every field has length P."""

    ax: np.ndarray  # end a, x (pixel centres sit at i + 0.5)
    ay: np.ndarray
    bx: np.ndarray  # end b
    by: np.ndarray
    ra: np.ndarray  # radius at a
    rb: np.ndarray  # radius at b
    fill: np.ndarray  # [P, 3]
    pattern_colour: np.ndarray  # [P, 3]
    outline_colour: np.ndarray  # [P, 3]
    outline: np.ndarray  # outline width (0, or >= 1 so that the fill never shows through it)
    pattern: np.ndarray  # int pattern code (PATTERN_*)
    period: np.ndarray  # pattern period in pixels
    tag: np.ndarray  # uint8 region tag written to the detail map
    identity: np.ndarray  # uint8 identity written to the identity map
    frame: np.ndarray  # int frame of the stack the part is drawn into

    def __len__(self) -> int:
        return len(self.ax)

    def take(self, indices: np.ndarray) -> PartBatch:
        """The parts at `indices`, in that order."""
        return PartBatch(*(getattr(self, f.name)[indices] for f in fields(PartBatch)))

    @staticmethod
    def concatenate(batches: list[PartBatch]) -> PartBatch:
        """One batch drawing `batches` in order (the first is furthest back)."""
        return PartBatch(*(np.concatenate([getattr(b, f.name) for b in batches]) for f in fields(PartBatch)))


@dataclass
class Canvas:
    """Frames being drawn: colour plus, optionally, the identity map and the detail-region map.

    Arrays are [F, H, W, ...] for a stack of frames or [H, W, ...] for one (then every part's frame is 0).
    """

    rgb: np.ndarray  # [F, H, W, 3] or [H, W, 3] float32 0..255, C-contiguous
    ids: np.ndarray | None = None  # [F, H, W] or [H, W] uint8: 0 background, k = identity k
    detail: np.ndarray | None = None  # same shape: region tag of the visible part


def part_boxes(parts: PartBatch, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Per-part pixel boxes (y0, y1, x0, x1), clipped to the frame; a part reaches half a pixel past its edge."""
    reach = np.maximum(parts.ra, parts.rb) + 1.0
    x0 = np.clip(np.floor(np.minimum(parts.ax, parts.bx) - reach), 0, width).astype(np.int64)
    x1 = np.clip(np.ceil(np.maximum(parts.ax, parts.bx) + reach), 0, width).astype(np.int64)
    y0 = np.clip(np.floor(np.minimum(parts.ay, parts.by) - reach), 0, height).astype(np.int64)
    y1 = np.clip(np.ceil(np.maximum(parts.ay, parts.by) + reach), 0, height).astype(np.int64)
    return y0, np.maximum(y1, y0), x0, np.maximum(x1, x0)


def _ranges(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For consecutive blocks of the given sizes: the block index and the position inside it, per element."""
    block = np.repeat(np.arange(len(counts)), counts)
    return block, np.arange(len(block)) - np.repeat(np.cumsum(counts) - counts, counts)


def _samples(parts: PartBatch, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Candidate (part, pixel) pairs: per part and row, the columns whose centres can be covered.

    A pixel is covered only if its centre lies within `reach` = radius + 1/2 of the segment. For one row,
    such centres are near segment points within `reach` of the row vertically, and no further sideways than
    sqrt(reach^2 - d^2), d being the row's vertical distance from the segment's span.
    """
    y0, y1, x0, x1 = part_boxes(parts, height, width)
    row_part, offset = _ranges(y1 - y0)
    row = y0[row_part] + offset
    centre = row + 0.5
    reach = np.maximum(parts.ra, parts.rb)[row_part] + 0.5 + 1e-6
    ax, ay, bx, by = parts.ax[row_part], parts.ay[row_part], parts.bx[row_part], parts.by[row_part]
    dy = by - ay
    flat = np.abs(dy) < 1e-9
    safe = np.where(flat, 1.0, dy)
    s0 = np.where(flat, 0.0, (centre - reach - ay) / safe)
    s1 = np.where(flat, 1.0, (centre + reach - ay) / safe)
    low, high = np.clip(np.minimum(s0, s1), 0.0, 1.0), np.clip(np.maximum(s0, s1), 0.0, 1.0)
    xa, xb = ax + low * (bx - ax), ax + high * (bx - ax)
    gap = np.maximum(np.maximum(np.minimum(ay, by) - centre, centre - np.maximum(ay, by)), 0.0)
    half = np.sqrt(np.maximum(reach * reach - gap * gap, 0.0))
    left = np.clip(np.floor(np.minimum(xa, xb) - half - 0.5), x0[row_part], x1[row_part]).astype(np.int64)
    right = np.clip(np.floor(np.maximum(xa, xb) + half - 0.5) + 1, x0[row_part], x1[row_part]).astype(np.int64)
    sample_row, column = _ranges(np.maximum(right - left, 0))
    return row_part[sample_row], row[sample_row], left[sample_row] + column


def capsule_distance(parts: PartBatch, part: np.ndarray, row: np.ndarray, col: np.ndarray):
    """Signed distance, local radius and part coordinates (u along the axis from a, v across) per sample."""
    dx, dy = parts.bx - parts.ax, parts.by - parts.ay
    length = np.sqrt(dx * dx + dy * dy)
    has_axis = length > 1e-6
    safe = np.where(has_axis, length, 1.0)
    ux, uy = np.where(has_axis, dx / safe, 1.0), np.where(has_axis, dy / safe, 0.0)
    # u = (x - ax) ux + (y - ay) uy at pixel centres; the per-part constants fold into one offset each.
    cx, cy = 0.5 - parts.ax, 0.5 - parts.ay
    ux_s, uy_s = ux[part], uy[part]
    u = col * ux_s + row * uy_s + (cx * ux + cy * uy)[part]
    v = row * ux_s - col * uy_s + (cy * ux - cx * uy)[part]
    t = np.minimum(np.maximum(u * np.where(has_axis, 1.0 / safe, 0.0)[part], 0.0), 1.0)
    along = u - t * length[part]
    radius = parts.ra[part] + (parts.rb - parts.ra)[part] * t
    return np.sqrt(along * along + v * v) - radius, radius, u, v


def pattern_amount(kind: int, period: np.ndarray, u: np.ndarray, v: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Coverage of the pattern colour (0..1) in part coordinates, anti-aliased like the shapes."""
    if kind == PATTERN_STRIPES:
        offset = np.abs(u / period - np.floor(u / period) - 0.5) * period
        return np.clip(0.5 + 0.25 * period - offset, 0.0, 1.0)
    if kind == PATTERN_SPOTS:
        row = np.floor(v / period)
        shifted = u / period + 0.5 * row
        cu = (shifted - np.floor(shifted) - 0.5) * period
        cv = (v / period - row - 0.5) * period
        return np.clip(0.5 + 0.28 * period - np.sqrt(cu * cu + cv * cv), 0.0, 1.0)
    if kind == PATTERN_GRADIENT:
        return np.clip(0.5 - 0.5 * v / np.maximum(radius, 1.0), 0.0, 1.0)
    return np.zeros_like(u)


def _sample_weights(parts: PartBatch, part, sdf, radius, u, v) -> tuple[np.ndarray, ...]:
    """Coverage of each sample and the weights of its outline, fill and pattern colours."""
    cover = 0.5 - sdf
    alpha = np.minimum(np.maximum(cover, 0.0), 1.0)
    fill_alpha = np.minimum(np.maximum(cover - parts.outline[part], 0.0), 1.0)
    inner = np.minimum(np.maximum(-sdf / np.maximum(radius, 0.5), 0.0), 1.0)
    fill = fill_alpha * (0.72 + 0.28 * inner * (2.0 - inner))
    pattern = np.zeros_like(fill)
    for kind in np.unique(parts.pattern):
        if kind == PATTERN_FLAT:
            continue
        chosen = np.flatnonzero(parts.pattern[part] == kind)
        amount = pattern_amount(int(kind), parts.period[part[chosen]], u[chosen], v[chosen], radius[chosen])
        pattern[chosen] = fill[chosen] * amount
        fill[chosen] -= pattern[chosen]
    return alpha, alpha - fill_alpha, fill, pattern


def draw_parts(canvas: Canvas, parts: PartBatch) -> None:
    """Composite `parts` over `canvas` and, where given, stamp the identity and detail maps."""
    height, width = canvas.rgb.shape[-3:-1]
    part, row, col = _samples(parts, height, width)
    sdf, radius, u, v = capsule_distance(parts, part, row, col)
    touched = np.flatnonzero(sdf < 0.5)  # samples with any coverage
    if len(touched) == 0:
        return
    part, sdf, radius, u, v = part[touched], sdf[touched], radius[touched], u[touched], v[touched]
    pixel = (parts.frame[part] * height + row[touched]) * width + col[touched]
    # Group samples by pixel, keeping drawing order inside a pixel.
    order = np.argsort(pixel * len(parts) + part)
    pixel, part, sdf, radius, u, v = pixel[order], part[order], sdf[order], radius[order], u[order], v[order]
    alpha, line, fill, pattern = _sample_weights(parts, part, sdf, radius, u, v)
    first = np.concatenate([[True], pixel[1:] != pixel[:-1]])
    group = np.cumsum(first) - 1
    last = np.concatenate([first[1:], [True]])
    after, total = _transmittance_after(alpha, group, last)
    line *= after
    fill *= after
    pattern *= after
    pixels = pixel[first]
    flat = _flat_view(canvas.rgb).reshape(-1, 3)
    for c in range(3):
        value = line * parts.outline_colour[:, c][part] + fill * parts.fill[:, c][part]
        value += pattern * parts.pattern_colour[:, c][part]
        flat[pixels, c] = flat[pixels, c] * total + np.bincount(group, value, minlength=len(pixels))
    _stamp_masks(canvas, parts, pixel, part, sdf <= 0.0)


def _flat_view(array: np.ndarray) -> np.ndarray:
    """A 1-D view that writes through to `array` (a reshape of a non-contiguous array would copy)."""
    if not array.flags.c_contiguous:
        raise ValueError("draw_parts needs C-contiguous canvas arrays: it writes through flat views")
    return array.reshape(-1)


def _transmittance_after(alpha: np.ndarray, group: np.ndarray, last: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For samples sorted by pixel group: the transmittance of the later samples of the same pixel, and
    each group's total transmittance. Opaque samples are counted apart so no logarithm of zero is taken."""
    opaque = alpha >= 1.0
    log_clear = np.log1p(-np.where(opaque, 0.0, alpha))
    running = np.cumsum(log_clear)
    running_opaque = np.cumsum(opaque)
    end = np.flatnonzero(last)
    log_after = running[end][group] - running
    opaque_after = running_opaque[end][group] - running_opaque
    after = np.where(opaque_after > 0, 0.0, np.exp(log_after))
    group_start = np.concatenate([[0], end[:-1] + 1])
    total_log = running[end] - running[group_start] + log_clear[group_start]
    total_opaque = running_opaque[end] - running_opaque[group_start] + opaque[group_start]
    return after, np.where(total_opaque > 0, 0.0, np.exp(total_log))


def _stamp_masks(canvas: Canvas, parts: PartBatch, pixel: np.ndarray, part: np.ndarray, inside: np.ndarray) -> None:
    """Identity and region tag of the last part drawn whose inside holds each pixel centre."""
    if canvas.ids is None and canvas.detail is None:
        return
    pixel, part = pixel[inside], part[inside]
    if len(pixel) == 0:
        return
    final = np.concatenate([pixel[1:] != pixel[:-1], [True]])
    pixel, part = pixel[final], part[final]
    if canvas.ids is not None:
        _flat_view(canvas.ids)[pixel] = parts.identity[part]
    if canvas.detail is not None:
        _flat_view(canvas.detail)[pixel] = parts.tag[part]
