"""taskexpert.configs: each adopted verb's options are its config model's fields, --print-config
loads back through --config, the command line overrides the file, and a bad file is one
InputError naming the key and the file."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import typer.main
from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.commands.kcenter import KcenterConfig
from taskexpert.configs import build_config, choices_of, cli_type, flag_of, option_fields
from taskexpert.errors import InputError
from taskexpert.experts.config import ExpertSelectionConfig
from taskexpert.recipes.evaluate import EvaluateVerbConfig
from taskexpert.recipes.select_data import SelectDataConfig
from taskexpert.recipes.select_experts import SelectExpertsConfig

# verb -> (its config model, its data options: plain options, not settings)
ADOPTED = {
    "kcenter": (KcenterConfig, {"embeddings", "k", "out", "initial"}),
    "select-data": (SelectDataConfig, {"pool", "kshot", "budget", "out"}),
    "select-experts": (SelectExpertsConfig, {"base", "bank", "kshot", "out"}),
    "evaluate": (EvaluateVerbConfig, {"base", "test", "out", "adapter", "moe", "routing"}),
}
MACHINERY = {"config_file", "print_config", "quiet"}

# a few settings off their defaults, per verb, as command-line options
OVERRIDES = {
    "kcenter": ["--metric", "cosine", "--seed", "7", "--half"],
    "select-data": ["--mode", "max", "--no-cache", "--batch-size", "8", "--cache", "embcache"],
    "select-experts": (
        "--n 3 --m 5 --perplexity ppl --no-diversity --keep-below-base --max-pair-similarity 0.8"
        " --group-objective coverage --ray-actors 3"
    ).split(),
    "evaluate": ["--kind", "number", "--no-mc", "--batch-size", "4", "--dtype", "bfloat16"],
}

runner = CliRunner()


def params(verb: str) -> dict:
    command = typer.main.get_command(app).commands[verb]
    return {p.name: p for p in command.params}


def invoke(*args) -> str:
    result = runner.invoke(app, [*map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize("verb", ADOPTED)
def test_the_options_are_the_config_fields(verb):
    model, data = ADOPTED[verb]
    options = params(verb)
    fields = option_fields(model)
    assert set(options) == data | set(fields) | MACHINERY
    for name, info in fields.items():
        option = options[name]
        assert option.opts == [flag_of(name, info)], name
        assert not option.required, name
        if info.annotation is bool:  # a plain flag: off by default, it sets the other value
            assert option.is_flag and option.default is False and not option.secondary_opts
            assert isinstance(info.default, bool), name
        else:
            assert option.default == info.default, name
            bare = cli_type(info)
            bare = next((a for a in getattr(bare, "__args__", ()) if a is not type(None)), bare)
            assert option.type_descriptor.annotation is bare, name
        if choices_of(info):
            assert option.metavar == f"[{'|'.join(choices_of(info))}]"
        assert option.help, name


def test_the_fields_keep_the_old_option_names_and_defaults():
    """A sample of the option names and defaults the verbs had before the models."""
    options = params("select-experts")
    assert options["drop_below_base"].opts == ["--keep-below-base"]
    assert options["diversity"].opts == ["--no-diversity"]
    assert options["n"].default == 4 and options["tolerance"].default == 0.1
    assert options["max_pair_similarity"].default == 0.9
    assert params("select-data")["use_cache"].opts == ["--no-cache"]
    assert params("select-data")["cache_dir"].opts == ["--cache"]
    assert params("evaluate")["multiple_choice"].opts == ["--no-mc"]
    assert params("kcenter")["metric"].default == "euclidean"


def test_select_experts_defaults_agree_with_the_group_choice():
    """GroupingConfig reads its defaults from ExpertSelectionConfig, and grouping() maps every
    field, renamed ones included."""
    from taskexpert.experts.grouping import GroupingConfig

    assert ExpertSelectionConfig().grouping() == GroupingConfig()
    changed = ExpertSelectionConfig(n=2, group_objective="coverage", shrink=True).grouping()
    assert (changed.n, changed.objective, changed.shrink) == (2, "coverage", True)
    assert len(dataclasses.fields(GroupingConfig)) == len(dataclasses.asdict(changed))


@pytest.mark.parametrize("verb", ADOPTED)
def test_print_config_loads_back_to_the_same_settings(verb, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model, _ = ADOPTED[verb]
    printed = invoke(verb, *OVERRIDES[verb], "--print-config")
    for name, info in option_fields(model).items():  # each key under its description
        if info.description:
            assert f"\n{name}: " in printed, name
    assert printed.count("# ") > len(option_fields(model))
    path = tmp_path / "settings.yaml"
    path.write_text(printed)
    assert invoke(verb, "--config", path, "--print-config") == printed
    from_file = build_config(model, path)
    assert from_file != model()
    assert invoke(verb, "--config", path, *OVERRIDES[verb], "--print-config") == printed


def test_the_command_line_overrides_the_file(tmp_path):
    path = tmp_path / "select.yaml"
    path.write_text("n: 2\ntolerance: 0.3\ndiversity: true\nray_actors: 1\n")
    printed = invoke("select-experts", "--config", path, "--n", "5", "--no-diversity",
                     "--print-config")  # fmt: skip
    config = build_config(SelectExpertsConfig, _yaml_file(tmp_path, printed))
    assert (config.n, config.tolerance, config.diversity, config.ray_actors) == (5, 0.3, False, 1)
    # a flag that is not given leaves the file's value, even where it differs from the default
    path.write_text("use_cache: false\nmode: max\n")
    printed = invoke("select-data", "--config", path, "--print-config")
    config = build_config(SelectDataConfig, _yaml_file(tmp_path, printed))
    assert (config.use_cache, config.mode) == (False, "max")


def _yaml_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "printed.yaml"
    path.write_text(text)
    return path


def run_main(argv: list, capsys) -> tuple[int, str]:
    from taskexpert.cli import main

    with mock.patch.object(sys, "argv", ["taskexpert", *map(str, argv)]):
        with pytest.raises(SystemExit) as info:
            main()
    return info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "text, field, phrase",
    [
        ("tolerence: 0.2\n", "tolerence", "did you mean 'tolerance'"),
        ("n: four\n", "n", "valid integer"),
        ("perplexity: bits\n", "perplexity", "'rppl' or 'ppl', got 'bits'"),
        ("progress: false\n", "progress", "unknown setting"),  # set by --quiet, not a setting
    ],
)
def test_a_bad_key_names_the_key_and_the_file(text, field, phrase, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, err = run_main(["select-experts", "--config", path, "--print-config"], capsys)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert str(path) in lines[0] and f"field '{field}'" in lines[0] and phrase in lines[0], err
    with pytest.raises(InputError) as info:
        build_config(SelectExpertsConfig, path)
    assert info.value.field == field and Path(info.value.path) == path


@pytest.mark.parametrize(
    "text, phrase", [("- n\n- 3\n", "expected a mapping"), ("n: [1\n", "not valid YAML")]
)
def test_a_file_that_is_no_mapping_names_the_file(text, phrase, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    code, err = run_main(["kcenter", "--config", path, "--print-config"], capsys)
    assert code == 1 and str(path) in err and phrase in err, err


def test_a_bad_command_line_value_names_the_option_not_a_file(tmp_path, capsys):
    path = tmp_path / "ok.yaml"
    path.write_text("n: 2\n")
    code, err = run_main(
        ["select-experts", "--config", path, "--perplexity", "bits", "--print-config"], capsys
    )
    assert code == 1 and "field 'perplexity'" in err and str(path) not in err, err


def test_a_config_file_drives_a_real_run(tmp_path):
    matrix = np.random.default_rng(0).standard_normal((12, 4)).astype(np.float32)
    np.save(tmp_path / "emb.npy", matrix)
    (tmp_path / "kcenter.yaml").write_text("metric: cosine\nseed: 3\nhalf: true\n")
    out = tmp_path / "picks.json"
    invoke("kcenter", "--embeddings", tmp_path / "emb.npy", "--k", "4", "--out", out,
           "--config", tmp_path / "kcenter.yaml", "--seed", "5")  # fmt: skip
    summary = json.loads(out.read_text())
    assert (summary["metric"], summary["seed"], summary["storage"]) == ("cosine", 5, "float16")


def test_python_callers_pass_settings_as_keywords(tmp_path):
    from taskexpert.recipes.select_data import run_select_data

    with pytest.raises(InputError, match="field 'mode'.*got 'nearest'"):
        run_select_data([tmp_path / "pool.jsonl"], tmp_path / "k.jsonl", 1, tmp_path / "o.jsonl",
                        mode="nearest")  # fmt: skip
    with pytest.raises(InputError, match="field 'no-such-setting'"):
        run_select_data([tmp_path / "pool.jsonl"], tmp_path / "k.jsonl", 1, tmp_path / "o.jsonl",
                        no_such_setting=1)  # fmt: skip
