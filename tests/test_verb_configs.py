"""Every verb on `configs.verb_command` has each setting once: one option per field of its
config model, with the field's flag, default and help, and no option beyond its data options,
--config, --print-config and --quiet. Verbs not moved yet are listed in EXEMPT."""

from __future__ import annotations

import pytest
import typer.main
import yaml
from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.configs import Cli, flag_of, option_fields

# verbs still declaring their options in the signature (issue 14 moves them next)
# run: its settings are the whole run config file (recipes/run_config.py), read by its own
# loader; config example only prints one.
EXEMPT = {"demo", "run", "config example", "targets make"}  # targets make: --out and --seed only
# verb -> its data options (what it reads and writes), plain options rather than settings
DATA = {
    "import": {"fmt", "src", "out"},
    "kcenter": {"embeddings", "k", "out", "initial"},
    "select-data": {"pool", "kshot", "budget", "out"},
    "select-experts": {"base", "bank", "kshot", "out"},
    "train-moe": {"base", "experts", "data", "out", "kshot", "bank", "resume"},
    "evaluate": {"base", "test", "out", "adapter", "moe", "routing"},
    "export-task": {"test", "out", "kshot", "base"},
    "diverseevol": {"base", "pool", "out", "eval_path"},
    "testbed build": {"out", "force"},
    "export": {"run_dir", "out"},
    "report": {"run_dir"},
    "bank build": {"out", "data"},
}
MACHINERY = {"config_file", "print_config", "quiet"}


def _verbs() -> dict:
    """Every registered verb's click command, sub-apps' as 'group verb'."""
    found = {}
    for name, command in typer.main.get_command(app).commands.items():
        for sub, leaf in getattr(command, "commands", {}).items():
            found[f"{name} {sub}"] = leaf
        if not hasattr(command, "commands"):
            found[name] = command
    return found


VERBS = _verbs()
runner = CliRunner()


def _model(command):
    return getattr(command.callback, "config_model", None)


def test_every_verb_not_exempt_has_a_config_model():
    assert EXEMPT <= set(VERBS), EXEMPT - set(VERBS)
    missing = sorted(v for v in VERBS if v not in EXEMPT and _model(VERBS[v]) is None)
    assert not missing, f"not on verb_command: {missing}"
    adopted = {v for v in VERBS if _model(VERBS[v]) is not None}
    assert adopted == set(DATA), "DATA must name the data options of every adopted verb"


@pytest.mark.parametrize("verb", sorted(DATA))
def test_each_field_is_one_option_with_its_flag_default_and_help(verb):
    command = VERBS[verb]
    model = _model(command)
    fields = option_fields(model)
    params = {p.name: p for p in command.params}
    assert set(params) == DATA[verb] | set(fields) | MACHINERY
    for name, info in fields.items():
        flag = flag_of(name, info)
        holders = [p for p in command.params if flag in (*p.opts, *p.secondary_opts)]
        assert [p.name for p in holders] == [name], (name, flag)
        option = params[name]
        cli = next((m for m in info.metadata if isinstance(m, Cli)), Cli())
        assert option.help == (cli.help or info.description), name
        assert option.help, name
        if info.annotation is bool and cli.on:  # an --on/--off pair: shows the real default
            assert option.opts == [cli.on] and option.secondary_opts == [flag], name
            assert option.default is info.default is True, name
        elif info.annotation is bool:  # a plain flag: off by default, it sets the other value
            assert option.opts == [flag] and option.default is False, name
        else:
            assert option.opts == [flag] and option.default == info.default, name


def invoke(*args) -> str:
    result = runner.invoke(app, [*map(str, args)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


ROUND_TRIPS = {
    "train-moe": (
        ["--top-k", "3", "--router-init", "kshot", "--lb-coef", "0.01", "--lr", "1e-4"]
        + ["--schedule", "linear", "--allow-pickle", "--device", "cpu", "--shared-rank", "8"],
        {
            "top_k": 3,
            "router_init": "kshot",
            "load_balancing_coef": 0.01,
            "allow_pickle": True,
            "shared_rank": 8,
        },
    ),
    "diverseevol": (
        ["--init", "5", "--continue", "--full", "--lr", "3e-5", "--strategy", "random"]
        + ["--threads", "2", "--embed-layer", "3"],
        {"init": 5, "restart_from_base": False, "lora": False, "lr": 3e-5, "embed_layer": "3"},
    ),
}


@pytest.mark.parametrize("verb", sorted(ROUND_TRIPS))
def test_print_config_round_trips_through_config(verb, tmp_path):
    argv, expected = ROUND_TRIPS[verb]
    printed = invoke(verb, *argv, "--print-config")
    values = yaml.safe_load(printed)
    assert {k: values[k] for k in expected} == expected
    path = tmp_path / "settings.yaml"
    path.write_text(printed)
    assert invoke(verb, "--config", path, "--print-config") == printed
    assert invoke(verb, "--config", path, *argv, "--print-config") == printed


def test_the_old_on_flags_still_override_a_file(tmp_path):
    """--restart-from-base and --lora, the on halves of the old pairs, still work."""
    path = tmp_path / "de.yaml"
    path.write_text("restart_from_base: false\nlora: false\n")
    values = yaml.safe_load(invoke("diverseevol", "--config", path, "--print-config"))
    assert (values["restart_from_base"], values["lora"]) == (False, False)
    argv = ["--config", path, "--restart-from-base", "--lora", "--print-config"]
    values = yaml.safe_load(invoke("diverseevol", *argv))
    assert (values["restart_from_base"], values["lora"]) == (True, True)


def test_diverseevol_settings_become_the_run_config():
    """The recipe folds the flat training knobs into TrainConfig; --full picks its own lr."""
    from taskexpert.recipes.diverseevol import FULL_LR, LORA_LR, DiverseEvolSettings

    config = DiverseEvolSettings(epochs=2, batch_size=4).run_config("smollm2", "pool.jsonl")
    assert (config.train.epochs, config.train.batch_size, config.train.lr) == (2, 4, LORA_LR)
    assert DiverseEvolSettings(lora=False).run_config("b", "p").train.lr == FULL_LR
    assert DiverseEvolSettings(lora=False, lr=1e-3).run_config("b", "p").train.lr == 1e-3
