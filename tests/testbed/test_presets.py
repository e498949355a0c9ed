"""The presets are valid without building them: `demo` (`make demo`) is a scaled-down
`standard`, and the build verb takes it from an option or a config file."""

import hashlib
import json
import random

from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.recipes.testbed_build import TestbedBuildConfig
from taskexpert.testbed import PRESETS, get_preset
from taskexpert.testbed.families import FAMILIES, held_out_records
from taskexpert.testbed.presets import RECIPE_VERSION, Preset, adapter_config, recipe_id
from taskexpert.testbed.tasks import TARGETS


def test_every_preset_validates_and_has_its_own_recipe_id():
    assert {"micro", "demo", "standard"} <= set(PRESETS)
    for name, preset in PRESETS.items():
        assert preset.name == name
        assert Preset.model_validate(preset.model_dump()) == preset
    assert len({recipe_id(p) for p in PRESETS.values()}) == len(PRESETS)


def test_family_steps_apply_to_that_familys_experts_and_duplicates_only():
    standard = get_preset("standard")
    steps = standard.adapter_family_steps["reverse"]
    assert steps != standard.adapter.max_steps
    assert adapter_config(standard, "expert", ("reverse",)).max_steps == steps
    assert adapter_config(standard, "duplicate", ("reverse",)).max_steps == steps
    default = standard.adapter.max_steps
    assert adapter_config(standard, "expert", ("shift",)).max_steps == default
    assert adapter_config(standard, "mixture", ("reverse", "count")).max_steps == default
    assert adapter_config(standard, "guesser", ("reverse",)).max_steps == default
    micro = get_preset("micro")  # no family steps: every adapter on the preset's recipe
    assert adapter_config(micro, "expert", ("reverse",)).max_steps == micro.adapter.max_steps


def test_the_demo_trains_the_experts_of_its_target_longer():
    """The demo's two-skill target needs both its experts working on the demo's small base;
    the other adapters keep the preset's short recipe (the build time)."""
    from taskexpert.recipes.demo import DEMO_PRESET, DEMO_TARGET

    demo, target = get_preset(DEMO_PRESET), TARGETS[DEMO_TARGET]
    assert target.kind == "two_skill"
    assert set(demo.adapter_family_steps) == set(target.skills)
    for skill in target.skills:
        steps = adapter_config(demo, "expert", (skill,)).max_steps
        assert steps == demo.adapter_family_steps[skill] > demo.adapter.max_steps
    for family in set(FAMILIES) - set(target.skills):
        assert adapter_config(demo, "expert", (family,)).max_steps == demo.adapter.max_steps


def test_presets_without_family_steps_keep_the_recipe_id_of_builds_made_before_them():
    """adapter_family_steps came after builds of every preset; where it is empty it is left
    out of the hash, so those builds are not refused as built by an older recipe."""
    micro = get_preset("micro")
    older = micro.model_dump(mode="json")
    del older["adapter_family_steps"]
    text = json.dumps({"recipe": RECIPE_VERSION, "preset": older})
    assert recipe_id(micro) == hashlib.sha256(text.encode()).hexdigest()[:16]
    stepped = micro.model_copy(update={"adapter_family_steps": {"reverse": 100}})
    assert recipe_id(stepped) != recipe_id(micro)


def test_demo_is_a_scaled_down_standard_that_still_measures_two_skill_targets():
    demo, standard = get_preset("demo"), get_preset("standard")
    assert 30 <= demo.kshot <= 50 and demo.test >= 60
    assert any(t.kind == "two_skill" for t in TARGETS.values())
    assert demo.pretrain.max_steps < standard.pretrain.max_steps
    assert demo.adapter.max_steps < standard.adapter.max_steps
    assert demo.ceiling.max_steps < standard.ceiling.max_steps
    assert demo.pool_family_total < standard.pool_family_total
    # what the evaluation needs: the same generation length (two-skill rationales are long)
    assert demo.max_new_tokens == standard.max_new_tokens
    assert demo.parallel_bank
    # the data phase's calibration draws this many held-out problems of every family
    for family in FAMILIES.values():
        records = held_out_records(family, demo.calibration, random.Random(0), "x")
        assert len(records) == demo.calibration, family.name


def test_the_build_verb_takes_the_demo_preset_from_an_option_or_a_file(tmp_path):
    assert TestbedBuildConfig(preset="demo").preset == "demo"
    out = tmp_path / "tb"
    shown = CliRunner().invoke(
        app, ["testbed", "build", "--out", str(out), "--preset", "demo", "--print-config"]
    )
    assert shown.exit_code == 0, shown.output
    assert "preset: demo" in shown.output
    config = tmp_path / "demo.yaml"
    config.write_text(shown.output)
    again = CliRunner().invoke(
        app, ["testbed", "build", "--out", str(out), "--config", str(config), "--print-config"]
    )
    assert again.exit_code == 0 and "preset: demo" in again.output
    assert not out.exists()  # printing the config builds nothing
