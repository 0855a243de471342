"""Loading a model folder: the dtype each component is loaded in (`--dtype`), the attention kernel
(`--attention`) and regional compilation (`--compile`), through the library and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scail2 import animate as animate_module
from scail2.animate import autocast_dtype, load_pipeline, stored_dtype, vae_dtype, weights_dtype
from scail2.cli import main
from scail2.errors import Scail2Error
from scail2.models.transformer_scail2 import SCAIL2Transformer3DModel
from scail2.pipelines.pipeline_scail2 import SamplingSettings, SCAIL2Pipeline
from tests.models.test_precision import FP32_PARAMETER, WeightCastSpy
from tests.pipelines.components import tiny_pipeline, tiny_vae
from tests.pipelines.media import (
    moving_square_frames,
    square_masks,
    write_mask_folder,
    write_reference,
    write_reference_mask,
    write_video,
)
from tests.pipelines.pinned.regenerate import pinned_inputs

CPU, GPU = torch.device("cpu"), torch.device("cuda")  # a device name only: nothing runs on "cuda" here
GUIDED = SamplingSettings(sampler="unipc", steps=3, shift=5.0, guidance_scale=2.5, segment_length=9, overlap=5)
ENCODERS = ("text_encoder", "image_encoder")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "tiny"
    tiny_pipeline(seed=1).save_pretrained(folder)
    return folder


def dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def check_transformer_dtypes(transformer: SCAIL2Transformer3DModel, dtype: torch.dtype) -> None:
    for name, p in transformer.named_parameters():
        assert p.dtype == (torch.float32 if FP32_PARAMETER.search(name) else dtype), name


def frames(pipeline: SCAIL2Pipeline, **kwargs) -> torch.Tensor:
    return pipeline(pinned_inputs(13, "animate"), GUIDED, seed=3, progress=False, output_type="pt", **kwargs).frames


# ---------------------------------------------------------------------------------------------------------
# Which dtype
# ---------------------------------------------------------------------------------------------------------


def test_dtype_names_resolve_per_device():
    assert weights_dtype("auto", CPU) == torch.float32 and weights_dtype("auto", GPU) == torch.bfloat16
    assert weights_dtype("bf16", CPU) == torch.bfloat16 and weights_dtype("fp32", GPU) == torch.float32
    with pytest.raises(Scail2Error, match=r"^--dtype 'fp16' is not one of auto, bf16, fp32$"):
        weights_dtype("fp16", GPU)


def test_vae_loads_as_stored_on_a_gpu_and_fp32_on_cpu(tmp_path):
    folders = {}
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        folders[dtype] = tmp_path / str(dtype)
        tiny_vae().to(dtype).save_pretrained(folders[dtype])
        assert stored_dtype(folders[dtype]) == dtype
    assert vae_dtype(folders[torch.bfloat16], GPU, torch.bfloat16) == torch.bfloat16
    assert vae_dtype(folders[torch.float32], GPU, torch.bfloat16) == torch.float32
    assert vae_dtype(folders[torch.float16], GPU, torch.bfloat16) == torch.float32  # fp16 range: widened
    assert vae_dtype(folders[torch.bfloat16], GPU, torch.float32) == torch.float32  # --dtype fp32 everywhere
    assert vae_dtype(folders[torch.bfloat16], CPU, torch.bfloat16) == torch.float32


def test_autocast_only_for_fp32_weights_that_should_compute_in_bf16(model_dir):
    fp32 = SCAIL2Transformer3DModel.from_pretrained(model_dir / "transformer")
    bf16 = SCAIL2Transformer3DModel.from_pretrained(model_dir / "transformer", dtype=torch.bfloat16)
    assert autocast_dtype("bf16", CPU, bf16) is None and autocast_dtype("auto", GPU, bf16) is None
    assert autocast_dtype("auto", GPU, fp32) == torch.bfloat16  # a caller's own fp32 pipeline
    assert autocast_dtype("auto", CPU, fp32) is None and autocast_dtype("fp32", GPU, fp32) is None


# ---------------------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------------------


def test_auto_on_cpu_loads_everything_in_fp32_as_before(model_dir):
    pipeline = load_pipeline(model_dir, CPU)
    plain = SCAIL2Pipeline.from_pretrained(model_dir)  # the loading of earlier versions
    for name in ("transformer", "vae", *ENCODERS):
        ours, theirs = getattr(pipeline, name).state_dict(), getattr(plain, name).state_dict()
        assert all(
            v.dtype == torch.float32 and torch.equal(v, theirs[k]) for k, v in ours.items() if v.is_floating_point()
        )


def test_bf16_loads_transformer_and_encoders_in_bf16_and_runs_without_weight_copies(model_dir):
    pipeline = load_pipeline(model_dir, CPU, dtype="bf16")
    check_transformer_dtypes(pipeline.transformer, torch.bfloat16)
    assert all(dtypes(getattr(pipeline, name)) == {torch.bfloat16} for name in ENCODERS)
    assert dtypes(pipeline.vae) == {torch.float32}
    spy = WeightCastSpy(pipeline.transformer)
    with spy:  # every denoising step of a guided two-segment video
        bf16 = frames(pipeline, autocast_dtype=autocast_dtype("bf16", CPU, pipeline.transformer))
    assert spy.casts == []
    fp32 = frames(load_pipeline(model_dir, CPU, dtype="fp32"))
    assert (bf16 - fp32).norm() / fp32.norm() < 0.05  # measured 0.2% (pixels in [0, 1])


@pytest.mark.filterwarnings("ignore:`torch_dtype` is deprecated")  # diffusers now also takes `dtype=`
def test_the_python_api_loads_a_whole_pipeline_in_bf16(model_dir):
    pipeline = SCAIL2Pipeline.from_pretrained(model_dir, torch_dtype=torch.bfloat16)
    check_transformer_dtypes(pipeline.transformer, torch.bfloat16)
    assert dtypes(pipeline.vae) == {torch.bfloat16}
    bf16, fp32 = frames(pipeline), frames(SCAIL2Pipeline.from_pretrained(model_dir))
    assert (bf16 - fp32).norm() / fp32.norm() < 0.05  # measured 1.0% (the VAE in bf16 too)


# ---------------------------------------------------------------------------------------------------------
# Attention kernel and compilation
# ---------------------------------------------------------------------------------------------------------


def test_attention_kernel_reaches_every_attention_module(model_dir):
    pipeline = load_pipeline(model_dir, CPU, attention="_native_math")
    processors = [m.processor for m in pipeline.transformer.modules() if hasattr(m, "processor")]
    assert len(processors) == 4 and {p._attention_backend.value for p in processors} == {"_native_math"}
    torch.testing.assert_close(frames(pipeline), frames(load_pipeline(model_dir, CPU)), rtol=0, atol=1e-5)


def test_compile_compiles_the_repeated_block(model_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(SCAIL2Transformer3DModel, "compile_repeated_blocks", lambda self, **kw: calls.append(kw))
    load_pipeline(model_dir, CPU)
    assert calls == []
    load_pipeline(model_dir, CPU, compile=True)
    assert calls == [{"fullgraph": True}]


def test_cli_flags_reach_the_loaded_model(model_dir, tmp_path, monkeypatch):
    compiled, loaded = [], []
    monkeypatch.setattr(SCAIL2Transformer3DModel, "compile_repeated_blocks", lambda self, **kw: compiled.append(kw))
    monkeypatch.setattr(
        animate_module, "load_pipeline", lambda *a, **k: loaded.append(load_pipeline(*a, **k)) or loaded[-1]
    )
    files = {
        "--ref": write_reference(tmp_path / "ref.png", 90, 140),
        "--ref-mask": write_reference_mask(tmp_path / "ref_mask.png", 90, 140),
        "--driving": write_video(tmp_path / "driving.mp4", moving_square_frames(6, 72, 120), fps=24),
        "--driving-mask": write_mask_folder(tmp_path / "masks", square_masks(6, 72, 120)),
    }
    out = tmp_path / "out.mp4"
    args = ["animate", "--model", str(model_dir), "--out", str(out), "--height", "64", "--width", "96"]
    args += [str(x) for pair in files.items() for x in pair]
    args += [
        "--sampler",
        "euler",
        "--steps",
        "1",
        "--cfg",
        "1",
        "--dtype",
        "bf16",
        "--attention",
        "_native_math",
        "--compile",
    ]
    assert main(args) == 0
    (pipeline,) = loaded
    check_transformer_dtypes(pipeline.transformer, torch.bfloat16)
    assert {
        m.processor._attention_backend.value for m in pipeline.transformer.modules() if hasattr(m, "processor")
    } == {"_native_math"}
    assert compiled == [{"fullgraph": True}]
    request = json.loads(out.with_suffix(".json").read_text())["request"]
    assert (request["dtype"], request["attention"], request["compile"]) == ("bf16", "_native_math", True)


@pytest.mark.parametrize(
    "attention, device, message",
    [
        ("flash", CPU, r"^--attention flash needs a GPU; on cpu use one of _native_flash, _native_math, flex, "),
        ("flash", GPU, r"^--attention flash: .*flash-attn.* \(or use --attention sdpa\)$"),
        ("fast", GPU, r"^--attention 'fast' is not one of sdpa, flash, "),
    ],
)
def test_an_unusable_attention_kernel_is_refused_in_one_line_before_loading(
    model_dir, attention, device, message, monkeypatch
):
    monkeypatch.setattr(SCAIL2Pipeline, "from_pretrained", lambda *a, **k: pytest.fail("weights were loaded"))
    with pytest.raises(Scail2Error, match=message) as error:
        load_pipeline(model_dir, device, dtype="fp32", attention=attention)
    assert "\n" not in str(error.value)
