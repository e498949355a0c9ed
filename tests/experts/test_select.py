import json

import pytest
from expert_helpers import (  # noqa: F401
    make_lora_bank,
    save_random_lora,
    wider_model,
)
from test_scoring import kshot
from typer.testing import CliRunner

from taskexpert.bank import load_bank
from taskexpert.cli import app
from taskexpert.errors import InputError, TaskexpertError
from taskexpert.experts.scoring import BASE_ROW
from taskexpert.experts.select import ExpertSelectionConfig, select_experts
from taskexpert.records import write_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# random-weight adapters: the paper's rule, whose mechanics these tests check (the default
# rule's filters would judge random generations; test_family.py and the testbed test it)
FAST = dict(batch_size=4, max_new_tokens=4, progress=False, rule="paper")


def test_select_experts_explains_every_adapter(tmp_path, tiny_llama, char_tokenizer):
    bank = load_bank(make_lora_bank(tmp_path / "bank", tiny_llama), tiny_llama)
    records = kshot(3)
    records[0].rationale = None
    config = ExpertSelectionConfig(n=2, drop_below_base=False, **FAST)
    selection = select_experts(tiny_llama, char_tokenizer, bank, records, config)
    payload = json.loads(json.dumps(selection.to_json()))
    assert len(payload["chosen"]) == 2 and set(payload["chosen"]) <= {"alpha", "beta", "gamma"}
    assert list(payload["scores"]) == [BASE_ROW, "alpha", "beta", "gamma"]
    for name, row in payload["scores"].items():
        assert {"em", "rppl", "ppl", "seconds", "decision"} <= set(row)
        assert (row["decision"].startswith("chosen")) == (name in payload["chosen"])
    assert payload["similarity"]["names"] == ["alpha", "beta", "gamma"]
    assert payload["reason"].startswith("chose ")
    assert "1 of 3 K-shot records have no rationale" in payload["warnings"][0]
    assert payload["kshot"] == {"size": 3, "with_rationale": 2}
    table = selection.table()
    assert BASE_ROW in table and "RPPL" in table


def test_n_larger_than_the_usable_bank_fails_before_scoring(tmp_path, tiny_llama, char_tokenizer):
    root = make_lora_bank(tmp_path / "bank", tiny_llama)
    save_random_lora(
        wider_model(tiny_llama, 48),
        root / "foreign",
        r=2,
        target_modules=["q_proj"],
    )
    bank = load_bank(root, tiny_llama)
    with pytest.raises(InputError, match=r"N=4 .* only 3 usable adapter\(s\); rejected: foreign"):
        select_experts(tiny_llama, char_tokenizer, bank, kshot(2), ExpertSelectionConfig(**FAST))


@pytest.fixture()
def cli_inputs(tmp_path, tiny_llama, char_tokenizer):
    base = tmp_path / "base"
    tiny_llama.save_pretrained(base)
    char_tokenizer.save_pretrained(base)
    bank = make_lora_bank(tmp_path / "bank", tiny_llama)
    kshot_path = tmp_path / "kshot.jsonl"
    write_records(kshot_path, kshot(3))
    return base, bank, kshot_path


def test_cli_writes_experts_json_and_prints_a_table(tmp_path, cli_inputs):
    base, bank, kshot_path = cli_inputs
    out = tmp_path / "run" / "experts.json"
    args = ["select-experts", "--base", str(base), "--bank", str(bank), "--kshot", str(kshot_path)]
    args += ["--out", str(out), "--n", "2", "--max-new-tokens", "4", "--quiet"]
    args += ["--keep-below-base", "--similarity", "factors"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert len(payload["chosen"]) == 2 and payload["similarity"]["method"] == "factors"
    assert payload["inputs"]["kshot"] == str(kshot_path)
    assert "verdict" in result.output and f"wrote {out}" in result.output


def test_cli_bad_input_leaves_no_experts_json(tmp_path, cli_inputs):
    base, bank, kshot_path = cli_inputs
    out = tmp_path / "experts.json"
    (tmp_path / "empty").mkdir()
    common = ["select-experts", "--base", str(base), "--out", str(out), "--quiet"]
    cases = [
        (["--bank", str(tmp_path / "empty"), "--kshot", str(kshot_path)], "no usable adapters"),
        (["--bank", str(bank), "--kshot", str(kshot_path), "--n", "5"], "N=5"),
        (["--bank", str(bank), "--kshot", str(kshot_path), "--perplexity", "x"], "perplexity"),
    ]
    (bank / "beta" / "adapter_model.safetensors").write_bytes(b"broken")
    cases.append((["--bank", str(bank), "--kshot", str(kshot_path), "--strict"], "adapter 'beta'"))
    for extra, message in cases:
        result = CliRunner().invoke(app, common + extra)
        assert isinstance(result.exception, InputError), result.output
        assert message in str(result.exception)
        assert not out.exists() and not list(tmp_path.glob(".experts.json.*"))


def test_rppl_variant_drives_the_ranking_and_all_variants_can_be_reported(
    tmp_path, tiny_llama, char_tokenizer
):
    bank = load_bank(make_lora_bank(tmp_path / "bank", tiny_llama), tiny_llama)
    config = ExpertSelectionConfig(
        n=1, drop_below_base=False, rppl_variant="contrast", report_variants=True, **FAST
    )
    selection = select_experts(tiny_llama, char_tokenizer, bank, kshot(3), config)
    rows = selection.to_json()["scores"]
    assert {"rppl_relative", "rppl_contrast", "rppl_content"} <= set(rows["alpha"])
    assert rows[BASE_ROW]["rppl_relative"] == 1.0
    best = min(bank.names, key=lambda n: (rows[n]["rppl_contrast"], -rows[n]["em"]))
    assert {rows[n]["em"] for n in bank.names} == {0.0}  # random weights: RPPL decides
    assert selection.chosen == [best]


def test_drop_ungrounded_scores_the_contrast_and_filters_by_it(
    tmp_path, tiny_llama, char_tokenizer
):
    from taskexpert.experts.scoring import reasoning_score

    bank = load_bank(make_lora_bank(tmp_path / "bank", tiny_llama), tiny_llama)
    loose = ExpertSelectionConfig(
        n=3, drop_below_base=False, drop_ungrounded=True, grounding_tolerance=1e9, **FAST
    )
    assert "contrast" in loose.scoring().variants  # scored even with the paper's RPPL
    selection = select_experts(tiny_llama, char_tokenizer, bank, kshot(3), loose)
    assert sorted(selection.chosen) == sorted(bank.names)
    contrast = {n: reasoning_score(s, "contrast") for n, s in selection.scores.items()}
    limit = contrast.pop(BASE_ROW)
    grounded = {n for n, c in contrast.items() if c <= limit}
    strict = loose.model_copy(update={"grounding_tolerance": 0.0})
    if not grounded:
        with pytest.raises(TaskexpertError, match="3 less grounded in the question than it"):
            select_experts(tiny_llama, char_tokenizer, bank, kshot(3), strict)
        return
    selection = select_experts(tiny_llama, char_tokenizer, bank, kshot(3), strict)
    assert set(selection.chosen) == grounded
    for name in set(bank.names) - grounded:
        assert "depend on the question less" in selection.group.decisions[name]


def test_coverage_objective_picks_the_group_with_the_lowest_routed_rppl(
    tmp_path, tiny_llama, char_tokenizer
):
    from taskexpert.experts.coverage import TokenTable

    bank = load_bank(make_lora_bank(tmp_path / "bank", tiny_llama), tiny_llama)
    config = ExpertSelectionConfig(n=2, drop_below_base=False, group_objective="coverage", **FAST)
    selection = select_experts(tiny_llama, char_tokenizer, bank, kshot(3), config)
    scores = selection.scores
    table = TokenTable([scores[n].rationale_token_nll for n in bank.names])
    pairs = [[0, 1], [0, 2], [1, 2]]
    best = min(pairs, key=table.routed_perplexity)
    assert sorted(selection.chosen) == sorted(bank.names[i] for i in best)
    payload = selection.to_json()
    assert payload["group"]["routed_rppl"] == pytest.approx(table.routed_perplexity(best), rel=1e-5)
    assert payload["config"]["group_objective"] == "coverage"
    # the per-token NLLs are the ones reasoning perplexity averages
    for name in bank.names:
        means = [sum(x) / len(x) for x in scores[name].rationale_token_nll]
        assert means == pytest.approx(scores[name].rationale_nll, rel=1e-6)


def test_max_kshot_scores_an_evenly_spaced_subset_and_says_so(tmp_path, tiny_llama, char_tokenizer):
    bank = load_bank(make_lora_bank(tmp_path / "bank", tiny_llama), tiny_llama)
    records = kshot(5)
    config = ExpertSelectionConfig(n=2, drop_below_base=False, max_kshot=3, **FAST)
    selection = select_experts(tiny_llama, char_tokenizer, bank, records, config)
    assert selection.kshot_size == 3
    assert "scored on 3 of the K-shot's 5 items (max_kshot)" in selection.warnings
    seen = {len(score.generations) for score in selection.scores.values()}
    assert seen == {3}


def test_cap_kshot_keeps_first_and_last_and_leaves_small_kshots_alone():
    from taskexpert.experts.select import cap_kshot

    records = kshot(7)
    chosen, warnings = cap_kshot(records, 3)
    assert [r.id for r in chosen] == [records[0].id, records[3].id, records[6].id]
    assert warnings
    assert cap_kshot(records, 7) == (records, [])
    assert cap_kshot(records, None) == (records, [])
