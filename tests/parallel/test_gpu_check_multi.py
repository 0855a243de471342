"""benchmarks/gpu_check.py's multigpu section at tiny sizes: the prediction alone without several devices, and
the measurement over two CPU ranks (the code path the GPUs run, over gloo)."""

from __future__ import annotations

import torch

from benchmarks import gpu_check, multi_gpu


def test_one_device_reports_the_prediction_only():
    result = multi_gpu.section(gpu_check.tiny_sizes(), torch.device("cpu"))
    assert "the plan's prediction only" in result["note"] and "measured" not in result
    assert [row[0] for row in result["predicted"]] == [1, 2, 4, 8]
    assert result["predicted"][1][1] == "2 CFG x 1 Ulysses" and result["predicted"][1][4] >= 1.85


def test_two_ranks_measure_the_step_against_one():
    result = multi_gpu.section(gpu_check.tiny_sizes(), torch.device("cpu"), cpu_ranks=2)
    measured = result["measured"]
    assert measured["layout"] == "2 CFG x 1 Ulysses" and measured["parallel_s"] > 0
    assert measured["psnr_db"] >= 40 and measured["max_abs_error"] < 1e-2
    row = result["table"]["rows"][1]
    assert row[0] == 2 and row[5] == round(measured["parallel_s"], 4)
