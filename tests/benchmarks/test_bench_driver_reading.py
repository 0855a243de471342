"""The driver-reading sweep's pure pieces: variant parsing, the metrics log reader and the table (the sweep itself
is run by hand)."""

from __future__ import annotations

import json

import pytest

from benchmarks.bench_driver_reading import (
    VARIANTS,
    dependence_rows,
    markdown,
    parse_extra,
    profile_markdown,
    select_variants,
    table_steps,
)
from scail2.errors import Scail2Error


def test_extra_variants_parse_and_bad_ones_say_how():
    assert parse_extra("hi_lr=optim.lr=2e-3; flow.shift=3") == ("hi_lr", ["optim.lr=2e-3", "flow.shift=3"])
    assert parse_extra("again=") == ("again", [])
    for bad in ("no_overrides", "=optim.lr=1", "x=lr=1", "a.b=optim.lr=1"):
        with pytest.raises(Scail2Error, match="--extra"):
            parse_extra(bad)


def test_variants_are_chosen_in_order_and_unknown_names_are_refused():
    chosen = select_variants("rope_offset_0, baseline", ["mine=flow.shift=3"])
    assert list(chosen) == ["rope_offset_0", "baseline", "mine"]
    assert chosen["rope_offset_0"] == VARIANTS["rope_offset_0"] and chosen["mine"] == ["flow.shift=3"]
    chosen["baseline"].append("x.y=1")  # a copy: the registry stays as it is
    assert VARIANTS["baseline"] == []
    with pytest.raises(Scail2Error, match="known: baseline"):
        select_variants("baseline,nope", [])


def test_every_registered_variant_is_a_list_of_section_overrides():
    for overrides in VARIANTS.values():
        assert all("=" in o and "." in o.split("=", 1)[0] for o in overrides)


def test_table_steps_spread_evenly_and_keep_the_last():
    assert table_steps([100, 200]) == [100, 200]
    assert table_steps(list(range(100, 1100, 100)), 4) == [100, 400, 700, 1000]


def test_dependence_rows_keep_the_last_row_of_a_repeated_step(tmp_path):
    rows = [
        {"step": 100, "loss": 1.0},
        {"step": 100, "character_loss": 0.5, "rise_driving_latents": 0.01, "rise_driving_masks": 0.0},
        {"step": 100, "character_loss": 0.4, "rise_driving_latents": 0.02, "rise_driving_masks": 0.0},
    ]
    path = tmp_path / "metrics.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert dependence_rows(path) == {100: rows[2]}


def test_markdown_shows_rises_per_step_and_the_final_loss():
    def row(step, latents, masks, loss):
        return {str(step): {"rise_driving_latents": latents, "rise_driving_masks": masks, "character_loss": loss}}

    results = {
        "variants": {
            "baseline": {"overrides": [], "dependence": {**row(100, 0.01, 0.002, 0.5), **row(200, 0.02, 0.0, 0.4)}},
            "short": {"overrides": ["flow.shift=5.0"], "dependence": row(100, 0.125, -0.01, 0.45)},
        }
    }
    results["variants"]["baseline"]["seconds_per_step"] = 0.5
    table = markdown(results).splitlines()
    assert table[0] == "| variant | overrides | step 100 | step 200 | character loss | s/step |"
    assert table[2] == "| baseline | (none) | +1.0% / +0.2% | +2.0% / +0.0% | 0.4000 | 0.50 |"
    assert table[3] == "| short | `flow.shift=5.0` | +12.5% / -1.0% | - | 0.4500 | - |"
    assert markdown({}) == "(no variant finished yet)"


def test_profile_table_lists_each_noise_level_of_the_variants_that_have_one():
    rise = {"rise_driving_latents": 0.2, "rise_driving_masks": 0.01, "rise_reference": 0.5, "character_loss": 0.3}
    results = {"variants": {"a": {"by_sigma": {"0.5": rise, "0.98": rise}}, "b": {"dependence": {}}}}
    assert profile_markdown(results).splitlines() == [
        "| variant | sigma 0.5 | sigma 0.98 |",
        "|---|---:|---:|",
        "| a | +20.0% / +1.0% / +50.0% | +20.0% / +1.0% / +50.0% |",
        "",
        "Each cell: rise with the driving latents / the driving masks / the reference latents zeroed.",
    ]
    assert profile_markdown({"variants": {}}) == ""
