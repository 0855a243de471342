"""Global camera motion: a similarity transform per frame that maps it onto a reference frame.

"Fixed-camera" footage is rarely fixed to the pixel (a TV camera drifts, a phone shakes, a shot slowly
pushes in). Each frame's transform to the middle frame is fitted by robust Gauss-Newton on grey levels
over a small image pyramid; residuals are down-weighted with a Cauchy function so moving characters do
not pull the fit. The background model then lives in the reference frame's coordinates and is sampled
back into every frame.

Coordinates: isotropic, y in [-1, 1] from top to bottom, x in [-W/H, W/H]; a transform (a, b, tx, ty)
maps (x, y) to (a x - b y + tx, b x + a y + ty), i.e. scale sqrt(a^2 + b^2), rotation atan2(b, a).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from scail2.preprocess.segmentation.filters import gaussian_blur, resize_images

IDENTITY = (1.0, 0.0, 0.0, 0.0)


@dataclass(frozen=True)
class CameraSettings:
    pyramid: tuple[int, ...] = (80, 160, 320)  # longer side of each level, coarse to fine
    iterations: int = 10  # most Gauss-Newton steps per level
    tolerance: float = 2e-4  # stop a level once no parameter changes more than this
    still_pixels: float = 1.0  # below this corner displacement (working pixels) the camera counts as fixed


def _grid(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Isotropic pixel-centre coordinates (x [H, W], y [H, W])."""
    aspect = width / height
    ys = (torch.arange(height, dtype=torch.float32) + 0.5) / height * 2.0 - 1.0
    xs = ((torch.arange(width, dtype=torch.float32) + 0.5) / width * 2.0 - 1.0) * aspect
    return xs.view(1, -1).expand(height, width), ys.view(-1, 1).expand(height, width)


def sampling_grid(params: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """grid_sample grids [N, H, W, 2] that read, for each pixel of a frame, its place in the reference."""
    x, y = _grid(height, width)
    a, b, tx, ty = (params[:, k, None, None] for k in range(4))
    ref_x = a * x - b * y + tx
    ref_y = b * x + a * y + ty
    return torch.stack([ref_x / (width / height), ref_y], dim=-1)


def warp(images: torch.Tensor, params: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Sample reference-frame images [N or 1, C, h, w] at each frame's pixels -> [N, C, H, W] (zeros outside)."""
    height, width = size or images.shape[-2:]
    grid = sampling_grid(params, height, width)
    images = images.expand(params.shape[0], -1, -1, -1)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def invert(params: torch.Tensor) -> torch.Tensor:
    """Parameters of the inverse similarity transforms [N, 4]."""
    a, b, tx, ty = params.unbind(1)
    norm = a * a + b * b
    ia, ib = a / norm, -b / norm
    return torch.stack([ia, ib, -(ia * tx - ib * ty), -(ib * tx + ia * ty)], dim=1)


def _grey(images: torch.Tensor) -> torch.Tensor:
    return (0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2])[:, None]


def _gauss_newton_step(
    frame: torch.Tensor, reference: torch.Tensor, gradients: torch.Tensor, params: torch.Tensor
) -> torch.Tensor:
    """One robust Gauss-Newton update of `params` [4] aligning `frame` [1, 1, h, w] to `reference`."""
    height, width = frame.shape[-2:]
    grid = sampling_grid(params[None], height, width)
    sampled = F.grid_sample(torch.cat([reference, gradients], 1), grid, align_corners=False, padding_mode="zeros")
    inside = ((grid.abs() <= 1.0).all(dim=-1))[0]
    value, gx, gy = sampled[0, 0], sampled[0, 1], sampled[0, 2]
    residual = (frame[0, 0] - value)[inside]
    x, y = _grid(height, width)
    x, y, gx, gy = x[inside], y[inside], gx[inside], gy[inside]
    jacobian = torch.stack([gx * x + gy * y, -gx * y + gy * x, gx, gy], dim=1)  # d value / d (a, b, tx, ty)
    scale = 2.5 * residual.abs().median().clamp_min(1e-3)
    weight = 1.0 / (1.0 + (residual / scale) ** 2)  # Cauchy: characters moving in front hardly count
    hessian = (jacobian * weight[:, None]).T @ jacobian + 1e-6 * torch.eye(4)
    step = torch.linalg.solve(hessian, (jacobian * (weight * residual)[:, None]).sum(dim=0))
    return params + step


def _image_gradients(grey: torch.Tensor) -> torch.Tensor:
    """d/dx and d/dy [N, 2, h, w] in isotropic units (central differences)."""
    height = grey.shape[-2]
    padded = F.pad(grey, (1, 1, 1, 1), mode="replicate")
    gx = (padded[..., 1:-1, 2:] - padded[..., 1:-1, :-2]) * (height / 4.0)
    gy = (padded[..., 2:, 1:-1] - padded[..., :-2, 1:-1]) * (height / 4.0)
    return torch.cat([gx, gy], dim=1)


def estimate_camera_motion(images: torch.Tensor, settings: CameraSettings = CameraSettings()) -> torch.Tensor:
    """Similarity parameters [T, 4] mapping each frame of `images` [T, 3, h, w] onto the middle frame."""
    count = images.shape[0]
    reference_index = count // 2
    params = torch.tensor(IDENTITY).repeat(count, 1)
    levels = []
    for long_side in settings.pyramid:
        scale = min(1.0, long_side / max(images.shape[-2:]))
        size = (max(8, round(images.shape[-2] * scale)), max(8, round(images.shape[-1] * scale)))
        levels.append(gaussian_blur(_grey(resize_images(images, size)), 1.0))
    order = list(range(reference_index + 1, count)) + list(range(reference_index - 1, -1, -1))
    for t in order:
        neighbour = t - 1 if t > reference_index else t + 1
        estimate = params[neighbour].clone()  # start from the adjacent frame's fit
        for grey in levels:
            reference = grey[reference_index : reference_index + 1]
            gradients = _image_gradients(reference)
            for _ in range(settings.iterations):
                previous, estimate = estimate, _gauss_newton_step(grey[t : t + 1], reference, gradients, estimate)
                if float((estimate - previous).abs().max()) < settings.tolerance:
                    break
        params[t] = estimate
    return params


def displacement_pixels(params: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Largest movement [T] of the frame's corners under each transform, in pixels of an h x w frame."""
    aspect = width / height
    corners = torch.tensor([[-aspect, -1.0], [aspect, -1.0], [-aspect, 1.0], [aspect, 1.0]])
    a, b, tx, ty = (params[:, k, None] for k in range(4))
    moved_x = a * corners[:, 0] - b * corners[:, 1] + tx - corners[:, 0]
    moved_y = b * corners[:, 0] + a * corners[:, 1] + ty - corners[:, 1]
    return torch.sqrt(moved_x**2 + moved_y**2).amax(dim=1) * (height / 2.0)
