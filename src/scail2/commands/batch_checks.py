"""Checks of a `scail2 batch` jobs file before any job runs: every value as `scail2 animate` checks its flag, every
input present, safe job names, and an output folder that is none of the inputs and holds only a batch's files.

A job's values are checked with the argument types of `scail2 animate`'s own parser, so a range changed there is
changed here. Each refusal is one `Scail2Error` line naming the jobs file, the job and the setting.
"""

from __future__ import annotations

import argparse
import re
from functools import cache
from pathlib import Path

from scail2.errors import Scail2Error

JOB_NAME = re.compile(r"[A-Za-z0-9_][-A-Za-z0-9_.]*")  # a file name in the output folder, never a path
KEY_TO_DEST = {"loras": "lora", "extra_refs": "extra_ref"}  # jobs-file keys whose flag's name differs
INPUT_KEYS = ("ref", "driving", "driving_mask", "ref_mask")


@cache
def animate_actions() -> dict[str, argparse.Action]:
    """`scail2 animate`'s arguments by destination name."""
    from scail2.commands import animate

    parser = argparse.ArgumentParser(add_help=False)
    animate._add_arguments(parser, mode_choice=True)  # noqa: SLF001 -- the same parser the command builds
    return {action.dest: action for action in parser._actions}  # noqa: SLF001


def check_value(key: str, value, where: str) -> None:
    """One job setting against its `scail2 animate` flag: type, range and choices."""
    if value is None:
        return
    action = animate_actions().get(KEY_TO_DEST.get(key, key))
    if action is None:
        return  # name, preset and sampling keys without a flag of the same name are checked where they are used
    flag = action.option_strings[0] if action.option_strings else key
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)):  # noqa: SLF001
        if not isinstance(value, bool):
            raise Scail2Error(f"{where}: {key}: {value!r} is not true or false ({flag})")
        return
    values = value if isinstance(action, argparse._AppendAction) and isinstance(value, list) else [value]  # noqa: SLF001
    for item in values:
        if isinstance(item, (dict, list, bool)) or (
            item is not None and action.type is None and not isinstance(item, str)
        ):
            raise Scail2Error(f"{where}: {key}: {item!r} is not {action.type.__name__ if action.type else 'text'}")
        text = str(item)
        if action.type is not None:
            try:
                action.type(text)
            except argparse.ArgumentTypeError as error:
                raise Scail2Error(f"{where}: {key} ({flag}): {error}") from None
        if action.choices is not None and text not in action.choices:
            raise Scail2Error(f"{where}: {key}: {flag} {text!r} is not one of {', '.join(map(str, action.choices))}")


def check_entry(source: Path, index: int, entry: dict, base: Path) -> None:
    """All of one job's settings (defaults merged) and its input files."""
    where = f"{source}: job {index + 1}"
    if entry.get("name") is not None and not JOB_NAME.fullmatch(str(entry["name"])):
        raise Scail2Error(f"{where}: name {entry['name']!r} must be a plain file name (letters, digits, - _ .)")
    for key, value in entry.items():
        check_value(key, value, where)
    length, overlap = entry.get("segment_length"), entry.get("overlap")
    if isinstance(length, int) and isinstance(overlap, int) and overlap >= length:
        raise Scail2Error(f"{where}: overlap {overlap} must be shorter than segment_length {length}")
    for key in (*INPUT_KEYS, "extra_refs"):
        value = entry.get(key)
        for item in value if isinstance(value, list) else [value]:
            if item is None:
                continue
            if not isinstance(item, str):
                raise Scail2Error(f"{where}: {key}: {item!r} is not a file name")
            if not (base / item).exists():
                raise Scail2Error(f"{where}: {key}: {base / item} not found (paths are relative to the jobs file)")


def batch_guard(jobs_file: str | Path, out_flag: str, out: Path, jobs) -> None:
    """The output folder: none of the jobs file's inputs, and empty, a folder an earlier batch wrote, or new."""
    from scail2.commands.guards import check_image_size, lora_path
    from scail2.outputs import OutputGuard

    inputs: dict[str, str | Path | None] = {"jobs file": jobs_file}
    for job in jobs:
        request = job.request
        for key in (*INPUT_KEYS, "model"):
            inputs[f"{key} of job {job.name}"] = getattr(request, key)
        for path in request.extra_refs:
            inputs[f"extra_refs of job {job.name}"] = path
        for spec in request.loras:
            inputs[f"loras of job {job.name}"] = lora_path(spec)
        for key in ("ref", "ref_mask"):
            check_image_size(f"{key} of job {job.name}", getattr(request, key))
    OutputGuard("batch", inputs).folder(out_flag, out, reuse=True, ours=lambda path: (path / "queue.json").is_file())
