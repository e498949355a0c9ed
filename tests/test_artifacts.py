"""artifacts.py: the stage-boundary files, written and read through one model each."""

from __future__ import annotations

import json

import pytest

from taskexpert.artifacts import (
    EvalReport,
    ExpertsDocument,
    ScoreRow,
    SelectionSummary,
    read_experts_document,
)
from taskexpert.errors import InputError

WRITTEN = {
    "chosen": ["e1", "e0"],
    "reason": "chose e1, e0: ...",
    "scores": {
        "base": {
            "em": 0.25,
            "rppl": 3.5,
            "ppl": "inf",
            "seconds": 0.1,
            "decision": "reference: the base model without an adapter",
        },
        "e0": {
            "em": 0.5,
            "rppl": 2.0,
            "ppl": 4.0,
            "seconds": 0.2,
            "rppl_relative": 0.9,
            "quality": 0.5,
            "decision": "chosen: quality 0.500",
        },
        "e1": {"em": 1.0, "rppl": 1.5, "ppl": 3.0, "seconds": 0.2, "quality": 1.0, "decision": "c"},
    },
    "rejected": {"broken": "not a LoRA adapter"},
    "similarity": {"method": "delta", "names": ["e0", "e1"], "matrix": [[1.0, 0.1], [0.1, 1.0]]},
    "group": {
        "search": "exhaustive",
        "mean_quality": 0.75,
        "mean_similarity": 0.1,
        "routed_rppl": None,
    },
    "kshot": {"size": 4, "with_rationale": 4},
    "warnings": [],
    "config": {"n": 2, "objective": "anything: kept as written"},
    "inputs": {"base": "base", "bank": "bank", "kshot": "kshot.jsonl"},
}


def test_a_written_experts_file_round_trips_byte_for_byte():
    document = ExpertsDocument.model_validate(WRITTEN)
    assert json.dumps(document.dump(), indent=2) == json.dumps(WRITTEN, indent=2)


def test_score_rows_keep_the_order_scoring_writes():
    row = {
        "em": 1.0,
        "rppl": "inf",
        "ppl": 2.0,
        "seconds": 0.5,
        "rppl_contrast": 0.7,
        "quality": 0.3,
        "decision": "x",
    }
    assert list(ScoreRow.model_validate(row).model_dump(mode="json")) == list(row)


def test_a_hand_written_file_needs_only_the_chosen_names(tmp_path):
    path = tmp_path / "experts.json"
    path.write_text(json.dumps({"chosen": ["e0"], "bank": "my-bank"}))
    document = read_experts_document(path)
    assert document.chosen == ["e0"] and str(document.bank_path()) == "my-bank"
    assert document.dump() == {"chosen": ["e0"], "bank": "my-bank"}


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"chosen": []}, "chosen", "non-empty list"),
        ({"chosen": ["e0", "e0"]}, "chosen", "chosen twice"),
        ({"inputs": {"bank": 5}}, "inputs.bank", "expected a path"),
        ({"inputs": [1]}, "inputs", "JSON object"),
        ({"scores": {"e0": {**WRITTEN["scores"]["e0"], "em": "high"}}}, "scores.e0.em", "number"),
        ({"scores": {"e0": {**WRITTEN["scores"]["e0"], "rppl": None}}}, "scores.e0.rppl", "inf"),
        ({"scores": {"e0": {"em": 0.5, "rppl": 2, "ppl": 2}}}, "scores.e0.seconds", "missing"),
        (
            {"similarity": {**WRITTEN["similarity"], "matrix": [[1, "x"]]}},
            "similarity.matrix.0.1",
            "number",
        ),
        ({"kshot": {"size": "four", "with_rationale": 4}}, "kshot.size", "integer"),
    ],
)
def test_a_bad_experts_file_names_the_file_and_the_key_path(tmp_path, change, field, words):
    path = tmp_path / "experts.json"
    path.write_text(json.dumps({**WRITTEN, **change}))
    with pytest.raises(InputError) as caught:
        read_experts_document(path)
    assert caught.value.path == path and caught.value.field == field
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("text", "words"),
    [(None, "not found"), ("[1, 2]", "JSON object"), ('{"chosen": [', "malformed JSON")],
)
def test_an_unreadable_experts_file_is_an_input_error(tmp_path, text, words):
    path = tmp_path / "experts.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(InputError, match=words):
        read_experts_document(path)


SUMMARY = {
    "out": "sel.jsonl",
    "pool_files": ["pool.jsonl"],
    "kshot_file": "kshot.jsonl",
    "mode": "centroid",
    "encoder": "static",
    "shortlist_encoder": None,
    "shortlist_size": None,
    "budget": 2,
    "kshot_size": 3,
    "pool_size": 10,
    "excluded_kshot_duplicates": 0,
    "selected": 2,
    "dedup_threshold": 0.9,
    "removed_duplicates": 1,
    "selected_per_source": {"a": 2},
    "pool_per_source": {"a": 6, "b": 4},
    "score": {"max": 0.9, "mean": 0.8, "min": 0.7},
    "vendi_score": None,
    "timings_s": {"embed_kshot_s": 0.1, "total_s": 0.5},
}


def test_the_selection_summary_keeps_nulls_and_leaves_out_what_a_run_did_not_produce():
    # no embedding cache: no `cache` key, not "cache": null; vendi_score null stays null
    assert json.dumps(SelectionSummary.model_validate(SUMMARY).dump()) == json.dumps(SUMMARY)
    cached = {**SUMMARY}
    cached["cache"] = {"dir": "c", "hits": 1, "misses": 2}
    cached["timings_s"] = cached.pop("timings_s")  # the order select-data writes
    assert json.dumps(SelectionSummary.model_validate(cached).dump()) == json.dumps(cached)


def test_an_eval_report_keeps_the_option_scores_of_choice_items():
    report = {
        "exact_match": 0.5,
        "n": 2,
        "correct": 1,
        "model": {"base": "b", "adapter": None, "moe": None},
        "test": "test.jsonl",
        "settings": {
            "max_new_tokens": 8,
            "batch_size": 2,
            "kind": "inferred per record",
            "multiple_choice_style": None,
        },
        "predictions": [
            {
                "id": "0",
                "prediction": None,
                "gold": "4",
                "correct": False,
                "kind": "number",
                "generated": "?",
            },
            {
                "id": "1",
                "prediction": "A",
                "gold": "A",
                "correct": True,
                "kind": "letter",
                "generated": "A",
                "mc_prediction": "A",
                "option_logprobs": [-0.1, -2.0],
            },
        ],
    }
    assert json.dumps(EvalReport.model_validate(report).dump()) == json.dumps(report)
