"""benchmarks/gpu_check.py end to end at tiny sizes on the CPU (`--cpu-tiny`): every section runs or says why
not, the JSON holds each section's numbers, a failing section is recorded without stopping the others, the JSON
is rewritten after every section, and `--table` prints an earlier run."""

from __future__ import annotations

import json

import pytest

from benchmarks import gpu_check

# The sections that need code outside this checkout's core may report "not available" instead of "ok".
OPTIONAL = {"fp8": "scail2.models.quantize", "segment": "MemorySettings"}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "check.json"
    returned = gpu_check.main(["--cpu-tiny", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written["sections"].keys() == returned["sections"].keys()
    return written


def test_every_default_section_runs_in_order_and_says_how_it_went(report):
    sections = report["sections"]
    assert list(sections) == list(gpu_check.DEFAULT_SECTIONS) == [s for s in gpu_check.SECTIONS if s != "train"]
    for name, entry in sections.items():
        if name in OPTIONAL and entry["status"] == "not available":
            assert OPTIONAL[name] in entry["reason"]
            continue
        assert entry["status"] == "ok", (name, entry.get("error"), entry.get("traceback"))
        assert entry["seconds"] >= 0 and entry["result"]["table"]["rows"]
    meta = report["meta"]
    assert meta["mode"] == "cpu-tiny" and meta["tokens"] == gpu_check.scail2_tokens(9, 32, 64) == 38
    assert meta["total_seconds"] > 0 and meta["best_exact_attention"]


def test_device_and_attention_numbers(report):
    device = report["sections"]["device"]["result"]
    assert device["matmul_bf16_tflops"] > 0 and device["copy_gbs"] > 0
    attention = report["sections"]["attention"]["result"]
    assert attention["shape"] == [1, 96, 2, 16]
    assert attention["backends"]["sdpa"]["rel_error"] == 0 and attention["backends"]["sdpa"]["ms"] > 0
    assert attention["backends"]["flash"]["status"] == "skipped"  # a GPU kernel, with the reason
    assert "needs a GPU" in attention["backends"]["flash"]["reason"]
    assert set(gpu_check.ATTENTION_BACKENDS) < set(attention["backends"])


def test_transformer_rows_at_batch_one_and_two(report):
    rows = report["sections"]["transformer"]["result"]["rows"]
    assert [row["batch"] for row in rows[:2]] == [1, 2]
    for row in rows:
        assert row["tokens"] == 38 and row["seconds"] > 0 and row["tflops"] >= 0
        assert row["of_matmul_ceiling"] is not None and row["peak_gib"] is None  # no CUDA peak on a CPU


def test_wan_runs_at_the_same_token_count(report):
    wan = report["sections"]["wan"]["result"]
    frames, height, width = wan["latent"]
    assert frames * (height // 2) * (width // 2) == 38 == wan["rows"][0]["tokens"]
    assert len(wan["table"]["rows"]) == 2  # ours beside diffusers'


def test_vae_decodes_untiled_and_tiled(report):
    vae = report["sections"]["vae"]["result"]
    assert [row["tiled"] for row in vae["rows"]] == [False, True]
    assert all(row["output"] == [1, 3, 9, 32, 64] for row in vae["rows"])
    assert vae["max_abs_tiled_vs_untiled"] == vae["max_abs_tiled_vs_untiled"]  # not NaN


def test_optional_sections_report_their_numbers_when_available(report):
    fp8, segment = report["sections"]["fp8"], report["sections"]["segment"]
    if fp8["status"] == "ok":
        assert fp8["result"]["rel_l2_vs_bf16"] < 0.1 and fp8["result"]["rows"][0]["batch"] == 1
    if segment["status"] == "ok":
        result = segment["result"]
        assert result["memory"]["offload"] == "group" and result["steps"] == 2 and len(result["step_seconds"]) == 2


def test_the_train_section_runs_when_named(tmp_path):
    report = gpu_check.main(["--cpu-tiny", "--sections", "train", "--out", str(tmp_path / "t.json")])
    train = report["sections"]["train"]
    assert train["status"] == "ok", train.get("traceback")
    row = train["result"]["rows"][0]
    assert row["trainable_params"] > 0 and len(row["step_seconds"]) == 2 and row["variant"].startswith("LoRA r4")


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    def broken(check):
        raise RuntimeError("CUDA out of memory.\nTried to allocate 9 GiB")

    seen = []

    def device_after(check):
        seen.append(json.loads((tmp_path / "c.json").read_text())["sections"])
        return {"table": gpu_check.table(["x"], [[1]])}

    monkeypatch.setattr(gpu_check, "section_attention", broken)
    monkeypatch.setattr(gpu_check, "section_device", device_after)
    report = gpu_check.main(["--cpu-tiny", "--sections", "attention,device", "--out", str(tmp_path / "c.json")])
    attention = report["sections"]["attention"]
    assert attention["status"] == "error" and attention["error"] == "RuntimeError: CUDA out of memory."
    assert "Tried to allocate" in "\n".join(attention["traceback"])
    # the JSON on disk already held the failed section, and the next one as running, while it ran
    assert seen[0]["attention"]["status"] == "error" and seen[0]["device"]["status"] == "running"
    assert report["sections"]["device"]["status"] == "ok"


def test_sections_past_the_budget_are_skipped_and_the_table_reprints(tmp_path, capsys):
    out = tmp_path / "c.json"
    gpu_check.main(["--cpu-tiny", "--sections", "device,vae", "--budget-s", "0", "--out", str(out)])
    sections = json.loads(out.read_text())["sections"]
    assert sections["device"]["status"] == "skipped" and "time budget" in sections["device"]["reason"]
    capsys.readouterr()
    gpu_check.main(["--table", str(out)])
    printed = capsys.readouterr().out
    assert "## device: skipped" in printed and "## vae: skipped" in printed


def test_unknown_sections_are_refused():
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--sections", "device,warp"])
