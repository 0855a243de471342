"""Scenes and cameras: procedural backgrounds with props, a lighting tint, and static or moving views.

World coordinates: x to the right, y up, the ground line at y = 0; at zoom 1 the view is one world unit
tall. A background is drawn once per video onto a canvas that covers every view the camera takes, then each
frame samples its view from it (an exact crop for a static camera, bilinear for pans and zooms).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from scail2.data.world.character import hsv_colour
from scail2.data.world.raster import Canvas, PartBatch, draw_parts

CAMERA_KINDS = ("static", "pan", "zoom", "pan_zoom")
GROUND_TEXTURES = ("plain", "stripes", "checker", "noise")
PROP_KINDS = ("tree", "bush", "rock", "house", "fence", "cloud", "sun", "mountain", "lamp")
GROUND_SCREEN = 0.36  # the ground line sits this far below the view centre [view heights]


@dataclass(frozen=True)
class Camera:
    x: float  # view centre at t = 0 [world units]
    zoom: float  # at t = 0; the view is 1 / zoom world units tall
    pan: float  # horizontal view speed [world units / s]
    zoom_rate: float  # zoom multiplies by exp(zoom_rate * t)
    kind: str = "static"
    # A camera that follows a character: view-centre offsets from `x` at frames 0, 1, ... of `track_fps`
    # (linear in between, held after the last), added to the pan.
    track: tuple[float, ...] = ()
    track_fps: float = 16.0

    def views(self, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """View centre x, centre y and zoom at `times`; the ground stays at the same screen height."""
        zoom = self.zoom * np.exp(self.zoom_rate * times)
        x = self.x + self.pan * times
        if self.track:
            x = x + np.interp(times * self.track_fps, np.arange(len(self.track)), self.track)
        return x, GROUND_SCREEN / zoom, zoom

    def to_json(self) -> dict:
        data = {"x": self.x, "zoom": self.zoom, "pan": self.pan, "zoom_rate": self.zoom_rate, "kind": self.kind}
        return data | ({"track": list(self.track), "track_fps": self.track_fps} if self.track else {})

    @staticmethod
    def from_json(data: dict) -> Camera:
        track = tuple(data.get("track", ()))
        return Camera(
            data["x"], data["zoom"], data["pan"], data["zoom_rate"], data["kind"], track, data.get("track_fps", 16.0)
        )


def sample_camera(rng: np.random.Generator, kind: str | None = None) -> Camera:
    kind = kind or str(rng.choice(CAMERA_KINDS, p=[0.4, 0.25, 0.2, 0.15]))
    pan = float(rng.uniform(0.05, 0.15) * rng.choice([-1, 1])) if "pan" in kind else 0.0
    zoom_rate = float(rng.uniform(0.1, 0.25) * rng.choice([-1, 1])) if "zoom" in kind else 0.0
    return Camera(0.0, float(rng.uniform(0.95, 1.1)), pan, zoom_rate, kind)


@dataclass(frozen=True)
class Prop:
    kind: str  # one of PROP_KINDS
    x: float  # [world units]
    y: float  # base height above the ground line (further back is higher)
    size: float  # [world units]
    colour: tuple[int, int, int]
    accent: tuple[int, int, int]


@dataclass(frozen=True)
class Scene:
    sky_top: tuple[int, int, int]
    sky_bottom: tuple[int, int, int]
    ground_far: tuple[int, int, int]
    ground_near: tuple[int, int, int]
    horizon: float  # world y of the horizon
    ground_texture: str
    texture_scale: float
    tint: tuple[float, float, float]  # lighting colour multipliers
    light: float  # left-to-right brightness slope
    noise_seed: int
    props: tuple[Prop, ...] = field(default_factory=tuple)

    def to_json(self) -> dict:
        data = {
            k: getattr(self, k)
            for k in (
                "sky_top",
                "sky_bottom",
                "ground_far",
                "ground_near",
                "horizon",
                "ground_texture",
                "texture_scale",
                "tint",
                "light",
                "noise_seed",
            )
        }
        data["props"] = [
            {k: (list(v) if isinstance(v, tuple) else v) for k, v in prop.__dict__.items()} for prop in self.props
        ]
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in data.items()}

    @staticmethod
    def from_json(data: dict) -> Scene:
        fields = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k != "props"}
        props = tuple(
            Prop(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in prop.items()}) for prop in data["props"]
        )
        return Scene(**fields, props=props)


def sample_scene(
    rng: np.random.Generator, props: tuple[int, int] = (2, 8), textures: tuple[str, ...] = GROUND_TEXTURES
) -> Scene:
    """A random scene with `props[0]..props[1]` props and a ground texture from `textures`."""
    sky_hue = float(rng.uniform(0.5, 0.7)) if rng.uniform() < 0.7 else float(rng.uniform())
    ground_hue = float(rng.choice([0.25, 0.3, 0.1, 0.08, 0.6, float(rng.uniform())]))
    tint_hue = float(rng.uniform())
    tint = np.array(hsv_colour(tint_hue, float(rng.uniform(0.0, 0.2)), 1.0), dtype=np.float64) / 255.0
    tint = tint * float(rng.uniform(0.85, 1.08))
    props = tuple(_sample_prop(rng) for _ in range(int(rng.integers(props[0], props[1] + 1))))
    return Scene(
        sky_top=hsv_colour(sky_hue, float(rng.uniform(0.3, 0.8)), float(rng.uniform(0.6, 1.0))),
        sky_bottom=hsv_colour(sky_hue + float(rng.uniform(-0.1, 0.1)), float(rng.uniform(0.05, 0.4)), 0.95),
        ground_far=hsv_colour(ground_hue, float(rng.uniform(0.2, 0.6)), float(rng.uniform(0.5, 0.85))),
        ground_near=hsv_colour(
            ground_hue + float(rng.uniform(-0.05, 0.05)), float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.35, 0.7))
        ),
        horizon=float(rng.uniform(0.22, 0.5)),
        ground_texture=str(rng.choice(textures)),
        texture_scale=float(rng.uniform(4.0, 10.0)),
        tint=tuple(float(c) for c in tint),
        light=float(rng.uniform(-0.2, 0.2)),
        noise_seed=int(rng.integers(2**31)),
        props=props,
    )


def plain_scene(rng: np.random.Generator) -> Scene:
    """A studio backdrop: one colour above the horizon, a close one below, no props, no texture, neutral light."""
    hue = float(rng.uniform())
    backdrop = hsv_colour(hue, float(rng.uniform(0.0, 0.35)), float(rng.uniform(0.55, 0.95)))
    floor = tuple(int(c * 0.85) for c in backdrop)
    return Scene(
        sky_top=backdrop,
        sky_bottom=backdrop,
        ground_far=floor,
        ground_near=floor,
        horizon=float(rng.uniform(0.22, 0.5)),
        ground_texture="plain",
        texture_scale=1.0,
        tint=(1.0, 1.0, 1.0),
        light=0.0,
        noise_seed=0,
        props=(),
    )


def _sample_prop(rng: np.random.Generator) -> Prop:
    kind = str(rng.choice(PROP_KINDS))
    sky = kind in ("cloud", "sun")
    y = float(rng.uniform(0.55, 0.9)) if sky else float(rng.uniform(0.12, 0.3))
    size = float(rng.uniform(0.08, 0.25)) * (2.5 if kind == "mountain" else 1.0)
    colour = hsv_colour(float(rng.uniform()), float(rng.uniform(0.2, 0.7)), float(rng.uniform(0.35, 0.9)))
    accent = hsv_colour(float(rng.uniform()), float(rng.uniform(0.3, 0.9)), float(rng.uniform(0.4, 1.0)))
    if kind == "tree":
        leaves = hsv_colour(float(rng.uniform(0.2, 0.4)), 0.6, float(rng.uniform(0.35, 0.7)))
        colour, accent = hsv_colour(0.08, 0.6, 0.4), leaves
    elif kind in ("cloud", "sun"):
        colour = (250, 250, 250) if kind == "cloud" else (255, 220, 90)
    return Prop(kind, float(rng.uniform(-1.8, 1.8)), y, size, colour, accent)


# ---------------------------------------------------------------------------------------------------
# Background drawing
# ---------------------------------------------------------------------------------------------------


def _prop_capsules(prop: Prop, horizon: float) -> list[tuple]:
    """(ax, ay, bx, by, ra, rb, colour) in world units."""
    x, s = prop.x, prop.size
    y = horizon - prop.y * horizon if prop.kind not in ("cloud", "sun", "mountain") else prop.y
    c, a = prop.colour, prop.accent
    shapes = {
        "tree": [(x, y, x, y + 0.8 * s, 0.08 * s, 0.06 * s, c), (x, y + 0.9 * s, x, y + 1.1 * s, 0.4 * s, 0.3 * s, a)],
        "bush": [(x - 0.2 * s, y + 0.15 * s, x + 0.2 * s, y + 0.15 * s, 0.25 * s, 0.2 * s, a)],
        "rock": [(x - 0.2 * s, y + 0.08 * s, x + 0.15 * s, y + 0.1 * s, 0.15 * s, 0.1 * s, c)],
        "house": [
            (x - 0.25 * s, y + 0.25 * s, x + 0.25 * s, y + 0.25 * s, 0.25 * s, 0.25 * s, c),
            (x, y + 0.5 * s, x, y + 0.95 * s, 0.42 * s, 0.03 * s, a),
            (x, y + 0.08 * s, x, y + 0.2 * s, 0.07 * s, 0.07 * s, (60, 40, 30)),
        ],
        "fence": [(x + i * 0.15 * s, y, x + i * 0.15 * s, y + 0.3 * s, 0.02 * s, 0.02 * s, c) for i in range(-3, 4)]
        + [(x - 0.45 * s, y + 0.2 * s, x + 0.45 * s, y + 0.2 * s, 0.015 * s, 0.015 * s, c)],
        "cloud": [
            (x - 0.3 * s, y, x + 0.3 * s, y, 0.15 * s, 0.15 * s, c),
            (x - 0.05 * s, y + 0.08 * s, x + 0.1 * s, y + 0.08 * s, 0.18 * s, 0.18 * s, c),
        ],
        "sun": [(x, y, x, y, 0.2 * s, 0.2 * s, c)],
        "mountain": [(x, horizon - 0.02, x, horizon + 0.25 * s, 0.45 * s, 0.04 * s, c)],
        "lamp": [
            (x, y, x, y + 0.9 * s, 0.02 * s, 0.02 * s, (40, 40, 40)),
            (x, y + 0.95 * s, x, y + 0.95 * s, 0.07 * s, 0.07 * s, (255, 240, 170)),
        ],
    }
    return shapes[prop.kind]


def _props_batch(shapes: list[tuple], to_px, scale: float) -> PartBatch:
    arr = np.array([s[:6] for s in shapes], dtype=np.float64)
    ax, ay = to_px(arr[:, 0], arr[:, 1])
    bx, by = to_px(arr[:, 2], arr[:, 3])
    colours = np.array([s[6] for s in shapes], dtype=np.float32)
    count = len(shapes)
    zeros = np.zeros(count, dtype=np.uint8)
    return PartBatch(
        ax,
        ay,
        bx,
        by,
        arr[:, 4] * scale,
        arr[:, 5] * scale,
        colours,
        colours,
        colours * 0.55,
        np.ones(count),
        zeros,
        np.ones(count),
        zeros,
        zeros,
        np.zeros(count, dtype=np.int64),
    )


def _ground_shade(scene: Scene, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
    """Multiplicative texture of the ground, in perspective (lines crowd towards the horizon)."""
    depth = 1.0 / np.maximum(scene.horizon - wy + 0.06, 1e-3)
    k = scene.texture_scale
    if scene.ground_texture == "stripes":
        return 1.0 + 0.08 * np.sign(np.sin(k * depth))
    if scene.ground_texture == "checker":
        return 1.0 + 0.07 * np.sign(np.sin(k * depth) * np.sin(k * wx * depth * 0.5))
    if scene.ground_texture == "noise":
        return _world_noise(scene.noise_seed, wx, wy)
    return np.ones(np.broadcast_shapes(wx.shape, wy.shape))


def _world_noise(seed: int, wx: np.ndarray, wy: np.ndarray, cell: float = 0.06) -> np.ndarray:
    """Smooth value noise around 1 anchored in world space, so every camera on a scene sees the same ground."""
    grid = np.random.default_rng(seed).uniform(0.85, 1.15, size=(64, 256))
    gx = np.mod(wx / cell, grid.shape[1] - 1)  # [1, cols] column position in the grid
    gy = np.mod(wy / cell, grid.shape[0] - 1)  # [rows, 1]
    x0, y0 = np.floor(gx).astype(np.int64), np.floor(gy).astype(np.int64)
    fx, fy = gx - x0, gy - y0
    top = grid[y0, x0] * (1 - fx) + grid[y0, x0 + 1] * fx
    bottom = grid[y0 + 1, x0] * (1 - fx) + grid[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


class Backdrop:
    """A scene drawn once on a canvas covering all of a camera's views; `frame(k)` samples one view."""

    def __init__(self, scene: Scene, centre_x, centre_y, zoom, height: int, width: int, margin: int = 2):
        self.height, self.width = height, width
        self.centre_x, self.centre_y, self.zoom = centre_x, centre_y, zoom
        self.ppu = float(height * np.max(zoom))  # canvas pixels per world unit
        half_w = width / (2.0 * height * zoom)
        half_h = 1.0 / (2.0 * zoom)
        # Align the canvas so that frame 0 maps onto whole pixels: a static camera is then an exact crop.
        left = centre_x[0] - (width / 2.0 + margin) / self.ppu
        top = centre_y[0] + (height / 2.0 + margin) / self.ppu
        self.left = left - np.ceil(max(0.0, left - np.min(centre_x - half_w)) * self.ppu) / self.ppu
        self.top = top + np.ceil(max(0.0, np.max(centre_y + half_h) - top) * self.ppu) / self.ppu
        right = np.max(centre_x + half_w) + margin / self.ppu
        bottom = np.min(centre_y - half_h) - margin / self.ppu
        cols = int(np.ceil((right - self.left) * self.ppu)) + 2
        rows = int(np.ceil((self.top - bottom) * self.ppu)) + 2
        self.canvas = (self._draw(scene, rows, cols) + 0.5).astype(np.uint8)
        self.image = Image.fromarray(self.canvas)

    def _draw(self, scene: Scene, rows: int, cols: int) -> np.ndarray:
        wx = self.left + (np.arange(cols) + 0.5)[None, :] / self.ppu
        wy = self.top - (np.arange(rows) + 0.5)[:, None] / self.ppu
        sky_t = np.clip((wy - scene.horizon) / 0.8, 0.0, 1.0)[..., None]
        sky = np.array(scene.sky_bottom) * (1 - sky_t) + np.array(scene.sky_top) * sky_t
        ground_t = np.clip((scene.horizon - wy) / (scene.horizon + 0.4), 0.0, 1.0)[..., None]
        ground = np.array(scene.ground_far) * (1 - ground_t) + np.array(scene.ground_near) * ground_t
        ground = ground * _ground_shade(scene, wx, wy)[..., None]
        rgb = np.where((wy > scene.horizon)[..., None], sky, ground).astype(np.float32)
        canvas = Canvas(np.array(np.broadcast_to(rgb, (rows, cols, 3)), dtype=np.float32, order="C"))
        order = sorted(scene.props, key=lambda p: (p.kind not in ("sun", "cloud", "mountain"), -p.y))
        shapes = [shape for prop in order for shape in _prop_capsules(prop, scene.horizon)]
        if shapes:
            draw_parts(canvas, _props_batch(shapes, self._to_pixels, self.ppu))
        return np.clip(canvas.rgb, 0.0, 255.0)

    def _to_pixels(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World coordinates -> canvas pixel coordinates."""
        return (x - self.left) * self.ppu, (self.top - y) * self.ppu

    def frame(self, index: int) -> np.ndarray:
        """[H, W, 3] float32 view of frame `index`: an exact crop when it lands on whole pixels, else resampled."""
        scale = self.ppu / (self.height * self.zoom[index])
        left = (self.centre_x[index] - self.left) * self.ppu - 0.5 * self.width * scale
        top = (self.top - self.centre_y[index]) * self.ppu - 0.5 * self.height * scale
        col, row = int(round(left)), int(round(top))
        if abs(scale - 1.0) < 1e-9 and abs(left - col) < 1e-6 and abs(top - row) < 1e-6:
            crop = self.canvas[row : row + self.height, col : col + self.width]
            return crop.astype(np.float32)
        box = (left, top, left + self.width * scale, top + self.height * scale)
        view = self.image.resize((self.width, self.height), Image.BILINEAR, box=box)
        return np.asarray(view, dtype=np.float32).copy()


def lighting(scene: Scene, height: int, width: int) -> np.ndarray:
    """[H, W, 3] multiplicative light: the scene tint with a left-to-right slope."""
    slope = 1.0 + scene.light * (np.arange(width, dtype=np.float32) / max(width - 1, 1) - 0.5)
    return (np.array(scene.tint, dtype=np.float32)[None, None, :] * slope[None, :, None]).repeat(height, axis=0)
