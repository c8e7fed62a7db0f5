"""The README stays true to the code."""

from __future__ import annotations

from tools.metric_reference import README, current_block, render


def test_the_metric_reference_matches_the_catalogue() -> None:
    assert current_block(README.read_text()) == render(), (
        "README.md's metric reference is stale: run python -m tools.metric_reference --write"
    )
