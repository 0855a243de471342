"""Shared fixtures of the command tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.pipelines.components import tiny_pipeline


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random model folder without text or image encoder, laid out like the bundled demo model."""
    folder = tmp_path_factory.mktemp("bundled") / "demo_model"
    tiny_pipeline(seed=0, text=False, image=False).save_pretrained(folder)
    return folder
