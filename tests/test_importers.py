import csv
import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.errors import InputError
from taskexpert.importers import (
    FORMATS,
    import_all_pools,
    import_dataset,
    importer_options,
    parse_mapping,
)
from taskexpert.prompts import infer_answer_kind, is_correct, reasoning_target
from taskexpert.records import load_records

FIXTURES = Path(__file__).parent / "fixtures"


def records_of(fmt, src, **options):
    return list(import_dataset(fmt, src, **options))


def test_gsm8k_answer_rationale_and_output():
    records = records_of("gsm8k", FIXTURES / "gsm8k")
    assert [r.id for r in records] == [f"gsm8k-train-{i:05d}" for i in range(5)]
    first = records[0]
    assert first.answer == "72" and first.source == "gsm8k"
    assert first.rationale.startswith("Natalia sold 48/2 = 24 clips in May.")
    assert all("<<" not in r.rationale and "####" not in r.output for r in records)
    assert first.output == reasoning_target(first) == first.rationale + "\nThe answer is 72."
    assert is_correct(first.output, first.answer, infer_answer_kind(first))
    test = records_of("gsm8k", FIXTURES / "gsm8k", split="test")
    assert len(test) == 3 and test[0].id == "gsm8k-test-00000" and test[0].answer == "18"
    assert records_of("gsm8k", FIXTURES / "gsm8k" / "test.jsonl")[0].id == "gsm8k-test-00000"


def test_arc_lettered_options_and_answer_letter():
    records = records_of("arc-challenge", FIXTURES / "llm-foundry-eval")
    first = records[0]
    assert first.id == "arc_challenge-test-00000" and first.source == "arc_challenge"
    assert first.answer == "C" and first.output == "The answer is C."
    assert first.instruction.startswith("Question: An astronomer observes")
    assert "\nA. Planetary density will decrease.\n" in first.instruction
    assert first.instruction.endswith("\nD. Planetary gravity will become stronger.")
    assert len(first.choices) == 4 and first.choices[2] == "Planetary days will become shorter."
    assert all(infer_answer_kind(r) == "letter" for r in records)
    easy = records_of("arc-easy", FIXTURES / "llm-foundry-eval" / "arc_easy_test.jsonl")
    assert len(easy) == 5 and {r.source for r in easy} == {"arc_easy"}


def test_boolq_yes_no():
    records = records_of("boolq", FIXTURES / "llm-foundry-eval")
    assert [r.answer for r in records] == ["no", "yes", "yes", "yes"]
    assert records[0].id == "boolq-validation-00000" and records[0].source == "boolq"
    assert records[0].choices == ["no", "yes"] and records[0].output == "The answer is no."
    assert (
        records[0].instruction.startswith("Passage: ") and "\nQuestion: " in records[0].instruction
    )


def test_rocket_plain_and_cot():
    plain = records_of("rocket-arc", FIXTURES / "rocket-arc-kshot" / "arc-c_10shot.jsonl")
    assert plain[0].id == "rocket-10shot-00000" and plain[0].source == "rocket/arc_challenge"
    assert plain[0].answer == "A" and plain[0].rationale is None
    assert plain[0].output == "The answer is A."
    assert plain[0].choices == [
        "dry palms",
        "wet palms",
        "palms covered with oil",
        "palms covered with lotion",
    ]
    assert plain[0].instruction == (
        "Question: George wants to warm his hands quickly by rubbing them. Which skin surface "
        "will produce the most heat?\nA. dry palms\nB. wet palms\nC. palms covered with oil\n"
        "D. palms covered with lotion"
    )
    cot = records_of("rocket-arc", FIXTURES / "rocket-arc-kshot")  # folder: cot_50shot default
    assert cot[0].id == "rocket-cot_50shot-00000" and cot[0].instruction == plain[0].instruction
    assert cot[0].rationale.startswith("Rubbing two surfaces together generates heat")
    assert cot[0].output == reasoning_target(cot[0]) and cot[0].output.endswith("The answer is A.")
    numbered = cot[3]  # options labelled 1-4 in the source
    assert numbered.answer == "B" and numbered.choices[1] == "bubbles when acid is placed on it"
    assert "\nB. bubbles when acid is placed on it\n" in numbered.instruction
    assert numbered.rationale.startswith("1. Breaking easily")


def test_flan_cot_all_sources():
    records = records_of("flan-cot", FIXTURES / "flan-v2-cot")
    by_source = {}
    for record in records:
        by_source.setdefault(record.source, []).append(record)
    names = ["aqua", "creak", "ecqa", "gsm8k", "qasc", "sensemaking", "strategyqa"]
    assert sorted(by_source) == [f"flan_cot/{n}" for n in names]
    aqua = by_source["flan_cot/aqua"][0]
    assert aqua.id == "flan_cot-aqua-00000" and aqua.answer == "C"
    assert aqua.instruction.endswith("\nOptions:\n(A) 300\n(B) 992\n(C) 1120\n(D) 552\n(E) 312")
    assert aqua.rationale == "1/7:1/7:1/14 = 2:2:1\n1/5*5600 = 1120\n2240-1120 = 1120"
    assert aqua.output == aqua.rationale + "\nThe answer is C."
    assert [r.answer for r in by_source["flan_cot/qasc"]] == ["D", "H", "F"]
    assert by_source["flan_cot/gsm8k"][0].answer == "72"
    assert by_source["flan_cot/sensemaking"][0].answer == "Sentence A"
    assert by_source["flan_cot/ecqa"][0].answer == "bloody mess"
    assert all("\\n" not in r.instruction + r.output for r in records)
    one = records_of("flan-cot", FIXTURES / "flan-v2-cot" / "creak_train.tsv")
    assert [r.answer for r in one] == ["no", "yes", "no"]


def test_t0_strips_endoftext_and_labels_dataset():
    records = records_of("t0", FIXTURES / "self-instruct")
    assert len(records) == 6
    assert records[0].id == "t0-adversarial_qa_dbert_answer_the_following_q-45"
    assert {r.source for r in records} >= {"t0/imdb", "t0/trec", "t0/xsum"}
    assert all("<|endoftext|>" not in r.output for r in records)
    assert [r.output for r in records if r.source == "t0/trec"] == [""]
    assert all(r.output for r in records if r.source != "t0/trec")


def test_self_instruct_tasks_and_codealpaca():
    seed = records_of("seed-tasks", FIXTURES / "self-instruct")
    assert [r.id for r in seed] == ["seed_task_0-0", "seed_task_1-0", "seed_task_2-0"]
    assert {r.source for r in seed} == {"self_instruct/seed"} and all(r.output for r in seed)
    user = records_of(
        "user-oriented", FIXTURES / "self-instruct" / "user_oriented_instructions.jsonl"
    )
    assert (
        user[0].id == "user_oriented_task_0-0" and user[0].source == "self_instruct/user_oriented"
    )
    assert user[0].input.startswith("If you have any questions about my rate")
    code = records_of("codealpaca", FIXTURES / "codealpaca")
    assert [r.id for r in code] == [f"codealpaca-{i:05d}" for i in range(5)]
    assert code[0].input == "dataList = [3, 9, 3, 5, 7, 9, 5]" and code[0].source == "codealpaca"


def test_import_all_pools_open_pool_only_with_skips_counted():
    kshot = [r.instruction for r in records_of("gsm8k", FIXTURES / "gsm8k")]
    dropped = Counter()
    records = list(import_all_pools(FIXTURES, exclude_instructions=kshot, dropped=dropped))
    sources = Counter(r.source.split("/")[0] for r in records)
    assert sources == {"flan_cot": 21 - 3, "t0": 5, "self_instruct": 6, "codealpaca": 5}
    assert dropped == {"excluded": 3, "empty_output": 1}
    assert not any(r.source in {"gsm8k", "arc_challenge", "boolq"} for r in records)
    assert len({r.id for r in records}) == len(records)


def _rows():
    return [json.loads(line) for line in (FIXTURES / "gsm8k" / "train.jsonl").open()]


def test_generic_mapping_on_jsonl_csv_parquet(tmp_path):
    rows = [{**row, "level": i, "opts": ["a", "b"]} for i, row in enumerate(_rows())]
    table = pa.Table.from_pylist(rows)
    pq.write_table(table, tmp_path / "maths.parquet")
    with open(tmp_path / "maths.jsonl", "w") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    with open(tmp_path / "maths.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["question", "answer", "level", "opts"])
        writer.writeheader()
        writer.writerows({**row, "opts": json.dumps(row["opts"])} for row in rows)
    mapping = {
        "instruction": "question",
        "output": "answer",
        "answer": "level",
        "choices": "opts",
        "difficulty": "level",
    }
    for name in ("maths.jsonl", "maths.csv", "maths.parquet"):
        records = records_of("generic", tmp_path / name, mapping=mapping)
        assert len(records) == 5, name
        first = records[0]
        assert first.id == "maths-00000" and first.source == "maths"
        assert first.instruction == rows[0]["question"] and first.output == rows[0]["answer"]
        assert first.answer == "0" and first.choices == ["a", "b"]
        assert str(first.model_extra["difficulty"]) == "0"
    named = records_of("generic", tmp_path / "maths.jsonl", mapping=mapping, source="mine")
    assert {r.source for r in named} == {"mine"}


def test_generic_reads_canonical_fields_without_mapping(tmp_path):
    path = tmp_path / "canon.jsonl"
    path.write_text(json.dumps({"id": 7, "instruction": "q", "output": "a", "source": "s"}) + "\n")
    (record,) = records_of("generic", path)
    assert record.id == "7" and record.source == "s" and record.output == "a"


MAP = {"instruction": "question", "output": "answer"}


@pytest.mark.parametrize(
    "content, mapping, line, field, message",
    [
        ('{"question": "q", "answer": "a"}\n{"question": "q2"\n', MAP, 2, None, "malformed JSON"),
        (
            '{"question": "q", "answer": "a"}\n{"question": "q2"}\n',
            MAP,
            2,
            "answer",
            "missing column mapped to 'output'",
        ),
        ('{"answer": "a"}\n', {"output": "answer"}, 1, "instruction", "--map instruction="),
        ('{"question": "q", "answer": 3}\n', MAP, 1, "answer", "expected a string"),
        ('{"question": "q", "answer": "a", "id": "x"}\n' * 2, MAP, None, "id", "duplicate id"),
    ],
)
def test_generic_bad_input_names_file_line_field(tmp_path, content, mapping, line, field, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(InputError) as info:
        records_of("generic", path, mapping=mapping)
    assert info.value.line == line and info.value.field == field
    assert message in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize(
    "fmt, name, content, field, message",
    [
        ("gsm8k", "train.jsonl", '{"question": "q", "answer": "2+2=4"}\n', "answer", "####"),
        ("gsm8k", "train.jsonl", '{"answer": "#### 4"}\n', "question", "missing"),
        (
            "arc-easy",
            "arc_easy_test.jsonl",
            '{"query": "q", "choices": ["x"], "gold": 3}\n',
            "gold",
            "index",
        ),
        ("flan-cot", "aqua_train.tsv", "question\t(A)\n", None, "3 tab-separated"),
        (
            "rocket-arc",
            "arc-c_10shot.jsonl",
            '{"instruction": "Q?", "output": "A. x"}\n',
            "instruction",
            "ROCKET",
        ),
        (
            "t0",
            "t0_x.jsonl",
            '{"id": "a", "prompt": "p", "completion": "c"}\n',
            "dataset",
            "missing",
        ),
    ],
)
def test_dataset_bad_input(tmp_path, fmt, name, content, field, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(InputError) as info:
        records_of(fmt, path)
    assert info.value.line == 1 and info.value.field == field and message in str(info.value)


def test_format_and_option_errors_raise_before_iterating(tmp_path):
    with pytest.raises(InputError, match="unknown format 'nope'"):
        import_dataset("nope", tmp_path)
    with pytest.raises(InputError, match="takes split"):
        import_dataset("gsm8k", tmp_path, mapping={"a": "b"})
    assert import_dataset("gsm8k", FIXTURES / "gsm8k", mapping=None) is not None
    assert importer_options("boolq") == ["split"] and importer_options("flan-cot") == []
    assert set(FORMATS) >= {
        "gsm8k",
        "arc-challenge",
        "arc-easy",
        "boolq",
        "rocket-arc",
        "flan-cot",
        "t0",
        "seed-tasks",
        "user-oriented",
        "codealpaca",
        "generic",
    }
    with pytest.raises(InputError, match="FIELD=COLUMN"):
        parse_mapping(["instruction"])
    assert parse_mapping(["instruction=question", "output = answer"]) == {
        "instruction": "question",
        "output": "answer",
    }


def test_unreadable_files(tmp_path):
    with pytest.raises(InputError, match="not found"):
        records_of("codealpaca", tmp_path / "missing.json")
    latin = tmp_path / "aqua_train.tsv"
    latin.write_bytes("caf\xe9\t(A)\tr\n".encode("latin-1"))
    with pytest.raises(InputError, match="not UTF-8"):
        records_of("flan-cot", latin)


runner = CliRunner()


def test_cli_import_writes_records_and_summary(tmp_path):
    out = tmp_path / "out" / "flan.jsonl"
    result = runner.invoke(
        app, ["import", "flan-cot", str(FIXTURES / "flan-v2-cot"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert "wrote 21 records" in result.output and "flan_cot/aqua 3" in result.output
    assert len(load_records(out)) == 21
    out2 = tmp_path / "generic.jsonl"
    args = [
        "import",
        "generic",
        str(FIXTURES / "gsm8k" / "train.jsonl"),
        "--out",
        str(out2),
        "--map",
        "instruction=question",
        "--map",
        "output=answer",
        "--source",
        "gsm",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert {r.source for r in load_records(out2)} == {"gsm"}
    out3 = tmp_path / "t0.jsonl"
    result = runner.invoke(app, ["import", "t0", str(FIXTURES / "self-instruct"), "-o", str(out3)])
    assert result.exit_code == 0 and "1 with an empty output" in result.output


def _bad_inputs(tmp_path):
    good = json.dumps({"question": "q", "answer": "a"})
    malformed = tmp_path / "malformed.jsonl"
    malformed.write_text(good + "\n" + good + "\n{oops\n")
    missing = tmp_path / "missing_field.jsonl"
    missing.write_text(good + "\n" + json.dumps({"question": "q"}) + "\n")
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    return [
        (malformed, ":3", "malformed JSON"),
        (missing, ":2", "missing column mapped to 'output'"),
        (binary, "binary.jsonl", "not UTF-8"),
        (tmp_path / "absent.jsonl", "absent.jsonl", "not found"),
    ]


def test_cli_bad_input_fails_and_leaves_no_output(tmp_path):
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    for src, where, message in _bad_inputs(tmp_path):
        out = out_dir / "records.jsonl"
        args = [
            "import",
            "generic",
            str(src),
            "--out",
            str(out),
            "--map",
            "instruction=question",
            "--map",
            "output=answer",
        ]
        result = runner.invoke(app, args)
        assert result.exit_code != 0, src
        assert isinstance(result.exception, InputError)
        assert where in str(result.exception) and message in str(result.exception)
        assert list(out_dir.iterdir()) == [], "partial output left behind"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_cli_permission_denied(tmp_path):
    src = tmp_path / "locked.jsonl"
    src.write_text('{"instruction": "q", "output": "a"}\n')
    src.chmod(0)
    out = tmp_path / "out.jsonl"
    result = runner.invoke(app, ["import", "generic", str(src), "--out", str(out)])
    assert result.exit_code != 0 and "cannot read" in str(result.exception)
    assert not out.exists()
