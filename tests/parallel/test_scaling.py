"""`scail2 plan --gpus N`: per-GPU memory and time over N GPUs, and the scaling table."""

from __future__ import annotations

import pytest

from scail2.cli import main
from scail2.errors import Scail2Error
from scail2.parallel.scaling import check_parallel_fits, parallel_plan, scaling
from scail2.pipelines.memory_inventory import ModelFolder
from scail2.pipelines.memory_plan import GIB, JobShape, RunOptions, transformer_sizes, usable_gpu_bytes

JOB = JobShape(512, 896, 81)


@pytest.fixture(scope="module")
def folder() -> ModelFolder:
    return ModelFolder.read("14b")


def test_the_layouts_follow_guidance_and_the_heads(folder):
    plans = {p.layout.gpus: p.layout for p in scaling(folder, JOB, RunOptions(), 8)}
    assert sorted(plans) == [1, 2, 4, 8]
    assert (plans[2].cfg, plans[2].ulysses) == (2, 1) and (plans[8].cfg, plans[8].ulysses) == (2, 4)
    unguided = parallel_plan(folder, JobShape(512, 896, 81, guided=False), RunOptions(), 8)
    assert (unguided.layout.cfg, unguided.layout.ulysses) == (1, 8)
    with pytest.raises(Scail2Error, match="must divide the model's 40 attention heads"):
        parallel_plan(folder, JobShape(512, 896, 81, guided=False), RunOptions(), 3)


def test_predicted_speed_up_meets_the_targets(folder):
    plans = {p.layout.gpus: p for p in scaling(folder, JOB, RunOptions(), 8)}
    one = plans[1].step_s
    assert one / plans[2].step_s >= 1.85  # guidance split: no exchange inside the forward
    assert one / plans[8].step_s >= 6.5  # 2 x 4 Ulysses
    assert one / plans[8].step_s < 8


def test_sharded_weights_leave_each_gpu_its_share_and_two_blocks(folder):
    sizes = transformer_sizes(folder.transformer, RunOptions())
    whole = {p.name: p for p in parallel_plan(folder, JOB, RunOptions(), 8).plan.phases}
    shared = {p.name: p for p in parallel_plan(folder, JOB, RunOptions(), 8, shard_weights=True).plan.phases}
    saved = whole["denoise"].weights - shared["denoise"].weights
    assert saved == sizes.total - (-(-sizes.total // 8) + 2 * sizes.largest_block)
    assert shared["denoise"].total < whole["denoise"].total - 20 * GIB
    # one rank's activations: its pass and a quarter of the tokens, plus the sequence gathered before the head
    one = {p.name: p for p in parallel_plan(folder, JOB, RunOptions(), 1).plan.phases}
    assert shared["denoise"].activations < one["denoise"].activations / 2


def test_sharded_loading_leaves_each_process_its_host_ram_without_the_transformer(folder):
    sizes = transformer_sizes(folder.transformer, RunOptions())
    whole = parallel_plan(folder, JOB, RunOptions(), 8).plan.host
    shared = parallel_plan(folder, JOB, RunOptions(), 8, shard_weights=True).plan.host
    assert whole - shared == sizes.total - (-(-sizes.largest_leaf // 8))  # one weight's rows at a time
    assert whole > 45 * GIB and shared < 20 * GIB


def test_plan_cli_prints_the_per_gpu_plan_and_the_scaling(capsys):
    assert main(["plan", "--model", "14b", "--gpus", "8", "--shard-weights", "--gpu-memory", "24"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("per GPU with 8 GPUs (2 CFG x 4 Ulysses, sharded weights):")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "Ulysses" in line]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2", "4", "8"]
    assert rows[0].endswith("| 1.00x | no |") and rows[-1].endswith("| yes |")


def test_plan_cli_refuses_a_gpu_count_that_does_not_split_the_heads(capsys):
    assert main(["plan", "--model", "14b", "--gpus", "3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "start one of 1, 2, 4, 5, 8, 10, 16, 20, 40, 80 processes" in err[0]


def test_animate_under_torchrun_checks_each_gpu_and_names_the_fix(folder):
    assert check_parallel_fits(folder, JOB, RunOptions(), 8, True, usable_gpu_bytes(24)).layout.ulysses == 4
    with pytest.raises(Scail2Error) as refused:
        check_parallel_fits(folder, JOB, RunOptions(), 8, False, usable_gpu_bytes(24))
    message = str(refused.value)
    assert "over 8 processes (2 CFG x 4 Ulysses) needs 40.3 GiB per GPU but 21.8 GiB is usable" in message
    assert "add --shard-weights (14.8 GiB per GPU)" in message and "\n" not in message
    with pytest.raises(Scail2Error, match="use more GPUs or a smaller --height/--width"):
        check_parallel_fits(folder, JOB, RunOptions(), 2, True, usable_gpu_bytes(16))


def test_run_animate_under_a_layout_refuses_before_loading(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torch

    from scail2 import animate
    from scail2.parallel import scaling as scaling_module
    from scail2.pipelines.memory_inventory import write_config_folder
    from tests.pipelines.media import moving_square_frames, write_reference, write_video

    model = write_config_folder(tmp_path / "scail2-14b", "14b")  # configs only: nothing could be loaded
    monkeypatch.setattr(scaling_module, "detected_gpu_bytes", lambda: usable_gpu_bytes(24))
    monkeypatch.setattr(animate, "load_pipeline", lambda *a, **k: pytest.fail("loaded before the check"))
    layout = SimpleNamespace(device=torch.device("cuda"), world=8)  # rank 0 of 8 on a GPU machine
    request = animate.AnimateRequest(
        ref=write_reference(tmp_path / "ref.png", 512, 896),
        driving=write_video(tmp_path / "d.mp4", moving_square_frames(9, 72, 120), fps=24),
        out=tmp_path / "o.mp4",
        model=model,
        height=512,
        width=896,
    )
    with pytest.raises(Scail2Error, match="over 8 processes .* add --shard-weights"):
        animate.run_animate(request, layout=layout)
