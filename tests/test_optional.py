"""`scail2.optional`: optional dependencies are imported where they are used and name their extra when missing."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

from scail2.errors import Scail2Error
from scail2.models.convert_components import convert_tokenizer
from scail2.models.encoders import clean_prompt
from scail2.optional import EXTRAS, LazyModule, MissingDependency, require
from scail2.preprocess import video_io

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"
# Import name -> the distribution pyproject.toml lists, where they differ.
DISTRIBUTIONS = {"yaml": "pyyaml", "cv2": "opencv-python-headless"}


@pytest.fixture
def hide(monkeypatch):
    def hide_module(name: str) -> None:
        for loaded in [key for key in sys.modules if key == name or key.startswith(f"{name}.")]:
            monkeypatch.setitem(sys.modules, loaded, None)
        monkeypatch.setitem(sys.modules, name, None)

    return hide_module


def extras_of_pyproject() -> dict[str, set[str]]:
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    return {extra: {re.split(r"[<>=!~\[ ]", spec)[0].lower() for spec in specs} for extra, specs in extras.items()}


def test_every_optional_module_belongs_to_the_extra_that_installs_it():
    extras = extras_of_pyproject()
    for module, (extra, _) in EXTRAS.items():
        assert DISTRIBUTIONS.get(module, module) in extras[extra], (module, extra)


def test_the_test_extra_installs_every_optional_dependency_but_the_app():
    extras = extras_of_pyproject()
    assert extras["video"] | extras["train"] | extras["text"] <= extras["test"]


def test_require_returns_the_module_or_names_the_extra(hide):
    assert require("ftfy").fix_text("caf\u00c3\u00a9") == "caf\u00e9"
    hide("ftfy")
    with pytest.raises(MissingDependency) as info:
        require("ftfy", purpose="cleaning prompts")
    assert isinstance(info.value, Scail2Error)
    assert str(info.value) == "scail2 needs ftfy (cleaning prompts): pip install 'scail2[text]'"
    assert info.value.describe("scail2 cache").startswith("scail2 cache needs ftfy (cleaning prompts): ")


def test_require_of_a_submodule_names_the_package(hide):
    hide("peft")
    with pytest.raises(MissingDependency, match=r"needs peft: pip install 'scail2\[train\]'"):
        require("peft.tuners.tuners_utils")


def test_require_refuses_a_module_that_is_no_optional_dependency():
    with pytest.raises(ValueError, match="no optional dependency"):
        require("numpy")


def test_lazy_module_imports_on_first_use(hide):
    lazy = LazyModule("ftfy", purpose="cleaning prompts")
    assert lazy.fix_text("a") == "a"
    hide("ftfy")
    with pytest.raises(MissingDependency, match="cleaning prompts"):
        lazy.fix_text("a")


def test_prompt_cleaning_needs_ftfy_only_when_it_runs(hide):
    assert clean_prompt("  a &amp;amp; b\n c ") == "a & b c"
    hide("ftfy")
    with pytest.raises(MissingDependency, match=r"scail2\[text\]"):
        clean_prompt("a")


def test_video_io_imports_without_pyav_and_names_it_on_use(hide, tmp_path):
    clip = tmp_path / "clip.mp4"
    clip.write_bytes(b"not decoded")
    hide("av")
    with pytest.raises(MissingDependency, match=r"needs PyAV \(reading and writing videos\): .*scail2\[video\]"):
        video_io.probe_video(clip)


def test_video_io_colour_flags_are_pyavs():
    from av.video.reformatter import Interpolation

    flags = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT
    assert video_io.ACCURATE_COLOR_CONVERSION == int(flags)


def test_converting_a_tokenizer_without_tokenizer_json_needs_sentencepiece(hide, tmp_path):
    (tmp_path / "umt5-xxl").mkdir()
    (tmp_path / "umt5-xxl" / "spiece.model").write_bytes(b"")
    hide("sentencepiece")
    with pytest.raises(MissingDependency, match=r"needs sentencepiece .*scail2\[text\]"):
        convert_tokenizer(tmp_path / "umt5-xxl", tmp_path / "out")
    assert not (tmp_path / "out").exists()
