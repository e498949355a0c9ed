"""`taskexpert run` end to end on the micro testbed: stages, manifest, verdict, winner, reuse,
resume after a change (exactly the dependent stages rerun), and bad input that writes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from taskexpert.errors import InputError
from taskexpert.experts.config import RULES
from taskexpert.majority import majority_answer
from taskexpert.recipes.run import SIMPLER_FIRST, run_method
from taskexpert.recipes.run_config import (
    ADDED_LATER,
    RunConfig,
    default_of,
    dump_run_config,
    keyed_settings,
    load_run_config,
)
from taskexpert.recipes.run_example import TESTBED_TRAIN, example_for_testbed
from taskexpert.records import load_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGET = "mc_add_quiz"
SMALL = {
    "seeds": [0, 1],
    "budget": 24,
    "runtime": {"device": "cpu"},
    # the paper's rule: the micro bank's barely-trained adapters leave one expert under the
    # default rule, and these tests need a mixture of two (the example's dump sets every
    # field, so the rule's settings are spelled out: given settings win over a rule)
    "select_experts": {"n": 2, "max_new_tokens": 12, "rule": "paper", **RULES["paper"]},
    "select_data": {"use_cache": False},
    "train": {"max_steps": 4, "batch_size": 4, "micro_batch_size": 2, "lr": 1e-3},
    "evaluate": {"max_new_tokens": 12},
    "verdict": {"resamples": 200},
}


def micro_config(testbed, **changes) -> RunConfig:
    data = example_for_testbed(testbed.root, TARGET).model_dump(mode="json")
    for key, value in {**SMALL, **changes}.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) else value
    return RunConfig.model_validate(data)


@pytest.fixture(scope="module")
def first_run(micro_testbed, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "run"
    config = micro_config(micro_testbed)
    return config, out, run_method(config, out, progress=False)


def test_every_method_is_scored_and_the_winner_is_written(first_run):
    config, out, result = first_run
    verdict = result.verdict
    assert {m.method for m in verdict.methods} == set(config.methods)
    for score in verdict.methods:
        assert score.low <= score.mean <= score.high
        trained = score.method in ("moe", "plain_lora", "kshot_lora")
        assert len(score.per_seed) == (2 if trained else 1)
    top = max(m.mean for m in verdict.methods)
    tied = {m.method for m in verdict.methods if m.mean == top}
    assert verdict.winner == next(m for m in SIMPLER_FIRST if m in tied)  # ties: the simplest
    assert verdict.comparison is not None and verdict.comparison.method == "moe"
    assert "mixture" in verdict.sentence
    assert json.loads((out / "verdict.json").read_text())["winner"] == verdict.winner
    winner = json.loads((out / "final" / "winner.json").read_text())
    assert winner["method"] == verdict.winner
    # the verdict travels with the winner: its score and why it may not be worth deploying
    row = next(m for m in verdict.methods if m.method == verdict.winner)
    kept = winner["verdict"]
    assert kept["mean"] == row.mean and kept["interval"] == [row.low, row.high]
    assert kept["cautions"] == verdict.cautions
    assert kept["clears_floor"] == (verdict.floor.low > 0.0)
    if verdict.winner == "base":
        assert kept["versus_base"] is None
    else:
        assert kept["versus_base"]["sentence"] == verdict.versus_base.sentence
    loadable = {"peft-lora": "adapter", "taskexpert-moe": "moe", "base-model": None}
    folder = loadable[winner["kind"]]
    if folder:
        assert (out / "final" / folder).is_dir()


def test_the_verdict_shows_the_kshots_commonest_answer_as_a_floor(first_run):
    """mc_add_quiz is multiple choice: the constant pick of the K-shot's commonest option is
    scored on the run's own test items and shown beside the methods, never as the winner."""
    config, out, result = first_run
    split = out / "stages" / "split"
    kshot = load_records(split / "kshot.jsonl")
    floor = majority_answer(kshot, load_records(split / "test.jsonl"), "auto")
    assert floor is not None and floor.counted == len(kshot) and floor.support >= 2
    (row,) = result.verdict.references
    assert row.method == "majority" and row.detail == floor.detail
    assert abs(row.mean - sum(floor.scores) / len(floor.scores)) < 1e-12
    assert result.verdict.winner != "majority"
    assert result.verdict.floor is not None and result.verdict.floor.baseline == "majority"


def test_the_verdict_carries_select_experts_warnings(first_run):
    _, out, result = first_run
    experts = json.loads((out / "stages/select-experts/experts.json").read_text())
    carried = [w for w in result.verdict.warnings if w.startswith("select-experts: ")]
    assert carried == [f"select-experts: {w}" for w in experts["warnings"]]
    assert carried  # the micro bank's rejected adapter is warned about


def test_manifest_records_config_versions_inputs_and_costs(first_run):
    config, out, _ = first_run
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["seeds"] == [0, 1]
    assert manifest["versions"]["torch"] and manifest["versions"]["taskexpert"]
    assert set(manifest["inputs"]) >= {"base", "bank", "kshot", "pool0", "test"}
    stages = manifest["stages"]
    for name in ("split", "select-experts", "select-data", "train/moe-seed1", "eval/base",
                 "eval/plain_lora-seed0", "uniform-merge", "best-adapter", "verdict"):  # fmt: skip
        assert name in stages, name
        assert stages[name]["seconds"] >= 0 and stages[name]["peak_rss_mb"] > 0


def test_mixture_and_plain_lora_train_on_the_same_records(first_run):
    _, out, _ = first_run
    moe = json.loads((out / "stages/train/moe-seed0/model/train_summary.json").read_text())
    lora = json.loads((out / "stages/train/plain_lora-seed0/train_summary.json").read_text())
    kshot = json.loads((out / "stages/train/kshot_lora-seed0/train_summary.json").read_text())
    assert lora["records"] == moe["data"]["total"]
    assert kshot["records"] == moe["data"]["kshot"]


def test_rerun_reuses_every_stage(first_run):
    config, out, result = first_run
    again = run_method(config, out, progress=False)
    assert again.ran == []
    assert again.verdict == result.verdict


def test_resume_after_a_change_reruns_exactly_what_depends_on_it(first_run, micro_testbed):
    _, out, _ = first_run
    changed = micro_config(micro_testbed, lora={"lr": 5e-3})
    manifest = (out / "manifest.json").read_bytes()
    with pytest.raises(InputError, match="another config.*lora.lr.*--resume"):
        run_method(changed, out, progress=False)
    assert (out / "manifest.json").read_bytes() == manifest  # refused: nothing touched
    result = run_method(changed, out, resume=True, progress=False)
    expected = {f"{stage}/{m}-seed{s}" for stage in ("train", "eval")
                for m in ("plain_lora", "kshot_lora") for s in (0, 1)}  # fmt: skip
    assert set(result.ran) == expected | {"verdict"}


def test_a_mixture_setting_reruns_the_mixture_and_not_the_lora_baselines(first_run, tmp_path):
    """The LoRA baselines share the mixture's schedule, not its settings: a new shared-LoRA
    rank retrains the mixture alone (and rescoring follows), the LoRAs are kept."""
    import shutil

    _, out, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".lock"))
    # as last run (other tests resume the first run with their changes)
    config = RunConfig.model_validate(json.loads((copy / "manifest.json").read_text())["config"])
    changed = config.model_copy(
        update={"train": config.train.model_copy(update={"shared_rank": 2})}
    )
    result = run_method(changed, copy, resume=True, progress=False)
    expected = {f"{stage}/moe-seed{s}" for stage in ("train", "eval") for s in (0, 1)}
    from taskexpert.moe.train import MIXTURE_ONLY, MoeTrainConfig

    assert MIXTURE_ONLY <= set(MoeTrainConfig.model_fields)  # a renamed field would slip out
    assert set(result.ran) == expected | {"verdict"}


def test_the_simplest_winner_rule_reruns_only_the_verdict_and_final_follows(first_run, tmp_path):
    import shutil

    _, out, _ = first_run
    copy = tmp_path / "copy"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".lock"))
    config = RunConfig.model_validate(json.loads((copy / "manifest.json").read_text())["config"])
    changed = config.model_copy(
        update={"verdict": config.verdict.model_copy(update={"winner": "simplest"})}
    )
    result = run_method(changed, copy, resume=True, progress=False)
    assert result.ran == ["verdict"]
    verdict = result.verdict
    assert verdict.winner_rule == "simplest"
    order = [m for m in SIMPLER_FIRST if m in changed.methods]
    top = verdict.methods[0].method
    assert order.index(verdict.winner) <= order.index(top)  # never more machinery than the top
    said = "the simplest method within noise of the best" in verdict.sentence
    assert said == (verdict.winner != top)
    winner = json.loads((copy / "final" / "winner.json").read_text())
    assert winner["method"] == verdict.winner
    from taskexpert.commands.run import report

    printed = f"winner ({verdict.winner}, the simplest within noise of the best): {copy / 'final'}"
    assert printed in report(result).splitlines()


def test_a_run_made_before_a_setting_existed_is_reused_while_it_keeps_its_default(
    first_run, tmp_path
):
    """A stored config without a setting added later (run_config.ADDED_LATER) reads as the
    value runs had before it existed: at that value such a run reruns nothing; at another
    (today's shared LoRA, rank 8, against none before) it is refused without --resume."""
    import shutil

    _, out, _ = first_run
    old = tmp_path / "old-run"
    shutil.copytree(out, old, ignore=shutil.ignore_patterns(".lock"))
    manifest = json.loads((old / "manifest.json").read_text())
    config = RunConfig.model_validate(manifest["config"])  # as last run (other tests resume it)
    stored = manifest["config"]
    at_old_value = [
        (section, name)
        for section, values in ADDED_LATER.items()
        for name, value in values.items()
        if stored[section][name] == value
    ]
    assert ("select_experts", "max_kshot") in at_old_value
    assert ("train", "shared_rank") not in at_old_value  # 8 by default now, 0 before
    for section, name in at_old_value:
        del stored[section][name]
    (old / "manifest.json").write_text(json.dumps(manifest))
    assert run_method(config, old, progress=False).ran == []
    del stored["train"]["shared_rank"]  # as if made before the shared LoRA existed
    (old / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(InputError, match=r"another config \(train.shared_rank: 0, now 8\)"):
        run_method(config, old, progress=False)


def test_keyed_settings_leave_out_only_later_settings_at_their_default(first_run):
    config, _, _ = first_run
    dumped = config.train.model_dump(mode="json", exclude={"progress"})
    keyed = keyed_settings("train", config.train, exclude={"progress"})
    assert keyed == {k: v for k, v in dumped.items() if k != "shared_alpha"}  # None, as before
    assert keyed["shared_rank"] == 8  # the default now, and not what older runs had
    none = config.train.model_copy(update={"shared_rank": 0})
    assert "shared_rank" not in keyed_settings("train", none, exclude={"progress"})
    capped = config.select_experts.model_copy(update={"max_kshot": 16})
    assert keyed_settings("select_experts", capped)["max_kshot"] == 16
    assert default_of("train.shared_rank") == 0
    assert default_of("select_experts.max_kshot") is None
    assert default_of("seeds") == [0, 1, 2] and default_of("no_such.key") is None


def test_a_changed_default_never_mistakes_an_older_run_for_a_newer_one():
    """Keys and stored configs compare with the value runs had before a setting existed, not
    with today's default: were the shared LoRA on by default, a run made without it (whose
    key lacks shared_rank) must not pass for one made with it."""
    from taskexpert.moe.train import MoeTrainConfig

    class SharedByDefault(MoeTrainConfig):
        shared_rank: int = 8

    assert "shared_rank" not in keyed_settings("train", SharedByDefault(shared_rank=0))
    assert keyed_settings("train", SharedByDefault())["shared_rank"] == 8
    assert default_of("train.shared_rank") == ADDED_LATER["train"]["shared_rank"] == 0


def test_holdout_split_keeps_scored_items_out_of_selection_and_training(micro_testbed, tmp_path):
    config = micro_config(micro_testbed, methods=["base", "best_adapter"], test=None)
    result = run_method(config, tmp_path / "run", progress=False)
    split = tmp_path / "run" / "stages" / "split"
    learn = {r.id for r in load_records(split / "kshot.jsonl")}
    scored = {r.id for r in load_records(split / "test.jsonl")}
    assert learn and scored and not learn & scored
    assert learn | scored == {r.id for r in load_records(config.kshot)}
    assert result.split == {"source": "held-out K-shot", "kshot": len(learn), "test": len(scored)}
    experts = json.loads((tmp_path / "run/stages/select-experts/experts.json").read_text())
    assert experts["kshot"]["size"] == len(learn)
    assert any("too few" in w for w in result.verdict.warnings)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"kshot": "missing.jsonl"}, "not found"),
        ({"budget": 10**9}, "exceeds the pool size"),
        ({"test": "EMPTY"}, "no records"),
        ({"base": "no-such-model"}, "base model not found"),
    ],
)
def test_bad_input_is_one_clear_error_and_writes_nothing(micro_testbed, tmp_path, change, message):
    if change.get("test") == "EMPTY":
        (tmp_path / "empty.jsonl").write_text("")
        change = {"test": str(tmp_path / "empty.jsonl")}
    data = micro_config(micro_testbed).model_dump(mode="json") | change
    config = RunConfig.model_validate(data).resolved(tmp_path)
    with pytest.raises(InputError, match=message):
        run_method(config, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_unknown_key_names_its_path_and_line(micro_testbed, tmp_path):
    text = dump_run_config(micro_config(micro_testbed)).replace("  top_k:", "  topk:")
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(InputError) as error:
        load_run_config(path)
    assert error.value.field == "train.topk"
    assert "did you mean" in str(error.value) and "top_k" in str(error.value)
    assert error.value.line == text.splitlines().index("  topk: 2") + 1


def test_run_owned_and_runtime_keys_are_refused_in_sections(tmp_path):
    path = tmp_path / "run.yaml"
    base = {"base": "smollm2", "bank": "b", "kshot": "k.jsonl", "pools": ["p"], "budget": 5}
    for section, key, hint in (("train", "seed", "seeds"), ("evaluate", "device", "runtime")):
        path.write_text(yaml.safe_dump({**base, section: {key: 1}}))
        with pytest.raises(InputError, match=hint):
            load_run_config(path)


def test_example_config_round_trips(micro_testbed, tmp_path):
    config = example_for_testbed(micro_testbed.root, TARGET)
    path = tmp_path / "example.yaml"
    path.write_text(dump_run_config(config))
    assert load_run_config(path) == config


def test_example_overrides_are_validated_with_the_rest(micro_testbed):
    """The demo's epochs and a user's seeds go through the config's own validation: a
    repeated seed is one error naming the key, not a run that trains one seed twice."""
    config = example_for_testbed(micro_testbed.root, TARGET, seeds=[3, 4], epochs=7.0)
    assert config.seeds == [3, 4] and config.train.epochs == 7.0
    assert config.train.lr == TESTBED_TRAIN["lr"]  # the rest of the testbed recipe stays
    assert example_for_testbed(micro_testbed.root, TARGET).train.epochs == TESTBED_TRAIN["epochs"]
    with pytest.raises(InputError, match="field 'seeds'"):
        example_for_testbed(micro_testbed.root, TARGET, seeds=[1, 1])


def test_relative_paths_read_from_the_config_folder(tmp_path):
    path = tmp_path / "sub" / "run.yaml"
    path.parent.mkdir()
    path.write_text("base: smollm2\nbank: bank\nkshot: k.jsonl\npools: [p.jsonl]\nbudget: 5\n")
    config = load_run_config(path)
    assert config.base == "smollm2"
    assert config.kshot == (tmp_path / "sub" / "k.jsonl").resolve()
    assert config.pools == [(tmp_path / "sub" / "p.jsonl").resolve()]
    assert isinstance(config.bank, Path)


def test_top_k_above_the_chosen_experts_is_lowered_with_a_warning(micro_testbed, tmp_path, caplog):
    """Selection may keep fewer experts than the config routes to (seen on a 2-adapter real
    bank): the mixture routes to all it has instead of failing after selection."""
    config = micro_config(micro_testbed, methods=["moe"], seeds=[0], train={"top_k": 3})
    with caplog.at_level("WARNING", logger="taskexpert"):
        result = run_method(config, tmp_path / "run", progress=False)
    assert "train/moe-seed0" in result.ran
    assert any("top_k 3 lowered to 2" in r.getMessage() for r in caplog.records)
    saved = next((tmp_path / "run/stages/train/moe-seed0/model").rglob("*config*.json"))
    assert json.loads(saved.read_text())["top_k"] == 2


def test_scores_of_a_run_killed_while_scoring_the_bank_are_kept(
    micro_testbed, tmp_path, monkeypatch
):
    """The select-experts stage builds in a temp dir that is new per attempt; the bank's
    scores live beside it, so the rerun after a crash mid-selection scores nothing again."""
    from taskexpert.experts import select as select_module

    real = select_module.score_bank

    def then_crash(*args, **kwargs):
        real(*args, **kwargs)  # every score stored (on_score), then the process "dies"
        raise RuntimeError("killed after scoring")

    # a fresh run: one that fails after scoring keeps its directory (the scores are the work)
    config = micro_config(micro_testbed, methods=["base", "uniform_merge"], seeds=[0])
    monkeypatch.setattr(select_module, "score_bank", then_crash)
    with pytest.raises(RuntimeError, match="killed after scoring"):
        run_method(config, tmp_path / "run", progress=False)
    assert any((tmp_path / "run/stages/select-experts.scores").iterdir())

    asked: list[list[str]] = []

    def spy(base_model, tokenizer, todo, *args, **kwargs):
        asked.append(sorted(todo))
        return real(base_model, tokenizer, todo, *args, **kwargs)

    monkeypatch.setattr(select_module, "score_bank", spy)
    result = run_method(config, tmp_path / "run", resume=True, progress=False)
    assert asked == []  # the base row and every adapter were found in the kept scores
    assert not (tmp_path / "run/stages/select-experts.scores").exists()  # gone once done
    assert {m.method for m in result.verdict.methods} == {"base", "uniform_merge"}


def test_the_train_section_sets_the_shared_expert(tmp_path):
    """train-moe's --shared-rank is the run config's train.shared_rank (one field, both)."""
    path = tmp_path / "run.yaml"
    base = "base: smollm2\nbank: bank\nkshot: k.jsonl\npools: [p.jsonl]\nbudget: 5\n"
    path.write_text(base + "train:\n  shared_rank: 8\n  shared_alpha: 4\n")
    moe = load_run_config(path).train.moe_config()
    assert (moe.shared_rank, moe.shared_scaling) == (8, 0.5)
    path.write_text(base + "train:\n  shared_rank: -1\n")
    with pytest.raises(InputError) as error:
        load_run_config(path)
    assert error.value.field == "train.shared_rank"
