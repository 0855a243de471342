"""Release channel of a run: a diffusers-format pipeline folder, or a LoRA adapter folder, from the newest state.

Full fine-tuning exports the transformer (EMA weights when EMA is on) beside the components (VAE, encoders)
of `model.components` as a folder `scail2 animate --model` loads. LoRA runs export `adapter_model.safetensors`
plus `adapter_config.json`, which `scail2 animate --lora` loads on top of the base model.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from scail2.data.format import replace_folder
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from scail2.train.schedule import full_tensor
from scail2.train.validation import components_folder

COMPONENTS = ("vae", "text_encoder", "tokenizer", "image_encoder")


def gather_weights(trainer, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """Every parameter as a plain CPU tensor (a collective under FSDP2: all processes call it)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if use_ema:
        for name, value in trainer.ema.items():
            state[name] = full_tensor(value).detach().cpu()
    return {name: tensor.detach().float().cpu().contiguous() for name, tensor in state.items()}


def _lora_weights(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """peft names `X.lora_A.default.weight` -> `X.lora_A.weight`."""
    return {name.replace(".default.", "."): value for name, value in weights.items() if ".lora_" in name}


def export_run(trainer) -> Path | None:
    weights = gather_weights(trainer, use_ema=bool(trainer.ema))
    if not trainer.group.is_main:
        return None
    export_root = trainer.out / "export"
    export_root.mkdir(parents=True, exist_ok=True)
    if trainer.lora:
        target = export_root / "lora"
        tmp = export_root / ".lora.partial"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        lora = trainer.config.lora
        save_file(_lora_weights(weights), str(tmp / "adapter_model.safetensors"))
        (tmp / "adapter_config.json").write_text(
            json.dumps(
                {
                    "peft_type": "LORA",
                    "r": lora.rank,
                    "lora_alpha": lora.alpha or lora.rank,
                    "target_modules": list(lora.target_modules),
                    "step": trainer.step,
                },
                indent=1,
            )
        )
        return replace_folder(tmp, target)
    return write_model_folder(trainer, weights, SCAIL2Transformer3DModel)


def write_model_folder(trainer, weights: dict[str, torch.Tensor], transformer_class, **index_fields) -> Path:
    """export/model, a folder `scail2 animate --model` loads: a `transformer_class` holding `weights` in the
    export dtype, beside the components of `model.components` and a model_index.json (with `index_fields`)."""
    target, tmp = trainer.out / "export" / "model", trainer.out / "export" / ".model.partial"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(tmp, ignore_errors=True)
    transformer = transformer_class.from_config(trainer.model.config)
    transformer.load_state_dict(weights, strict=True)
    transformer.to(getattr(torch, trainer.config.train.export_dtype)).save_pretrained(tmp / "transformer")
    components = components_folder(trainer.config)
    if components is not None:
        from scail2.models.convert_release import write_model_index

        for name in COMPONENTS:
            if (components / name).is_dir():
                shutil.copytree(components / name, tmp / name)
        write_model_index(tmp, **index_fields)
    return replace_folder(tmp, target)
