"""`scail2 batch`: the driving cache skips repeated work, a killed job resumes to the same bytes, a failing job
does not stop the others, and a restarted batch skips finished jobs (tiny bundled model)."""

from __future__ import annotations

import json
import shutil

import pytest

from scail2 import batch
from scail2.cli import main
from scail2.errors import Scail2Error
from scail2.pipelines.pipeline_scail2 import SCAIL2Pipeline
from scail2.pipelines.segment_hooks import SegmentHooks
from tests.commands.test_animate_default_model import bundled_at, files  # noqa: F401 (fixtures)
from tests.pipelines.media import write_reference


@pytest.fixture
def bundled_tiny(tiny_model, bundled_at):  # noqa: F811
    bundled_at(tiny_model)
    return tiny_model


@pytest.fixture
def jobs_dir(files, tmp_path):  # noqa: F811
    for name in ("driving", "masks", "ref", "ref_mask"):
        target = tmp_path / files[name].name
        (shutil.copytree if files[name].is_dir() else shutil.copy)(files[name], target)
    write_reference(tmp_path / "ref2.png", 90, 140)
    return tmp_path


def write_jobs(folder, refs, **extra) -> str:
    lines = ["out: out", "defaults:", "  ref_mask: ref_mask.png", "  driving_mask: masks", "jobs:"]
    lines += [f"  - ref: {ref}\n    driving: driving.mp4" for ref in refs]
    lines += [f"    {key}: {value}" for key, value in extra.items()]
    path = folder / "jobs.yaml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


class Counter:
    def __init__(self, monkeypatch):
        self.driving, self.segments = 0, 0
        original_driving, original_prepare = batch.load_driving, SCAIL2Pipeline.prepare_segment

        def load_driving(*args, **kwargs):
            self.driving += 1
            return original_driving(*args, **kwargs)

        def prepare_segment(pipe, *args, **kwargs):
            self.segments += 1
            return original_prepare(pipe, *args, **kwargs)

        monkeypatch.setattr(batch, "load_driving", load_driving)
        monkeypatch.setattr(SCAIL2Pipeline, "prepare_segment", prepare_segment)


def test_the_second_reference_reads_the_driving_work_from_the_cache(bundled_tiny, jobs_dir, monkeypatch, capsys):
    counter = Counter(monkeypatch)
    jobs = write_jobs(jobs_dir, ["ref.png", "ref2.png"])
    assert main(["batch", jobs]) == 0
    assert counter.driving == 1 and counter.segments == 2  # the first job only: two segments
    table = capsys.readouterr().out
    assert "ref-driving" in table and "ref2-driving" in table and table.count(" done ") == 2

    plain = jobs_dir / "plain.mp4"  # the same job without the cache gives the same video
    request = batch.read_jobs_file(jobs)[1][1].request
    batch.run_animate(batch.with_bundled_model(request.__class__(**{**request.__dict__, "out": plain})))
    assert plain.read_bytes() == (jobs_dir / "out" / "ref2-driving.mp4").read_bytes()
    manifest = json.loads((jobs_dir / "out" / "ref2-driving.json").read_text())
    assert manifest["qa"]["status"] in ("pass", "warn") and manifest["batch"]["resumed_segments"] == []


class StopAfterFirstSegment(SegmentHooks):
    def __init__(self, inner):
        self.inner = inner

    def resume(self, segment):
        return self.inner.resume(segment)

    def finished(self, segment, state, attempts):
        self.inner.finished(segment, state, attempts)
        raise RuntimeError("killed after segment 0")


def test_a_killed_job_resumes_at_its_last_segment_with_the_same_bytes(bundled_tiny, jobs_dir):
    jobs = write_jobs(jobs_dir, ["ref.png"], handoff="latent")
    whole = batch.run_batch(jobs, jobs_dir / "whole")
    assert whole[0]["status"] == "done"

    out = jobs_dir / "killed"
    stopping = batch.BatchRunner(out, batch.DrivingCache(out / "cache"), checkpoint_hook=StopAfterFirstSegment)
    first = batch.run_batch(jobs, out, stopping)
    assert first[0]["status"] == "failed" and "killed after segment 0" in first[0]["error"]
    queue = json.loads((out / "queue.json").read_text())
    assert queue["jobs"]["ref-driving"]["status"] == "failed"
    assert (out / "checkpoints" / "ref-driving" / "segment_0000.safetensors").is_file()

    again = batch.run_batch(jobs, out)  # a fresh process would read the same files
    assert again[0]["status"] == "done" and again[0]["resumed_segments"] == [0]
    assert (out / "ref-driving.mp4").read_bytes() == (jobs_dir / "whole" / "ref-driving.mp4").read_bytes()
    assert not (out / "checkpoints" / "ref-driving").exists()
    assert batch.run_batch(jobs, out)[0]["status"] == "done (earlier)"


def test_a_failing_job_is_reported_and_the_others_go_on(bundled_tiny, jobs_dir, capsys):
    (jobs_dir / "missing.png").write_bytes(b"not an image")  # found before the run, unreadable in the job
    jobs = write_jobs(jobs_dir, ["missing.png", "ref.png"])
    assert main(["batch", jobs]) == 1
    out = capsys.readouterr().out
    assert "missing-driving  failed" in out and "missing.png" in out and "1 of 2 jobs failed" in out
    assert (jobs_dir / "out" / "ref-driving.mp4").is_file()


@pytest.mark.parametrize(
    "text, message",
    [
        ("jobs: []\n", "needs a non-empty `jobs:` list"),
        ("jobs:\n  - ref: a.png\n", "job 1 needs `driving:`"),
        ("jobs:\n  - ref: a.png\n    driving: b.mp4\n    stpes: 3\n", "unknown settings ['stpes']"),
        ("jobs:\n  - ref: a.png\n    driving: b.mp4\n    handoff: tail\n", "--handoff 'tail' is not one of"),
    ],
)
def test_bad_jobs_files_are_one_line_errors(tmp_path, text, message):
    path = tmp_path / "jobs.yaml"
    path.write_text(text)
    with pytest.raises(Scail2Error, match=message.replace("[", r"\[").replace("]", r"\]")):
        batch.read_jobs_file(path)


def test_cache_keys_follow_content_and_settings_not_names(tmp_path):
    from scail2.animate import AnimateRequest

    (tmp_path / "a.mp4").write_bytes(b"video one")
    (tmp_path / "copy.mp4").write_bytes(b"video one")
    cache = batch.DrivingCache(tmp_path / "cache")

    def key(driving="a.mp4", **changes):
        request = AnimateRequest(ref="r.png", driving=tmp_path / driving, out="o.mp4", **changes)
        return cache.driving_key(request, (64, 96))

    assert key() == key("copy.mp4")  # content-addressed: another name, the same bytes
    assert key() != key(max_frames=5) and key() != key(mode="replace")
    assert key() != cache.driving_key(AnimateRequest(ref="r.png", driving=tmp_path / "a.mp4", out="o.mp4"), (32, 32))
    (tmp_path / "a.mp4").write_bytes(b"video two")
    assert key() != key("copy.mp4")
