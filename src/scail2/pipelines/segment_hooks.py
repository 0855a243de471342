"""What a caller may do between segments: resume finished ones, keep each one as it finishes, and reject one
(quality checks) so it is sampled again from other noise.

The pipeline calls, for each segment in order: `resume(segment)`; when that returns a `SegmentState`, the
segment is not run. Otherwise it is denoised and decoded, `accept(segment, state)` is asked up to `retries`
times for a new draw (noise from `retry_noise`), and `finished(segment, state)` receives the state it keeps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from scail2.pipelines.segments import Segment


@dataclass
class SegmentState:
    """A finished segment: its output (the pipeline's output type, on the CPU) and `carry`, what the following
    segment starts from (decoded tail frames under the pixel hand-off, clean latent frames under the latent one;
    None after the last segment)."""

    output: torch.Tensor
    carry: torch.Tensor | None


class SegmentHooks:
    """The do-nothing hooks; subclass and override what you need."""

    retries: int = 0  # how many times a rejected segment is drawn again

    def resume(self, segment: Segment) -> SegmentState | None:
        return None

    def accept(self, segment: Segment, state: SegmentState) -> bool:
        return True

    def finished(self, segment: Segment, state: SegmentState, attempts: int) -> None:
        """`attempts`: how many draws the kept state took (1 without a retry)."""

    @staticmethod
    def retry_seed(seed: int, segment: Segment, attempt: int) -> int:
        """The seed of retry `attempt` (1, 2, ...) of `segment`: distinct per segment and attempt."""
        return (seed * 1_000_003 + 7_919 * attempt + segment.index) % (1 << 63)

    def retry_noise(self, noise: torch.Tensor, seed: int, segment: Segment, attempt: int) -> torch.Tensor:
        """Fresh noise shaped like `noise` (on its device) for retry `attempt` of `segment`."""
        generator = torch.Generator(noise.device).manual_seed(self.retry_seed(seed, segment, attempt))
        return torch.randn(noise.shape, generator=generator, device=noise.device)
