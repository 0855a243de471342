"""`scail2 batch`, `cues`, `plan --gpus` and animate's newer flags given bad inputs the way a careless user would:
each is refused in one line naming the flag, file or jobs-file setting, before any work, and nothing on disk
changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.commands.corpus import assert_refused
from tests.commands.test_bad_inputs_animate import animate_args
from tests.pipelines.media import moving_square_frames, write_reference, write_video

JOB = "  - ref: ref.png\n    driving: driving.mp4\n"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("user")
    write_video(root / "driving.mp4", moving_square_frames(5, 64, 96), fps=16)
    write_reference(root / "ref.png", 64, 96)
    (root / "mine" / "sub").mkdir(parents=True)
    (root / "mine" / "thesis.txt").write_text("years of work")
    (root / "note.txt").write_text("not a folder")
    (root / "out").mkdir()
    (root / "masks").mkdir()  # what `scail2 masks` writes, as far as the checks before the work look
    (root / "masks" / "meta.json").write_text(json.dumps({"format": "scail2-masks", "frames": 5}))
    (root / "video_alpha").mkdir()
    (root / "video_alpha" / "mine.txt").write_text("the user's")
    (root / "video.qa.json").write_text('{"mine": 1}')
    jobs = {
        "ok": f"out: out\njobs:\n{JOB}",
        "list": "- ref: ref.png\n  driving: driving.mp4\n",
        "top": f"jobz: 1\njobs:\n{JOB}",
        "entry": "jobs:\n  - just a string\n",
        "defaults": f"defaults: [1]\njobs:\n{JOB}",
        "empty": "",
        "tab": "jobs:\n\t- ref: x\n",
        "unknown": f"jobs:\n{JOB}    stepz: 3\n",
        "steps": f"jobs:\n{JOB}    steps: ten\n",
        "steps0": f"jobs:\n{JOB}    steps: 0\n",
        "seg": f"jobs:\n{JOB}    segment_length: 16\n",
        "overlap": f"jobs:\n{JOB}    segment_length: 9\n    overlap: 9\n",
        "handoff": f"jobs:\n{JOB}    handoff: magic\n",
        "qa": f"jobs:\n{JOB}    qa: maybe\n",
        "device": f"jobs:\n{JOB}    device: gpu\n",
        "seed": f"jobs:\n{JOB}    seed: -1\n",
        "anchor": f"jobs:\n{JOB}    color_anchor: .nan\n",
        "prompt": f"jobs:\n{JOB}    prompt: [a, b]\n",
        "missing": "jobs:\n  - ref: nope.png\n    driving: driving.mp4\n",
        "name": f"jobs:\n{JOB}    name: ../../evil\n",
        "out_here": f"out: .\njobs:\n{JOB}",
        "out_user": f"out: mine\njobs:\n{JOB}",
        "out_input": f"out: driving.mp4\njobs:\n{JOB}",
    }
    for name, text in jobs.items():
        (root / f"{name}.yaml").write_text(text)
    return root


def test_batch_corpus(world, capsys):
    def jobs(name, *extra):
        return ["batch", world / f"{name}.yaml", *extra]

    cases = [
        (["batch", world / "missing_file.yaml"], ["missing_file.yaml", "not found"]),
        (["batch", world / "driving.mp4"], ["driving.mp4", "not a text file"]),
        (["batch", world / "mine"], ["mine", "not found"]),
        (jobs("list"), ["list.yaml", "jobs:"]),
        (jobs("top"), ["top.yaml", "jobz"]),
        (jobs("entry"), ["entry.yaml", "job 1", "not a mapping"]),
        (jobs("defaults"), ["defaults.yaml", "defaults:"]),
        (jobs("empty"), ["empty.yaml", "jobs:"]),
        (jobs("tab"), ["tab.yaml", "not valid YAML"]),
        (jobs("unknown"), ["unknown.yaml", "stepz"]),
        (jobs("steps"), ["steps.yaml", "job 1", "--steps", "ten"]),
        (jobs("steps0"), ["steps0.yaml", "--steps", "got 0"]),
        (jobs("seg"), ["seg.yaml", "--segment-length", "4n+1"]),
        (jobs("overlap"), ["overlap.yaml", "overlap 9", "segment_length 9"]),
        (jobs("handoff"), ["handoff.yaml", "--handoff", "magic"]),
        (jobs("qa"), ["qa.yaml", "qa", "true or false"]),
        (jobs("device"), ["device.yaml", "--device", "gpu"]),
        (jobs("seed"), ["seed.yaml", "--seed"]),
        (jobs("anchor"), ["anchor.yaml", "--color-anchor", "nan"]),
        (jobs("prompt"), ["prompt.yaml", "prompt"]),
        (jobs("missing"), ["missing.yaml", "nope.png", "not found"]),
        (jobs("name"), ["name.yaml", "../../evil", "plain file name"]),
        (jobs("out_here"), ["out:", "jobs file"]),
        (jobs("out_user"), ["out:", "mine", "did not write"]),
        (jobs("out_input"), ["out:", "driving.mp4", "input"]),
        (jobs("ok", "--out", world / "mine"), ["--out", "mine", "did not write"]),
        (jobs("ok", "--out", world / "masks"), ["--out", "masks", "did not write"]),
        (jobs("ok", "--out", world / "ok.yaml"), ["--out", "ok.yaml", "jobs file"]),
        (jobs("ok", "--out", world / "note.txt"), ["--out", "note.txt", "is a file"]),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_cues_corpus(world, capsys):
    def cues(masks="masks", out="new_cues", *extra):
        return ["cues", "--driving", world / "driving.mp4", "--masks", world / masks, "--out", world / out, *extra]

    cases = [
        (cues(out="driving.mp4"), ["--out", "--driving"]),
        (cues("masks", "masks", "--overwrite"), ["--out", "--masks"]),
        (cues(out="mine"), ["--out", "mine", "did not write"]),
        (cues("masks", "mine", "--overwrite"), ["--out", "mine", "did not write"]),
        (cues(out="note.txt"), ["--out", "is a file"]),
        (cues(masks="note.txt"), ["--masks", "note.txt", "is a file"]),
        (cues(masks="mine"), ["--masks", "mine", "meta.json"]),
        (cues(masks="nothing"), ["--masks", "nothing", "does not exist"]),
        (["cues", "--driving", world / "nope.mp4", "--masks", world / "masks", "--out", world / "c"], ["--driving"]),
        (cues("masks", "c", "--max-frames", "0"), ["--max-frames"]),
        (cues("masks", "c", "--cue-cutoff", "nan"), ["--cue-cutoff", "nan"]),
        (cues("masks", "c", "--cue-cutoff", "2"), ["--cue-cutoff"]),
        (cues("masks", "c", "--cue-order", "0"), ["--cue-order"]),
        (cues("masks", "c", "--cue-grid", "0"), ["--cue-grid"]),
        (cues("masks", "c", "--face-scale", "0.5"), ["--face-scale"]),
        (cues("masks", "c", "--head-fraction", "0"), ["--head-fraction"]),
        (cues("masks", "c", "--box-smoothing", "-3"), ["--box-smoothing"]),
        (cues("masks", "c", "--cue-filter", "median"), ["--cue-filter", "median"]),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_plan_gpus_corpus(world, capsys):
    plan = ["plan", "--model", "14b"]
    cases = [
        ([*plan, "--gpus", "0"], ["--gpus"]),
        ([*plan, "--gpus", "-1"], ["--gpus"]),
        ([*plan, "--gpus", "two"], ["--gpus", "two"]),
        ([*plan, "--gpus", "3"], ["--gpus 3", "40 attention heads"]),
        ([*plan, "--gpus", "2", "--tflops", "nan"], ["--tflops"]),
        ([*plan, "--gpus", "2", "--tflops", "0"], ["--tflops"]),
        ([*plan, "--gpus", "2", "--link-gbs", "0"], ["--link-gbs"]),
        ([*plan, "--shard-weights"], ["--shard-weights", "--gpus"]),
    ]
    for args, names in cases:
        assert_refused(capsys, args, names, world)


def test_animate_newer_flags_corpus(world, capsys):
    out = world / "video.mp4"
    cases = [
        (dict(color_anchor="nan"), ["--color-anchor", "nan"]),
        (dict(color_anchor="2"), ["--color-anchor"]),
        (dict(qa_retry="-1"), ["--qa-retry"]),
        (dict(qa_retry="1000000"), ["--qa-retry"]),
        (dict(handoff="tail"), ["--handoff", "tail"]),
        (dict(out=out), ["video.qa.json", "not written by"]),  # the QA report beside --out is the user's
        (dict(cues=world / "mine", frames_dir=world / "mine" / "frames"), ["--frames-dir", "--cues"]),
    ]
    for flags, names in cases:
        assert_refused(capsys, animate_args(world, **flags), names, world)
    alpha = [*animate_args(world, out=out), "--alpha", "--no-qa"]
    assert_refused(capsys, alpha, ["--alpha", "video_alpha", "did not write"], world)
