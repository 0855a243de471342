"""Masks from raw footage: the weight-free method, SAM 2, provided masks and reference masks.

Modules, bottom up:
- `filters`: box/Gaussian/guided filters, morphology, connected components (plain PyTorch);
- `colour_model`: colour histograms and the GrabCut-like refinement loop;
- `camera`, `background`, `motion`: the weight-free video method (camera alignment, background model,
  static layer, refinement, boundary matting);
- `still`: single-image foreground (reference images without alpha);
- `tracking`: identities by overlap and appearance, upstream colour order;
- `refine`: user refinements (holes, minimum area, dilate/erode, feather) and guided upsampling;
- `sam2`: SAM 2 through transformers from a local folder;
- `extract`: the methods behind one interface; `pipeline`: `scail2 masks`; `automatic`: `scail2 animate`.
"""

from scail2.preprocess.segmentation.extract import METHODS, MaskSettings, reference_identities
from scail2.preprocess.segmentation.pipeline import MasksRequest, build_mask_folder
from scail2.preprocess.segmentation.refine import Refinement, refine_identities

__all__ = [
    "METHODS",
    "MaskSettings",
    "MasksRequest",
    "Refinement",
    "build_mask_folder",
    "reference_identities",
    "refine_identities",
]
