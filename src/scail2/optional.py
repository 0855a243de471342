"""Optional dependencies: each belongs to an extra of pyproject.toml and is imported where it is used.

    ftfy = require("ftfy", purpose="cleaning prompts for the text encoder")

imports the module, or raises `MissingDependency`, which the CLI prints as one line:

    scail2 animate needs ftfy (cleaning prompts for the text encoder): pip install 'scail2[text]'

so a core install runs everything that does not need an extra, and says what to install for the rest.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from scail2.errors import Scail2Error

# Import name -> (extra of pyproject.toml that installs it, the name users know it by).
EXTRAS: dict[str, tuple[str, str]] = {
    "av": ("video", "PyAV"),
    "ftfy": ("text", "ftfy"),
    "sentencepiece": ("text", "sentencepiece"),
    "webdataset": ("train", "webdataset"),
    "yaml": ("train", "PyYAML"),
    "peft": ("train", "peft"),
    "tensorboard": ("train", "tensorboard"),
    "gradio": ("app", "gradio"),
    "gguf": ("gguf", "gguf"),
    "cv2": ("face", "OpenCV"),
}


class MissingDependency(Scail2Error):
    """An optional dependency is not installed; the message names the extra that installs it."""

    def __init__(self, module: str, purpose: str = ""):
        self.module = module
        self.extra, self.display_name = EXTRAS[module]
        self.purpose = purpose
        super().__init__(self.describe("scail2"))

    def describe(self, who: str) -> str:
        """'<who> needs ftfy (<purpose>): pip install 'scail2[text]''."""
        why = f" ({self.purpose})" if self.purpose else ""
        return f"{who} needs {self.display_name}{why}: pip install 'scail2[{self.extra}]'"


def missing_dependency(error: ModuleNotFoundError) -> MissingDependency | None:
    """The `MissingDependency` behind an import error, or None when the missing module is no optional one."""
    top_level = (error.name or "").partition(".")[0]
    return MissingDependency(top_level) if top_level in EXTRAS else None


def require(module: str, purpose: str = "") -> ModuleType:
    """Import `module` (an optional dependency or one of its submodules) or raise `MissingDependency`."""
    top_level = module.partition(".")[0]
    if top_level not in EXTRAS:
        raise ValueError(f"{top_level} is no optional dependency; add it to scail2.optional.EXTRAS and pyproject.toml")
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != top_level:
            raise  # the package is there but something it imports is not: a broken install, shown in full
        raise MissingDependency(top_level, purpose) from None


class LazyModule:
    """Stands for an optional module at import time; attribute access imports it (`require`).

    For modules whose functions use the dependency throughout (`video_io` and PyAV): importing them stays
    free, and the first call that needs the dependency raises `MissingDependency`.
    """

    def __init__(self, module: str, purpose: str = ""):
        self._module = module
        self._purpose = purpose

    def __getattr__(self, attribute: str):
        if attribute.startswith("_"):  # our own fields, absent on an instance that copy/pickle builds bare
            raise AttributeError(attribute)
        return getattr(require(self._module, self._purpose), attribute)
