"""Every verb's --help renders as plain text: no rich frames, no type shown for flags, no stray
' .' left where a help string ends, and every verb lists --quiet."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from taskexpert.cli import CONFIG_VERBS, TESTBED_VERBS, VERBS, app

runner = CliRunner()
ALL_VERBS = (
    [[verb] for verb in VERBS]
    + [["testbed", verb] for verb in TESTBED_VERBS]
    + [["config", verb] for verb in CONFIG_VERBS]
)


@pytest.mark.parametrize("verb", ALL_VERBS, ids=" ".join)
def test_help_renders_cleanly(verb):
    result = runner.invoke(app, [*verb, "--help"], prog_name="taskexpert", terminal_width=100)
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.startswith(f"Usage: taskexpert {' '.join(verb)} [OPTIONS]"), text
    assert "<bool>" not in text and "╭" not in text
    assert not re.search(r"\s\.(\s|$)", text), text
    assert re.search(r"-q, --quiet\s+No progress bars", text)


def test_top_level_help_lists_every_verb():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for verb in [*VERBS, "testbed", "config"]:
        assert re.search(rf"^\s+{verb}\s", result.output, re.MULTILINE), verb
