"""One module per `scail2` verb (registered in `scail2.cli`), and the dependency checks several verbs share.

Each verb checks its optional dependencies (`scail2.optional.require`) before loading a model or reading
data, so a missing extra is reported in one line at once rather than after minutes of work.
"""

from __future__ import annotations

from pathlib import Path

from scail2.optional import require


def require_text_dependencies(model: str | Path | None) -> None:
    """A model folder with a text encoder cleans its prompts with ftfy (the `text` extra)."""
    if model is not None and (Path(model) / "text_encoder").is_dir():
        require("ftfy", purpose="cleaning prompts for the model's text encoder")
