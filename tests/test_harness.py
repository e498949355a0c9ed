"""lm-evaluation-harness on the micro testbed: an exported task run in-process by
`taskexpert evaluate --harness` (base, LoRA, mixture) and by the real `lm_eval` CLI, with the
same scores, and lm-eval's exact match equal to taskexpert's own `evaluate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from taskexpert.cli import app
from taskexpert.errors import InputError

pytest.importorskip("lm_eval", reason="needs the eval extra: pip install 'taskexpert[eval]'")
pytestmark = pytest.mark.usefixtures("one_torch_thread", "offline_hub")

runner = CliRunner()
TARGETS = ("count_chat", "mc_add_quiz")  # a generation target and a multiple-choice one
TOLERANCE = 1e-9  # the same documents and model: scores are ratios of equal counts


@pytest.fixture(scope="module")
def offline_env(tmp_path_factory):
    """Nothing from the hub; datasets' cache of the exported JSON in a temp dir."""
    return {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_CACHE": str(tmp_path_factory.mktemp("hf_datasets")),
    }


@pytest.fixture()
def offline_hub(offline_env, monkeypatch):
    for key, value in offline_env.items():
        monkeypatch.setenv(key, value)
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", offline_env["HF_DATASETS_CACHE"])
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)


def invoke(*args):
    result = runner.invoke(app, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def tasks_dir(micro_testbed, tmp_path_factory):
    """Both targets exported with the base's tokenizer (evaluate's generation length)."""
    root = tmp_path_factory.mktemp("lm_eval_tasks")
    for target in TARGETS:
        invoke(
            "export-task",
            "--test",
            micro_testbed.test_path(target),
            "--kshot",
            micro_testbed.kshot_path(target),
            "--base",
            micro_testbed.base_dir,
            "--out",
            root / target,
        )
    return root


def harness_eval(base, tasks_dir, out, *extra):
    args = ["evaluate", "--base", base, "--harness", ",".join(TARGETS), "--include-path"]
    invoke(*args, tasks_dir, "--out", out, "--device", "cpu", "--quiet", *extra)
    return json.loads(out.read_text())


def lm_eval_cli(model_dir, tasks_dir, out, env, tasks=TARGETS) -> dict:
    """The real lm_eval command line, as a user runs it on the exported directory."""
    command = [sys.executable, "-m", "lm_eval", "--model", "hf"]
    command += ["--model_args", f"pretrained={model_dir},dtype=float32"]
    command += ["--include_path", str(tasks_dir), "--tasks", ",".join(tasks)]
    command += ["--device", "cpu", "--limit", "8", "--output_path", str(out)]
    done = subprocess.run(
        command,
        env={**os.environ, **env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (results,) = out.rglob("results_*.json")
    return json.loads(results.read_text())["results"]


@pytest.fixture(scope="module")
def base_report(micro_testbed, tasks_dir, offline_env, tmp_path_factory):
    """`evaluate --harness` on the base (module-wide environment, as the fixture outlives a
    test's monkeypatch)."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in offline_env.items():
            patch.setenv(key, value)
        out = tmp_path_factory.mktemp("base_eval") / "eval.json"
        return harness_eval(micro_testbed.base_dir, tasks_dir, out)


def test_in_process_on_the_base(base_report):
    assert base_report["tasks"] == list(TARGETS) and base_report["model"]["adapter"] is None
    for task in TARGETS:
        assert base_report["scores"][task]["sample_len"] == 6  # the micro test split, whole
    assert 0 <= base_report["scores"]["mc_add_quiz"]["acc,none"] <= 1
    assert base_report["harness"]["results"]["count_chat"]["alias"] == "count_chat"


def test_lm_eval_cli_runs_the_export_unchanged(
    micro_testbed, tasks_dir, base_report, offline_env, tmp_path
):
    """The real lm_eval command line on the exported directory scores as in-process does."""
    cli = lm_eval_cli(micro_testbed.base_dir, tasks_dir, tmp_path / "cli", offline_env)
    metrics = {
        "count_chat": ["exact_match,taskexpert"],
        "mc_add_quiz": ["acc,none", "acc_norm,none"],
    }
    for task, keys in metrics.items():
        for key in keys:
            ours = base_report["scores"][task][key]
            assert ours == pytest.approx(cli[task][key], abs=TOLERANCE), (task, key)


def _lm_eval_against_taskexpert(micro_testbed, tasks_dir, adapter):
    """Option log-likelihoods from lm-eval and from taskexpert, for one model."""
    from taskexpert.evaluate import choice_logprobs
    from taskexpert.harness import run_harness
    from taskexpert.recipes.evaluate import load_for_eval
    from taskexpert.records import load_records

    lora = micro_testbed.adapter_dir(adapter) if adapter else None
    model, tokenizer = load_for_eval(str(micro_testbed.base_dir), lora, None, device="cpu")
    results = run_harness(model, tokenizer, "mc_add_quiz", include_path=tasks_dir, log_samples=True)
    samples = sorted(results["samples"]["mc_add_quiz"], key=lambda s: s["doc_id"])
    theirs = [[r[0][0] for r in s["resps"]] for s in samples]
    records = load_records(micro_testbed.test_path("mc_add_quiz"))
    ours = [[s for s, _ in options] for options in choice_logprobs(model, tokenizer, records)]
    return theirs, ours


def test_lm_eval_scores_the_model_taskexpert_scores(micro_testbed, tasks_dir):
    """Per option, lm-eval's log-likelihood is taskexpert's plus one constant per question
    (lm-eval moves the prompt's trailing newline into the continuation, so it also scores
    that token, the same for every option), for the base and a LoRA; and the LoRA changes
    them, so the adapter really is what lm-eval runs."""
    seen = {}
    for adapter in (None, "expert_mc_add"):
        theirs, ours = _lm_eval_against_taskexpert(micro_testbed, tasks_dir, adapter)
        assert len(theirs) == len(ours) == 6
        for t, o in zip(theirs, ours):
            shifts = [a - b for a, b in zip(t, o)]
            assert max(shifts) - min(shifts) < 1e-3, shifts  # float32 sums of ~40 tokens
            assert max(shifts) < 0
        seen[adapter] = theirs
    changes = [abs(a - b) for x, y in zip(*seen.values()) for a, b in zip(x, y)]
    assert max(changes) > 1e-3


def save_answerer(tokenizer_dir, out, reply: str, after: str = "\n"):
    """A Llama that answers `reply` to every prompt ending in `after`, then stops: one-hot
    embeddings, attention and MLP outputs zeroed, and an LM head mapping each token of the
    chain to the next (every other token to EOS). A real HF directory, so both lm-eval and
    taskexpert load it; its exact match is known in advance."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    chain = tokenizer(after, add_special_tokens=False)["input_ids"][-1:]
    chain += tokenizer(reply, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(set(chain)) == len(chain), "the reply repeats a token"
    vocab = len(tokenizer)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=-(-vocab // 64) * 64,
        intermediate_size=8,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = LlamaForCausalLM(config)
    following = dict.fromkeys(range(vocab), tokenizer.eos_token_id) | dict(zip(chain, chain[1:]))
    with torch.no_grad():
        model.model.embed_tokens.weight.zero_()
        model.model.embed_tokens.weight[:, :vocab] = torch.eye(vocab)
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for token, nxt in following.items():
            model.lm_head.weight[nxt, token] = 1.0
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.parametrize(
    "reply,golds",
    [
        ("The answer is 5.", ["5", "5", "7", "1,2"]),
        ("The answer is Yes.", ["yes", "true", "no", "false"]),
        ("The answer is blue.", ["blue", "Blue.", "red", "green"]),
        ("The answer is C.", ["C", "(C)", "A", "B"]),
    ],
    ids=["number", "yesno", "text", "letter"],
)
def test_exact_match_equals_taskexpert_evaluate(micro_testbed, tmp_path, reply, golds):
    """A model that gives one reply to everything: both score it 2 of 4, for every answer
    kind's filters."""
    model_dir = save_answerer(micro_testbed.base_dir, tmp_path / "answerer", reply)
    rows = [
        {"id": f"q{i}", "instruction": f"Question {i}?", "output": gold, "answer": gold}
        for i, gold in enumerate(golds)
    ]
    test = tmp_path / "test.jsonl"
    test.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "tasks" / "one_reply"
    invoke("export-task", "--test", test, "--base", model_dir, "--out", out)
    args = ["evaluate", "--base", model_dir, "--device", "cpu", "--quiet"]
    invoke(*args, "--test", test, "--out", tmp_path / "own.json")
    invoke(*args, "--harness", "one_reply", "--include-path", out, "--out", tmp_path / "h.json")
    own = json.loads((tmp_path / "own.json").read_text())
    harness = json.loads((tmp_path / "h.json").read_text())["scores"]["one_reply"]
    assert own["correct"] == 2 and own["n"] == 4
    assert harness["exact_match,taskexpert"] == pytest.approx(own["exact_match"], abs=TOLERANCE)


def test_mixture(micro_testbed, tasks_dir, tmp_path):
    """A mixture trained one step on the K-shot runs under lm-eval like the base does
    (`--limit` items per task)."""
    experts = tmp_path / "experts.json"
    chosen = ["expert_count", "expert_add"]
    experts.write_text(
        json.dumps({"chosen": chosen, "inputs": {"bank": str(micro_testbed.bank_dir)}})
    )
    moe = tmp_path / "moe"
    invoke(
        "train-moe",
        "--base",
        micro_testbed.base_dir,
        "--experts",
        experts,
        "--data",
        micro_testbed.kshot_path("count_chat"),
        "--out",
        moe,
        "--max-steps",
        "1",
        "--batch-size",
        "2",
        "--quiet",
    )
    out = tmp_path / "eval.json"
    report = harness_eval(micro_testbed.base_dir, tasks_dir, out, "--moe", moe, "--limit", "2")
    assert report["model"]["moe"] == str(moe) and report["settings"]["limit"] == 2
    assert all(report["scores"][t]["sample_len"] == 2 for t in TARGETS)


def test_without_the_extra_one_clear_error(micro_testbed, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval now raises ImportError
    with pytest.raises(InputError, match=r"pip install 'taskexpert\[eval\]'"):
        invoke(
            "evaluate", "--base", micro_testbed.base_dir, "--harness", "x", "--out", tmp_path / "e"
        )
    assert not (tmp_path / "e").exists()


def test_test_or_harness(micro_testbed, tmp_path):
    base = ["evaluate", "--base", micro_testbed.base_dir, "--out", tmp_path / "e.json"]
    with pytest.raises(InputError, match="--test or --harness"):
        invoke(*base, "--harness", "count_chat", "--test", micro_testbed.test_path("count_chat"))
    with pytest.raises(InputError, match="give --test"):
        invoke(*base)
    with pytest.raises(InputError, match="'kind': applies to --test only"):
        invoke(*base, "--harness", "count_chat", "--kind", "number")
    with pytest.raises(InputError, match="'limit': applies to --harness only"):
        invoke(*base, "--test", micro_testbed.test_path("count_chat"), "--limit", "2")


@pytest.mark.slow  # a task missing from --include-path makes lm-eval index its ~15,000 tasks
def test_unknown_task_fails_before_the_model_loads(micro_testbed, tasks_dir, tmp_path):
    args = ["evaluate", "--base", tmp_path / "no_model_here", "--out", tmp_path / "e.json"]
    with pytest.raises(InputError, match="no task 'nope'"):
        invoke(*args, "--harness", "count_chat,nope", "--include-path", tasks_dir)
