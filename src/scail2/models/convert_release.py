"""`scail2 convert all`: the whole official SCAIL-2 release -> one folder `SCAIL2Pipeline.from_pretrained` loads.

The release layout (docs/architecture.md, "Checkpoint layouts"):

    SCAIL-2/
      model/latest                                   (holds the checkpoint number, "1")
      model/1/fsdp2_rank_0000_checkpoint.pt          -> transformer/
      Wan2.1_VAE.pth                                 -> vae/
      umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth       -> text_encoder/
      umt5-xxl/ (tokenizer files)                    -> tokenizer/
      models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth -> image_encoder/

Components are converted one by one into a staging folder beside the output; a rerun after an interruption
skips the components already finished, and the staging folder becomes the output only when all are done.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import diffusers

from scail2.errors import Scail2Error
from scail2.models.convert import convert_transformer
from scail2.models.convert_components import convert_clip, convert_tokenizer, convert_umt5, convert_vae

VAE_FILE = "Wan2.1_VAE.pth"
CLIP_FILE = "models_clip_open-clip-xlm-roberta-large-vit-huge-14-onlyvisual.pth"
UMT5_DIR = "umt5-xxl"
UMT5_FILE = "umt5-xxl/models_t5_umt5-xxl-enc-bf16.pth"
DIT_FILE = "fsdp2_rank_0000_checkpoint.pt"

# model_index.json entries: component -> (library, class). The tokenizer's class is read from its folder.
COMPONENT_CLASSES = {
    "transformer": ("scail2.models.transformer_scail2", "SCAIL2Transformer3DModel"),
    "vae": ("diffusers", "AutoencoderKLWan"),
    "text_encoder": ("transformers", "UMT5EncoderModel"),
    "image_encoder": ("transformers", "CLIPVisionModel"),
}


def release_files(official_dir: str | Path) -> dict[str, Path]:
    """The release files by component; a one-line error lists every missing one."""
    root = Path(official_dir)
    if not root.is_dir():
        raise Scail2Error(f"{root}: folder not found; pass the downloaded SCAIL-2 release folder with --official-dir")
    tracker = root / "model" / "latest"
    step = tracker.read_text().strip() if tracker.is_file() else "1"
    files = {
        "transformer": root / "model" / step / DIT_FILE,
        "vae": root / VAE_FILE,
        "text_encoder": root / UMT5_FILE,
        "tokenizer": root / UMT5_DIR,
        "image_encoder": root / CLIP_FILE,
    }
    missing = [str(path.relative_to(root)) for path in files.values() if not path.exists()]
    if missing:
        raise Scail2Error(
            f"{root}: the release is incomplete, missing {', '.join(missing)}; download the whole "
            "zai-org/SCAIL-2 repository"
        )
    return files


def _tokenizer_class(folder: Path) -> str:
    config = json.loads((folder / "tokenizer_config.json").read_text())
    return config.get("tokenizer_class") or "AutoTokenizer"


def write_model_index(folder: Path, **fields) -> None:
    """model_index.json for the components present in `folder` (optional ones may be missing); `fields` replace
    or add entries (another pipeline class, its settings)."""
    index = {"_class_name": "SCAIL2Pipeline", "_diffusers_version": diffusers.__version__}
    for name in ("image_encoder", "text_encoder", "tokenizer", "transformer", "vae"):
        if not (folder / name).is_dir():
            index[name] = [None, None]
        elif name == "tokenizer":
            index[name] = ["transformers", _tokenizer_class(folder / name)]
        else:
            index[name] = list(COMPONENT_CLASSES[name])
    index.update(fields)
    (folder / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


def convert_release(
    official_dir: str | Path,
    out_dir: str | Path,
    config: str = "14b",
    dtype: str = "bf16",
    overwrite: bool = False,
    progress: bool = True,
    clip_heads: int = 16,
) -> Path:
    """Convert every component; `clip_heads` is not stored in the CLIP file (16 for the released ViT-H/14)."""
    files = release_files(official_dir)
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise Scail2Error(f"{out}: already exists; delete it or pass --overwrite")
    staging = out.with_name(f".{out.name}.staging")
    staging.mkdir(parents=True, exist_ok=True)
    steps = {
        "transformer": lambda dest: convert_transformer(
            files["transformer"], config, dest, dtype=dtype, progress=progress
        ),
        "vae": lambda dest: convert_vae(files["vae"], dest),
        "text_encoder": lambda dest: convert_umt5(files["text_encoder"], dest),
        "tokenizer": lambda dest: convert_tokenizer(files["tokenizer"], dest),
        "image_encoder": lambda dest: convert_clip(files["image_encoder"], dest, num_heads=clip_heads),
    }
    for name, convert in steps.items():
        if (staging / name).is_dir():  # finished in an earlier, interrupted run (each component is atomic)
            continue
        if progress:
            print(f"converting {name} from {files[name]}")
        convert(staging / name)
    write_model_index(staging)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    return out
