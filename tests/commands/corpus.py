"""Helpers of the bad-input corpora: run a command in-process and check it was refused the way a user should see.

A refusal is exit status 2, exactly one line on stderr starting `scail2 <command>`, no traceback, every expected
name (the flag, the file) in that line, and no file or folder created, changed or removed under the watched root.
"""

from __future__ import annotations

from pathlib import Path

from scail2.cli import main


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under `root` with its size and modification time."""
    return {
        str(p.relative_to(root)): (p.stat().st_size if p.is_file() else -1, p.stat().st_mtime_ns)
        for p in root.rglob("*")
    }


def run(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_refused(capsys, args, names, root: Path) -> str:
    """Run `args`; check the refusal (see the module doc) and return the error line."""
    before = snapshot(root)
    code, _, err = run(capsys, *args)
    lines = err.strip().splitlines()
    assert code == 2, (args, code, err)
    assert len(lines) == 1, (args, err)
    assert lines[0].startswith(f"scail2 {args[0]}"), err
    assert "Traceback" not in err, err
    for name in names:
        assert str(name) in lines[0], (name, lines[0])
    assert snapshot(root) == before, (args, "changed files on disk")
    return lines[0]
