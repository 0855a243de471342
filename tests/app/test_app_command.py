"""`scail2 app` through the real CLI, without serving: the missing extra, the --host warning and a bad --model."""

from __future__ import annotations

import sys

import pytest

from scail2.cli import main
from scail2.commands import app as app_command


def test_without_gradio_one_line_names_the_extra(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)
    assert main(["app"]) == 2
    assert capsys.readouterr().err.splitlines() == ["scail2 app needs gradio (the web app): pip install 'scail2[app]'"]


def test_binds_locally_by_default_and_warns_for_another_host(monkeypatch, capsys):
    pytest.importorskip("gradio")
    calls = []
    monkeypatch.setattr("scail2.app.ui.launch", lambda config, host, port: calls.append((config, host, port)))
    assert main(["app", "--max-upload-mb", "1", "--max-side", "640"]) == 0
    config, host, port = calls[-1]
    assert (host, port) == ("127.0.0.1", 7860) and config.model is None
    assert (config.limits.max_bytes, config.limits.max_side) == (1 << 20, 640)
    assert capsys.readouterr().err == ""
    assert main(["app", "--host", "0.0.0.0"]) == 0
    assert "warning: serving on 0.0.0.0" in capsys.readouterr().err


def test_a_model_that_is_not_a_folder_is_refused(tmp_path, capsys):
    pytest.importorskip("gradio")
    assert main(["app", "--model", str(tmp_path / "missing")]) == 2
    assert "not a folder" in capsys.readouterr().err
    assert app_command.register  # the verb is registered in scail2 --help


def test_the_app_never_asks_gradios_server_for_anything(monkeypatch):
    """Gradio checks its latest version online from every Blocks with analytics on; the app turns that off."""
    pytest.importorskip("gradio")
    from gradio import analytics

    from scail2.app.ui import App, AppConfig

    monkeypatch.setattr(analytics, "version_check", lambda: pytest.fail("the app asked Gradio's server"))
    blocks = App(AppConfig()).build()
    assert blocks.analytics_enabled is False
