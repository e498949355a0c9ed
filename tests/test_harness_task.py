"""`taskexpert export-task` and `harness_task`: the task files, the answer regexes held to
taskexpert's own extractor, and bad input."""

from __future__ import annotations

import json

import pytest
import yaml
from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.errors import InputError
from taskexpert.harness_task import (
    INVALID,
    answer_regex,
    export_task,
    extract_like_harness,
)
from taskexpert.prompts import extract_answer
from taskexpert.records import Record

runner = CliRunner()

# Generations on which the exported filters must read what prompts.extract_answer reads.
AGREE = {
    "number": [
        "Counting: x 1, m 2.\nThe answer is 5.",
        "blah 3 and 12.5",
        "The answer is 1,234",
        "no numbers here",
        "#### 42\n",
        "x-5",
        "The answer is thkj 117.",
        "The answer is\n7",
        "3 plus 4 is 7.\nThe answer is 7.\n\n### Instruction:\nmore 9",
    ],
    "letter": [
        "So C.\nThe answer is C.",
        "The answer is (B).",
        "A and B",
        "Answer: the answer is D",
        "xyz",
        "I think B and C",
        "The answer is [J]",
        "the answer is: E, surely",
    ],
    "yesno": ["The answer is Yes.", "true story", "nothing", "The answer is false", "No."],
    "text": [
        "The answer is thkj 117.",
        "hello world.\nmore",
        "The answer is  Foo Bar . ",
        "   ",
        "answer is a . .",
        "\n\n  Leading blank lines\nsecond",
    ],
}
# Documented departures (harness_task.EXTRACTOR_DIFFERENCES): (text, kind, taskexpert, here).
DIFFER = [
    ("answer is 3 then answer is 7.", "number", "3", "7"),
    ("#### 4\nThe answer is 5.", "number", "4", "5"),
    ("The answer is", "number", None, INVALID),
]


@pytest.mark.parametrize("kind,text", [(k, t) for k, texts in AGREE.items() for t in texts])
def test_regex_reads_what_taskexpert_reads(kind, text):
    assert extract_like_harness(text, kind) == (extract_answer(text, kind) or INVALID)


@pytest.mark.parametrize("text,kind,ours,theirs", DIFFER)
def test_documented_departures_stay_as_documented(text, kind, ours, theirs):
    """If one of these starts agreeing, update EXTRACTOR_DIFFERENCES and the design doc."""
    assert extract_answer(text, kind) == ours
    assert extract_like_harness(text, kind) == theirs


def test_unknown_kind_is_an_input_error():
    with pytest.raises(InputError, match="unknown answer kind"):
        answer_regex("colour")


def _record(i, answer, **extra):
    return Record(
        id=f"r{i}",
        instruction=f"Question {i}?",
        output=f"Because.\nThe answer is {answer}.",
        answer=answer,
        **extra,
    )


def _jsonl(path, records):
    path.write_text("".join(json.dumps(r.to_dict()) + "\n" for r in records))
    return path


def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_generation_task_files(tmp_path):
    test = [_record(i, str(i * 3)) for i in range(3)]
    shots = [_record(9, "27")]
    summary = export_task(test, tmp_path / "adds", kshot=shots, max_gen_toks=40)
    assert summary == {
        "task": "adds",
        "yaml": str((tmp_path / "adds" / "adds.yaml").resolve()),
        "kind": "generate",
        "answer_kind": "number",
        "n_test": 3,
        "n_fewshot": 1,
    }
    config = yaml.safe_load((tmp_path / "adds" / "adds.yaml").read_text())
    assert config["task"] == "adds" and config["output_type"] == "generate_until"
    assert config["dataset_path"] == "json" and config["num_fewshot"] == 0
    files = config["dataset_kwargs"]["data_files"]
    assert _rows(tmp_path / "adds" / "adds_test.jsonl") == _rows(type(tmp_path)(files["test"]))
    assert config["generation_kwargs"] == {"until": [], "do_sample": False, "max_gen_toks": 40}
    assert config["filter_list"][0]["filter"][0]["regex_pattern"] == answer_regex("number")
    assert config["metric_list"][0]["regexes_to_ignore"] == [","]
    assert config["fewshot_config"]["doc_to_target"] == "output"
    rows = _rows(tmp_path / "adds" / "adds_test.jsonl")
    assert rows[1]["answer"] == "3"
    assert rows[1]["prompt"] == "### Instruction:\nQuestion 1?\n\n### Response:\n"
    assert _rows(tmp_path / "adds" / "adds_fewshot.jsonl")[0]["output"] == shots[0].output


def test_multiple_choice_task_files(tmp_path):
    choices = ["red", "green", "blue"]
    test = [_record(0, "B", choices=choices), _record(1, "blue", choices=choices)]
    export_task(test, tmp_path / "mc", name="colours", mc_style="text")
    config = yaml.safe_load((tmp_path / "mc" / "colours.yaml").read_text())
    assert config["output_type"] == "multiple_choice" and config["doc_to_choice"] == "choices"
    assert "fewshot_split" not in config  # no K-shot given
    rows = _rows(tmp_path / "mc" / "colours_test.jsonl")
    assert [r["gold"] for r in rows] == [1, 2] and rows[0]["choices"] == choices


def test_generate_forced_on_multiple_choice_records(tmp_path):
    test = [_record(0, "B", choices=["x", "y"])]
    summary = export_task(test, tmp_path / "t", task_type="generate")
    assert summary["kind"] == "generate" and summary["answer_kind"] == "letter"


def test_refuses_a_non_empty_directory_without_force(tmp_path):
    out = tmp_path / "t"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(InputError, match="--force"):
        export_task([_record(0, "1")], out)
    export_task([_record(0, "1")], out, force=True)
    assert not (out / "keep.txt").exists() and (out / "t.yaml").is_file()
    export_task([_record(0, "1")], tmp_path / "empty_is_fine")


@pytest.mark.parametrize(
    "records,options,message",
    [
        ([], {}, "no test records"),
        (
            [_record(0, "B", choices=["x", "y"]), _record(1, "A")],
            {"task_type": "multiple-choice"},
            "no choices",
        ),
        ([_record(0, "5"), _record(1, "B")], {}, "several kinds"),
        ([Record(id="x", instruction="q", output="none")], {"kind": "number"}, "no gold answer"),
        ([_record(0, "Z", choices=["x", "y"])], {}, "neither an option letter"),
    ],
)
def test_bad_records(tmp_path, records, options, message):
    with pytest.raises(InputError, match=message):
        export_task(records, tmp_path / "t", **options)
    assert not (tmp_path / "t").exists()


def test_bad_task_name(tmp_path):
    with pytest.raises(InputError, match="letters, digits"):
        export_task([_record(0, "1")], tmp_path / "t", name="no spaces")


def test_cli_names_the_file_with_the_bad_record(tmp_path):
    test = _jsonl(tmp_path / "test.jsonl", [_record(0, "B", choices=["x", "y"])])
    kshot = _jsonl(tmp_path / "kshot.jsonl", [_record(1, "A")])  # no choices
    args = ["export-task", "--test", test, "--kshot", kshot, "--out", tmp_path / "t"]
    result = runner.invoke(app, [str(a) for a in args])
    assert isinstance(result.exception, InputError), result.output
    assert str(kshot) in str(result.exception) and "choices" in str(result.exception)


def test_refuses_to_replace_the_directory_of_its_input(tmp_path):
    (tmp_path / "t").mkdir()
    test = _jsonl(tmp_path / "t" / "test.jsonl", [_record(0, "1")])
    with pytest.raises(InputError, match="holding"):
        export_task([_record(0, "1")], tmp_path / "t", force=True, sources=(test, None))
    assert test.is_file()


def test_cli_empty_test_file(tmp_path):
    test = tmp_path / "test.jsonl"
    test.write_text("")
    result = runner.invoke(app, ["export-task", "--test", str(test), "--out", str(tmp_path / "t")])
    assert isinstance(result.exception, InputError) and "no records" in str(result.exception)


def test_cli_sizes_generation_like_evaluate(micro_testbed, tmp_path):
    """With --base the length is evaluate's default; without, a character bound above it."""
    from taskexpert.evaluate import default_max_new_tokens
    from taskexpert.records import load_records

    target = "count_chat"
    test = micro_testbed.test_path(target)
    lengths = {}
    for label, extra in {"base": ["--base", micro_testbed.base_dir], "chars": []}.items():
        out = tmp_path / label
        args = ["export-task", "--test", test, "--kshot", micro_testbed.kshot_path(target)]
        result = runner.invoke(app, [str(a) for a in [*args, "--out", out, *extra]])
        assert result.exit_code == 0, result.output
        assert f"task {label}: generate (number answers)" in result.output
        config = yaml.safe_load((out / f"{label}.yaml").read_text())
        lengths[label] = config["generation_kwargs"]["max_gen_toks"]
    _, tokenizer = micro_testbed.load_base()
    assert lengths["base"] == default_max_new_tokens(tokenizer, load_records(test))
    assert lengths["chars"] >= lengths["base"]


def _through_lm_eval_filters(text: str, kind: str) -> str:
    """The exported filter pipeline run by lm-eval's own filter classes."""
    import lm_eval.filters  # noqa: F401 - registers the built-in filters
    from lm_eval.api.registry import get_filter

    from taskexpert.harness_task import answer_filters

    responses = [[text]]
    for step in answer_filters(kind):
        kwargs = {k: v for k, v in step.items() if k != "function"}
        responses = list(get_filter(step["function"])(**kwargs).apply(responses, [{}]))
    (found,) = responses  # take_first leaves one string per document
    return found


@pytest.mark.parametrize(
    "kind,text",
    [(k, t) for k, texts in AGREE.items() for t in texts] + [(k, t) for t, k, _, _ in DIFFER],
)
def test_lm_eval_filters_do_what_the_model_of_them_does(kind, text):
    pytest.importorskip("lm_eval", reason="needs the eval extra: pip install 'taskexpert[eval]'")
    found = _through_lm_eval_filters(text, kind)
    if kind == "number":  # the metric's regexes_to_ignore drops commas
        found = found.replace(",", "")
    assert found == extract_like_harness(text, kind)
