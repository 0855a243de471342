"""Typed training configuration: YAML in, dotted overrides on top, validated on creation.

config = load_config("configs/tiny.yaml", ["optim.lr=3e-4", "train.batch_size=8"])
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scail2.errors import Scail2Error
from scail2.optional import require
from scail2.train.schedule import OptimConfig


@dataclass
class ModelConfig:
    preset: str | None = "tiny"  # a SCAIL2_PRESETS name, used when `pretrained` is not given
    # constructor keywords on top of the preset; with `pretrained` (the SCAIL-2 recipe), the driving layout
    # (driving_scale, driving_injection, driving_signal) to fine-tune a model into another layout, and nothing else
    overrides: dict[str, Any] = field(default_factory=dict)
    pretrained: str | None = None  # a folder with transformer/ (or a transformer folder) to fine-tune
    components: str | None = None  # a model folder whose vae/ (and encoders) validation and export use
    gradient_checkpointing: bool = False  # activation checkpointing per transformer block


@dataclass
class FlowConfig:
    shift: float | str = (
        "auto"  # "auto": the resolution-dependent e^mu (docs/architecture.md, "Flow matching"); or a number
    )
    history_probability: float = 0.15  # chance that a sample's first latent frames are clean history
    history_latent_frames: int = 2  # 5 pixel frames
    text_dropout: float = 0.1  # chance of the empty prompt (classifier-free guidance training)
    foreground_weight: float = 0.0  # > 0: loss weight 1 + w * character coverage per latent cell (needs target_masks)
    augmentations: list[dict] = field(default_factory=list)  # [{name, probability, strength}] driving-signal hooks


@dataclass
class LoraConfig:
    rank: int = 0  # 0: full fine-tuning
    alpha: float | None = None  # defaults to rank
    target_modules: list[str] = field(default_factory=lambda: ["q", "k", "v", "o", "ffn.0", "ffn.2"])
    dropout: float = 0.0


@dataclass
class TrainLoopConfig:
    stage: str = "pretrain"  # "pretrain" (flow matching) or "dpo"
    max_steps: int = 100
    batch_size: int = 4  # global batch, split evenly across processes
    seed: int = 0
    log_every: int = 10
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    validate_every: int = 0  # 0: no validation videos
    validation_steps: int = 8  # sampler steps of a validation video
    dependence_every: int = 0  # > 0: log the driver-dependence check (scail2.train.dependence) every N steps
    dependence_samples: int = 8  # cache samples (the first ones) the check runs on
    mixed_precision: str = "auto"  # auto: bf16 autocast on GPU, fp32 on CPU; or "bf16" / "fp32"
    export_dtype: str = "float32"  # dtype of the exported transformer weights: float32, float16 or bfloat16
    recipe: str = "scail2"  # "scail2", or "directanimator" (Same2X stages; the `directanimator:` section)


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    dpo: dict[str, Any] = field(default_factory=dict)  # passed to the DPO stage's own config
    directanimator: dict[str, Any] = field(default_factory=dict)  # Same2X stages (scail2.train.same2x)

    def __post_init__(self):
        if self.train.stage not in ("pretrain", "dpo"):
            raise Scail2Error(f"train.stage must be pretrain or dpo, got {self.train.stage!r}")
        if self.train.batch_size < 1 or self.train.max_steps < 0:
            raise Scail2Error("train.batch_size must be >= 1 and train.max_steps >= 0")
        if not 0 <= self.flow.history_probability <= 1 or not 0 <= self.flow.text_dropout <= 1:
            raise Scail2Error("flow.history_probability and flow.text_dropout must lie in [0, 1]")
        if self.flow.foreground_weight < 0:
            raise Scail2Error(f"flow.foreground_weight must be >= 0, got {self.flow.foreground_weight}")
        if isinstance(self.flow.shift, str) and self.flow.shift != "auto":
            raise Scail2Error(f"flow.shift must be 'auto' or a number, got {self.flow.shift!r}")
        if self.model.pretrained is None and self.model.preset is None:
            raise Scail2Error("give model.preset (train from scratch) or model.pretrained (fine-tune)")
        if self.train.export_dtype not in ("float32", "float16", "bfloat16"):
            raise Scail2Error(
                f"train.export_dtype must be float32, float16 or bfloat16, got {self.train.export_dtype!r}"
            )
        if self.train.recipe not in ("scail2", "directanimator"):
            raise Scail2Error(f"train.recipe must be scail2 or directanimator, got {self.train.recipe!r}")
        if self.train.mixed_precision not in ("auto", "bf16", "fp32"):
            raise Scail2Error(f"train.mixed_precision must be auto, bf16 or fp32, got {self.train.mixed_precision!r}")
        check_minimum(self.train, "train", log_every=1, checkpoint_every=1, keep_checkpoints=1, validation_steps=1)
        check_minimum(self.train, "train", validate_every=0, seed=0)
        check_minimum(self.flow, "flow", history_latent_frames=0)
        check_minimum(self.lora, "lora", rank=0)
        if not 0 <= self.lora.dropout < 1:
            raise Scail2Error(f"lora.dropout must lie in [0, 1), got {self.lora.dropout!r}")
        check_augmentations(self.flow.augmentations)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def resolved(self) -> TrainConfig:
        """The settings a stage really uses. The DPO stage takes its LoRA rank/alpha, step count and learning rate
        from the `dpo:` section (LoRA on a frozen base is the point of the stage) and turns text dropout and
        driving augmentation off, so winner and loser see identical conditions."""
        if self.train.stage != "dpo":
            return self
        from scail2.train.dpo import DPOConfig

        dpo = DPOConfig.from_dict(self.dpo)
        return dataclasses.replace(
            self,
            lora=dataclasses.replace(self.lora, rank=dpo.lora_rank, alpha=dpo.lora_alpha),
            train=dataclasses.replace(self.train, max_steps=dpo.steps),
            optim=dataclasses.replace(self.optim, lr=dpo.learning_rate),
            flow=dataclasses.replace(self.flow, text_dropout=0.0, augmentations=[]),
        )


def check_minimum(section, where: str, **minimums: int) -> None:
    """Each named field of `section` is at least its minimum (a step interval of 0 would divide by zero)."""
    for name, low in minimums.items():
        value = getattr(section, name)
        if value < low:
            raise Scail2Error(f"{where}.{name} must be at least {low}, got {value!r}")


AUGMENTATION_KEYS = {"name", "probability", "strength"}


def check_augmentations(augmentations: list[dict]) -> None:
    """Each entry of flow.augmentations is {name, probability, strength} with a registered name."""
    from scail2.train.trainer import AUGMENTATIONS  # the registry lives with the hooks it names

    for index, entry in enumerate(augmentations):
        where = f"flow.augmentations[{index}]"
        unknown = sorted(set(entry) - AUGMENTATION_KEYS)
        if unknown:
            raise Scail2Error(f"{where} has unknown key(s) {', '.join(unknown)}; allowed: name, probability, strength")
        if entry.get("name") not in AUGMENTATIONS:
            raise Scail2Error(
                f"{where}.name {entry.get('name')!r} is not an augmentation; known: {', '.join(sorted(AUGMENTATIONS))}"
            )
        probability, strength = entry.get("probability", 1.0), entry.get("strength", 0.0)
        if not _matches(probability, float) or not 0 <= probability <= 1:
            raise Scail2Error(f"{where}.probability must lie in [0, 1], got {probability!r}")
        if not _matches(strength, float):
            raise Scail2Error(f"{where}.strength must be a finite number, got {strength!r}")


def build_section(cls, values: dict, where: str, defaults=None):
    """Dataclass from a dict on top of `defaults` (an instance; None: the class defaults), recursing into fields whose
    default is a dataclass, so a section keeps its owner's defaults (the VAE's `optim:`); unknown keys are errors."""
    if not isinstance(values, dict):
        what = f"the {where}: section" if where else "the config"
        raise Scail2Error(f"{what} must be a mapping of key: value, got {type(values).__name__} {values!r:.60}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise Scail2Error(
            f"unknown config key(s) {', '.join(f'{where}.{k}' if where else k for k in unknown)}; "
            f"known: {', '.join(fields)}"
        )
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in values.items():
        factory = fields[name].default_factory
        default = factory() if factory is not dataclasses.MISSING else None
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(default):
            kwargs[name] = build_section(type(default), value, key, default)
        elif hasattr(cls, "_checks"):  # a section that checks its own values, with its own messages
            kwargs[name] = value
        else:
            kwargs[name] = _typed(value, hints[name], key)
    return cls(**kwargs) if defaults is None else dataclasses.replace(defaults, **kwargs)


def _typed(value, hint, key: str):
    """`value` if it has the field's type (a numeric string becomes a float where a float is expected: YAML 1.1
    reads 3e-4 as text), else a one-line Scail2Error naming the key, the value and what is allowed."""
    if isinstance(value, str) and float in _alternatives(hint) and str not in _alternatives(hint):
        try:
            value = float(value)
        except ValueError:
            pass
    if not _matches(value, hint):
        raise Scail2Error(f"{key} must be {_describe(hint)}, got {value!r}")
    return value


def _alternatives(hint) -> tuple:
    return typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)


def _matches(value, hint) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if isinstance(hint, types.UnionType):
        return any(_matches(value, option) for option in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_matches(item, args[0]) for item in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _describe(hint) -> str:
    if isinstance(hint, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(hint))
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    names = {type(None): "null", bool: "true or false", int: "a whole number", float: "a finite number", str: "text"}
    return names.get(hint, "a mapping" if (origin or hint) is dict else str(hint))


def _parse_value(text: str):
    """Override values are YAML scalars/lists: 3e-4, true, null, [1, 2], 'text'."""
    yaml = require("yaml", purpose="reading config overrides")

    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for override in overrides:
        if "=" not in override:
            raise Scail2Error(f"override {override!r} must look like section.key=value (e.g. optim.lr=3e-4)")
        path, value = override.split("=", 1)
        node = data
        *parents, leaf = path.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise Scail2Error(f"override {override!r}: {part} is not a section")
        node[leaf] = _parse_value(value)
    return data


def load_config(
    path: str | Path | None, overrides: list[str] = (), cls=TrainConfig, example: str = "configs/tiny.yaml"
):
    """YAML (optional) plus dotted overrides, built into the config dataclass `cls` and validated."""
    yaml = require("yaml", purpose="reading training configs")

    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise Scail2Error(f"{path}: config file not found; see {example} for an example")
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except UnicodeDecodeError as error:
            raise Scail2Error(f"{path}: not UTF-8 text (byte {error.start}); save the config as UTF-8") from None
        except yaml.YAMLError as error:
            raise Scail2Error(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        except OSError as error:
            raise Scail2Error(f"{path}: cannot be read ({error.strerror or error})") from None
        if not isinstance(data, dict):
            raise Scail2Error(
                f"{path}: the config must be a mapping of section: {{key: value}}, got {type(data).__name__}"
            )
    return build_section(cls, apply_overrides(json.loads(json.dumps(data, default=str)), list(overrides)), "")
