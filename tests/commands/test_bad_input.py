"""Bad input across every verb, end to end through the console entry point (issue 13).

Each case runs `taskexpert.cli.main` as the console script does and must exit non-zero with
one `error:` line on stderr (at most one more line) that names the file (and the line and
field where there is one), print no traceback, and leave nothing behind: no new file or
directory anywhere under the case's folder, pre-existing outputs untouched, inputs unchanged.

The same cases run as subprocesses with `python tests/commands/test_bad_input.py TABLE.md`,
which writes a markdown table of what each one printed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_world import World, build_world, jsonl, records  # noqa: E402

EM_TEST = ["--max-new-tokens", "4", "--quiet"]
MOE_FAST = ["--max-steps", "2", "--batch-size", "2", "--micro-batch-size", "2", "--quiet"]
DE_SMALL = ["--init", "2", "--per-round", "2", "--rounds", "1", "--epochs", "1"]
DE_SMALL += ["--batch-size", "2", "--max-length", "48", "--lora-r", "2", "--threads", "1"]


# --- the shared world: a tiny base, a bank, records, an unfinished and a finished run ---------


@dataclass
class Setup:
    world: World
    matrix: Path  # (20, 8) float32 embeddings
    pool: Path  # 8 records
    moe_partial: Path  # .moe.partial of a train-moe run interrupted after it started
    de_run: Path  # a finished diverseevol run (--init 2 --per-round 2 --rounds 1)


def build_setup(root: Path) -> Setup:
    from taskexpert.recipes.diverseevol import DiverseEvolConfig, run_diverseevol
    from taskexpert.recipes.train_moe import run_train_moe
    from taskexpert.train import TrainConfig

    world = build_world(root)
    matrix = root / "emb.npy"
    np.save(matrix, np.random.default_rng(0).standard_normal((20, 8)).astype(np.float32))
    # an interrupted train-moe run: its work directory holds the settings it started with
    interrupted = root / "interrupted"
    interrupted.mkdir()
    with mock.patch("taskexpert.train.train", side_effect=KeyboardInterrupt):
        with pytest.raises(KeyboardInterrupt):
            run_train_moe(
                str(world.base), world.experts, world.data, interrupted / "moe", device="cpu",
                max_steps=2, batch_size=2, micro_batch_size=2, progress=False,
            )  # fmt: skip
    moe_partial = interrupted / ".moe.partial"
    assert (moe_partial / "run.json").is_file()
    de_run = root / "de_run"
    run_diverseevol(
        DiverseEvolConfig(
            base=str(world.base), pool=world.data, init=2, per_round=2, rounds=1, lora_r=2,
            train=TrainConfig(epochs=1, lr=2e-4, batch_size=2, max_length=48), threads=1,
            device="cpu", progress=False,
        ),
        de_run,
    )  # fmt: skip
    return Setup(world, matrix, world.data, moe_partial, de_run)


class Env:
    """One case's folder (`tmp`, where every output goes) and helpers to make bad inputs."""

    def __init__(self, setup: Setup, tmp: Path) -> None:
        self.s, self.w, self.tmp = setup, setup.world, tmp

    def file(self, name: str, content: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return path

    def jsonl(self, name: str, rows: list[dict]) -> Path:
        return jsonl(self.tmp / name, rows)

    def npy(self, name: str, array: np.ndarray) -> Path:
        np.save(self.tmp / name, array)
        return self.tmp / name

    def adapter(self, name: str, source: str = "e0") -> Path:
        """A copy of a bank adapter in bank/<name>, to be spoiled by the case."""
        path = self.tmp / "bank" / name
        shutil.copytree(self.w.bank / source, path)
        return path

    def config(self, adapter: Path, **changes) -> Path:
        path = adapter / "adapter_config.json"
        path.write_text(json.dumps(json.loads(path.read_text()) | changes))
        return adapter

    def truncate(self, adapter: Path, keep: float = 0.5) -> Path:
        path = adapter / "adapter_model.safetensors"
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * keep)])
        return adapter

    def truncate_base(self) -> Path:
        path = self.tmp / "cutbase"
        shutil.copytree(self.w.base, path)
        weights = path / "model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
        return path

    def experts(self, content: str | dict) -> Path:
        text = content if isinstance(content, str) else json.dumps(content)
        return self.file("experts.json", text)

    def blocker(self) -> Path:
        """A regular file where the output wants a directory: unwritable even for root."""
        return self.file("blocker", "a file, not a folder\n")


# --- the verbs' command lines --------------------------------------------------------------


def import_(e: Env, src, *extra) -> list:
    return ["import", "generic", src, "--out", e.tmp / "out.jsonl", *extra]


def select_data(e: Env, *extra, pool=None, kshot=None, budget=3, out=None) -> list:
    return [
        "select-data", "--pool", pool or e.s.pool, "--kshot", kshot or e.w.kshot,
        "--budget", budget, "--out", out or e.tmp / "selected.jsonl", "--encoder", "static",
        "--cache", e.tmp / "cache", *extra,
    ]  # fmt: skip


def kcenter(e: Env, *extra, embeddings=None, k=3, out=None) -> list:
    return [
        "kcenter", "--embeddings", embeddings or e.s.matrix, "--k", k,
        "--out", out or e.tmp / "picks.json", *extra,
    ]  # fmt: skip


def select_experts(e: Env, *extra, bank=None, kshot=None, out=None) -> list:
    return [
        "select-experts", "--base", e.w.base, "--bank", bank or e.w.bank,
        "--kshot", kshot or e.w.kshot, "--out", out or e.tmp / "experts.json", "--n", "2",
        "--device", "cpu", "--quiet", *extra,
    ]  # fmt: skip


def train_moe(e: Env, *extra, experts=None, data=None, out=None) -> list:
    return [
        "train-moe", "--base", e.w.base, "--experts", experts or e.w.experts,
        "--data", data or e.w.data, "--out", out or e.tmp / "moe", "--device", "cpu",
        *MOE_FAST, *extra,
    ]  # fmt: skip


def evaluate(e: Env, *extra, base=None, test=None, out=None) -> list:
    return [
        "evaluate", "--base", base or e.w.base, "--test", test or e.w.test,
        "--out", out or e.tmp / "eval.json", "--device", "cpu", *EM_TEST, *extra,
    ]  # fmt: skip


def diverseevol(e: Env, *extra, pool=None, out=None) -> list:
    return [
        "diverseevol", "--base", e.w.base, "--pool", pool or e.s.pool,
        "--out", out or e.tmp / "run", "--device", "cpu", *DE_SMALL, *extra,
    ]  # fmt: skip


def resumed_moe(e: Env, *extra) -> list:
    shutil.copytree(e.s.moe_partial, e.tmp / ".moe.partial")
    return train_moe(e, "--resume", *extra)


def rerun_de(e: Env, *extra) -> list:
    shutil.copytree(e.s.de_run, e.tmp / "run")
    return diverseevol(e, *extra)


def dup_pool(e: Env) -> Path:
    rows = records("p", 5)
    return e.jsonl("pool.jsonl", [*rows, rows[3]])


# --- the cases --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    verb: str
    input: str  # what is wrong, for the table
    argv: Callable[[Env], list]
    blamed: str  # the file (or option) the message must name
    phrase: str  # and what it must say
    code: int = 1


def bad(id, verb, what, argv, blamed, phrase, code=1):
    return pytest.param(Case(id, verb, what, argv, blamed, phrase, code), id=id)


NOT_DIR = "is a file, not a directory"
NO_ANSWER = [{k: v for k, v in r.items() if k != "answer"} for r in records("k", 3)]
NO_RATIONALE = [{k: v for k, v in r.items() if k != "rationale"} for r in records("k", 3)]

# fmt: off
CASES = [
    # import
    bad("import-missing-file", "import", "source file does not exist",
        lambda e: import_(e, e.tmp / "nowhere.jsonl"), "nowhere.jsonl", "not found"),
    bad("import-not-jsonl", "import", "source is plain text, not JSONL",
        lambda e: import_(e, e.file("notes.jsonl", "just some notes\n")), "notes.jsonl:1",
        "malformed JSON"),
    bad("import-directory", "import", "a directory where a file is expected",
        lambda e: import_(e, e.file("folder/x.txt", "x").parent), "folder", "expected a file"),
    bad("import-unknown-format", "import", "unknown FORMAT",
        lambda e: ["import", "nosuch", e.w.data, "--out", e.tmp / "out.jsonl"], "format",
        "unknown format 'nosuch'"),
    bad("import-bad-map", "import", "--map without '='",
        lambda e: import_(e, e.w.data, "--map", "instruction"), "--map", "FIELD=COLUMN"),
    bad("import-missing-field", "import", "a record without 'output'",
        lambda e: import_(e, e.jsonl("rows.jsonl", [{"id": "1", "instruction": "hi"}])),
        "rows.jsonl:1", "output"),
    bad("import-out-is-source", "import", "--out is the source file",
        lambda e: ["import", "generic", e.jsonl("rows.jsonl", records("r", 2)), "--out",
                   e.tmp / "rows.jsonl"], "rows.jsonl", "overwrite the source"),
    bad("import-out-under-file", "import", "--out below a regular file",
        lambda e: ["import", "generic", e.w.data, "--out", e.blocker() / "sub" / "out.jsonl"],
        "blocker", NOT_DIR),
    # select-data
    bad("select-data-duplicate-ids", "select-data", "pool with a duplicate id",
        lambda e: select_data(e, pool=dup_pool(e)), "pool.jsonl:6", "duplicate id 'p-3'"),
    bad("select-data-budget-0", "select-data", "--budget 0",
        lambda e: select_data(e, budget=0), "budget", "at least 1"),
    bad("select-data-budget-negative", "select-data", "--budget -3",
        lambda e: select_data(e, budget=-3), "budget", "at least 1"),
    bad("select-data-budget-over-pool", "select-data", "--budget larger than the pool",
        lambda e: select_data(e, budget=99), "data.jsonl", "exceeds the pool size 8"),
    bad("select-data-bad-mode", "select-data", "--mode nearest",
        lambda e: select_data(e, "--mode", "nearest"), "mode", "'nearest'"),
    bad("select-data-kshot-not-jsonl", "select-data", "K-shot file is a CSV",
        lambda e: select_data(e, kshot=e.file("kshot.jsonl", "id,instruction\n1,hi\n")),
        "kshot.jsonl:1", "malformed JSON"),
    bad("select-data-empty-kshot", "select-data", "empty K-shot file",
        lambda e: select_data(e, kshot=e.file("kshot.jsonl", "")), "kshot.jsonl", "no records"),
    bad("select-data-pool-is-dir", "select-data", "--pool is a directory",
        lambda e: select_data(e, pool=e.w.bank), "bank", "not a regular file"),
    bad("select-data-out-is-dir", "select-data", "--out is an existing directory",
        lambda e: select_data(e, out=e.w.bank), "bank", "directory"),
    bad("select-data-cache-under-file", "select-data", "--cache below a regular file",
        lambda e: select_data(e, "--cache", e.blocker() / "cache"), "blocker/cache", NOT_DIR),
    # kcenter
    bad("kcenter-nan", "kcenter", "embeddings holding NaN",
        lambda e: kcenter(e, embeddings=e.npy("nan.npy", np.full((6, 4), np.nan, np.float32))),
        "nan.npy", "NaN"),
    bad("kcenter-1d", "kcenter", "1-D embeddings",
        lambda e: kcenter(e, embeddings=e.npy("flat.npy", np.zeros(6, np.float32))), "flat.npy",
        "2-D"),
    bad("kcenter-3d", "kcenter", "3-D embeddings",
        lambda e: kcenter(e, embeddings=e.npy("cube.npy", np.zeros((6, 2, 2), np.float32))),
        "cube.npy", "2-D"),
    bad("kcenter-zero-dim", "kcenter", "embeddings of dimension 0",
        lambda e: kcenter(e, embeddings=e.npy("empty.npy", np.zeros((6, 0), np.float32))),
        "empty.npy", "non-empty 2-D"),
    bad("kcenter-truncated", "kcenter", "truncated .npy",
        lambda e: kcenter(e, embeddings=e.file("cut.npy", e.s.matrix.read_bytes()[:300])),
        "cut.npy", "cannot read"),
    bad("kcenter-k-over-pool", "kcenter", "--k larger than the rows",
        lambda e: kcenter(e, k=21), "emb.npy", "exceeds"),
    bad("kcenter-k-negative", "kcenter", "--k -1", lambda e: kcenter(e, k=-1), "k", "non-negative"),
    bad("kcenter-bad-metric", "kcenter", "--metric manhattan",
        lambda e: kcenter(e, "--metric", "manhattan"), "--metric", "euclidean, cosine", code=2),
    bad("kcenter-k-not-int", "kcenter", "--k ten",
        lambda e: kcenter(e, k="ten"), "--k", "integer", code=2),
    bad("kcenter-out-is-dir", "kcenter", "--out is an existing directory",
        lambda e: kcenter(e, out=e.file("picks/keep.txt", "mine").parent), "picks",
        "output path is a directory"),
    # select-experts
    bad("select-experts-kshot-no-answer", "select-experts", "K-shot without 'answer' (EM)",
        lambda e: select_experts(e, kshot=e.jsonl("kshot.jsonl", NO_ANSWER)), "kshot.jsonl:1",
        "answer"),
    bad("select-experts-kshot-no-rationale", "select-experts",
        "K-shot without 'rationale', --rppl-variant contrast",
        lambda e: select_experts(e, "--rppl-variant", "contrast",
                                 kshot=e.jsonl("kshot.jsonl", NO_RATIONALE)),
        "kshot.jsonl", "rationale"),
    bad("select-experts-truncated-safetensors", "select-experts",
        "truncated adapter_model.safetensors (--strict)",
        lambda e: select_experts(e, "--strict", bank=e.truncate(e.adapter("cut")).parent),
        "adapter_model.safetensors", "corrupt"),
    bad("select-experts-only-corrupt-adapter", "select-experts",
        "a bank whose only adapter is corrupted",
        lambda e: select_experts(e, bank=e.truncate(e.adapter("cut")).parent), "bank",
        "no usable adapters"),
    bad("select-experts-bad-perplexity", "select-experts", "--perplexity foo",
        lambda e: select_experts(e, "--perplexity", "foo"), "perplexity", "'rppl' or 'ppl'"),
    bad("select-experts-bank-missing", "select-experts", "--bank does not exist",
        lambda e: select_experts(e, bank=e.tmp / "nobank"), "nobank", "bank not found"),
    bad("select-experts-out-under-file", "select-experts", "--out below a regular file",
        lambda e: select_experts(e, out=e.blocker() / "experts.json"), "blocker",
        NOT_DIR),
    # train-moe
    bad("train-moe-experts-bad-json", "train-moe", "experts.json is not JSON",
        lambda e: train_moe(e, experts=e.experts('{"chosen": ["e0",')), "experts.json",
        "malformed JSON"),
    bad("train-moe-experts-no-chosen", "train-moe", "experts.json without 'chosen'",
        lambda e: train_moe(e, experts=e.experts({"inputs": {"bank": str(e.w.bank)}})),
        "experts.json", "chosen"),
    bad("train-moe-experts-chosen-wrong-type", "train-moe", "'chosen' is a string",
        lambda e: train_moe(e, experts=e.experts({"chosen": "e0", "bank": str(e.w.bank)})),
        "experts.json", "chosen"),
    bad("train-moe-experts-chosen-numbers", "train-moe", "'chosen' holds numbers",
        lambda e: train_moe(e, experts=e.experts({"chosen": [0, 1], "bank": str(e.w.bank)})),
        "experts.json", "adapter name"),
    bad("train-moe-experts-bank-wrong-type", "train-moe", "'inputs.bank' is a number",
        lambda e: train_moe(e, experts=e.experts({"chosen": ["e0"], "inputs": {"bank": 5}})),
        "experts.json", "field 'inputs.bank'"),
    bad("train-moe-experts-unknown-adapter", "train-moe", "experts.json names a missing adapter",
        lambda e: train_moe(e, experts=e.experts({"chosen": ["e0", "ghost"],
                                                  "bank": str(e.w.bank)})),
        "experts.json", "'ghost' is not in the bank"),
    bad("train-moe-truncated-expert", "train-moe", "an expert's safetensors truncated",
        lambda e: train_moe(e, experts=e.experts({
            "chosen": ["cut"], "bank": str(e.truncate(e.adapter("cut")).parent)})),
        "adapter_model.safetensors", "corrupt"),
    bad("train-moe-rank-mismatch", "train-moe", "an expert whose config says r=8, weights r=4",
        lambda e: train_moe(e, experts=e.experts({
            "chosen": ["r8"], "bank": str(e.config(e.adapter("r8"), r=8).parent)})),
        "r8", "rank 4 in the weights but r=8"),
    bad("train-moe-other-base-name", "train-moe", "an expert that fits but names another base",
        lambda e: train_moe(e, experts=e.experts({
            "chosen": ["named"],
            "bank": str(e.config(e.adapter("named"), base_model_name_or_path="org/x-7b").parent),
        })),
        "named", "trained on base model 'org/x-7b'"),
    bad("train-moe-resume-other-settings", "train-moe", "--resume with another --lr",
        lambda e: resumed_moe(e, "--lr", "1e-3"), ".moe.partial", "other settings"),
    bad("train-moe-empty-output", "train-moe", "a data record with an empty output",
        lambda e: train_moe(e, data=e.jsonl("data.jsonl", [
            {"id": "1", "instruction": "Say nothing.", "output": " "}])),
        "data.jsonl", "empty output"),
    bad("train-moe-out-under-file", "train-moe", "--out below a regular file",
        lambda e: train_moe(e, out=e.blocker() / "moe"), "blocker", NOT_DIR),
    # evaluate
    bad("evaluate-empty-test", "evaluate", "empty test file",
        lambda e: evaluate(e, test=e.file("test.jsonl", "\n")), "test.jsonl", "no records"),
    bad("evaluate-foreign-adapter", "evaluate", "adapter trained on another base model",
        lambda e: evaluate(e, "--adapter", e.config(e.adapter("foreign", "foreign"),
                                                   base_model_name_or_path="org/other-7b")),
        "foreign", "org/other-7b"),
    bad("evaluate-other-base-name", "evaluate", "adapter that fits but names another base",
        lambda e: evaluate(e, "--adapter", e.config(e.adapter("named"),
                                                   base_model_name_or_path="org/other-7b")),
        "named", "--allow-other-base"),
    bad("evaluate-rank-mismatch", "evaluate", "adapter with rank_pattern q_proj: 2, weights 4",
        lambda e: evaluate(e, "--adapter", e.config(e.adapter("odd"), rank_pattern={"q_proj": 2})),
        "odd", "rank 4 in the weights but r=2"),
    bad("evaluate-truncated-adapter", "evaluate", "truncated adapter_model.safetensors",
        lambda e: evaluate(e, "--adapter", e.truncate(e.adapter("cut"), keep=0.9)),
        "adapter_model.safetensors", "corrupt"),
    bad("evaluate-no-gold-answer", "evaluate", "test record without a gold answer",
        lambda e: evaluate(e, test=e.jsonl("test.jsonl", [
            {"id": "1", "instruction": "hi", "output": ""}])),
        "test.jsonl", "answer"),
    bad("evaluate-bad-kind", "evaluate", "--kind float",
        lambda e: evaluate(e, "--kind", "float"), "kind", "'float'"),
    bad("evaluate-base-missing", "evaluate", "--base directory does not exist",
        lambda e: evaluate(e, base=e.tmp / "nobase"), "nobase", "not found"),
    bad("evaluate-base-not-a-model", "evaluate", "--base is an empty directory",
        lambda e: evaluate(e, base=e.file("nobase/README", "empty").parent), "nobase",
        "no config.json"),
    bad("evaluate-base-truncated-weights", "evaluate", "--base with a truncated model.safetensors",
        lambda e: evaluate(e, base=e.truncate_base()), "cutbase", "corrupt safetensors"),
    bad("evaluate-moe-bad-config", "evaluate", "hand-edited moe_config.json (version \"2\")",
        lambda e: evaluate(e, "--moe", e.file("moe/moe_config.json",
                                             '{"format_version": "2"}').parent),
        "moe_config.json", "format_version"),
    bad("evaluate-bad-mc-style", "evaluate", "--mc-style letters",
        lambda e: evaluate(e, "--mc-style", "letters"), "mc-style", "'letters'"),
    bad("evaluate-moe-not-mixture", "evaluate", "--moe is an adapter directory",
        lambda e: evaluate(e, "--moe", e.w.bank / "e0"), "e0", "mixture"),
    bad("evaluate-out-under-file", "evaluate", "--out below a regular file",
        lambda e: evaluate(e, out=e.blocker() / "eval.json"), "blocker", NOT_DIR),
    # diverseevol
    bad("diverseevol-rerun-other-settings", "diverseevol", "rerun a run dir with --per-round 1",
        lambda e: rerun_de(e, "--per-round", "1"), "run.json", "different --per-round"),
    bad("diverseevol-bad-strategy", "diverseevol", "--strategy coreset",
        lambda e: diverseevol(e, "--strategy", "coreset"), "--strategy", "'coreset'"),
    bad("diverseevol-init-0", "diverseevol", "--init 0",
        lambda e: diverseevol(e, "--init", "0"), "field 'init'", "greater than 0"),
    bad("diverseevol-duplicate-ids", "diverseevol", "pool with a duplicate id",
        lambda e: diverseevol(e, pool=dup_pool(e)), "pool.jsonl:6", "duplicate id"),
    bad("diverseevol-base-missing", "diverseevol", "--base does not exist",
        lambda e: diverseevol(e, "--base", e.tmp / "nobase"), "nobase", "not found"),
    bad("diverseevol-out-is-file", "diverseevol", "--out is an existing file",
        lambda e: diverseevol(e, out=e.file("run", "notes\n")), "run",
        "exists and is not a directory"),
    bad("diverseevol-out-under-file", "diverseevol", "--out below a regular file",
        lambda e: diverseevol(e, out=e.blocker() / "run"), "blocker", NOT_DIR),
    # testbed build
    bad("testbed-bad-preset", "testbed build", "--preset huge",
        lambda e: ["testbed", "build", "--out", e.tmp / "tb", "--preset", "huge"], "preset",
        "unknown preset 'huge'"),
    bad("testbed-out-under-file", "testbed build", "--out below a regular file",
        lambda e: ["testbed", "build", "--out", e.blocker() / "tb"], "blocker/tb",
        "cannot write the testbed here (Not a directory)"),
    bad("testbed-foreign-dir", "testbed build", "--out is a non-empty foreign directory",
        lambda e: ["testbed", "build", "--out", e.file("mine/keep.txt", "mine").parent], "mine",
        "not a testbed build"),
]
# fmt: on


# --- the check ----------------------------------------------------------------------------------


def snapshot(*roots: Path) -> dict[str, str]:
    """Every file and directory under the roots, with a digest of each file's content."""
    seen = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            key = str(path)
            if path.is_symlink() or not path.is_file():
                seen[key] = "dir"
            else:
                seen[key] = hashlib.sha256(path.read_bytes()).hexdigest()
    return seen


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> Setup:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield build_setup(tmp_path_factory.mktemp("bad_input_world"))
    torch.set_num_threads(threads)


def run_main(argv: list, capfd) -> tuple[int, str]:
    """The console script in-process: exit code and stderr."""
    from taskexpert.cli import main

    with mock.patch.object(sys, "argv", ["taskexpert", *map(str, argv)]):
        with pytest.raises(SystemExit) as info:
            main()
    return info.value.code, capfd.readouterr().err


def check(case: Case, code, err: str, before: dict, after: dict) -> None:
    assert code == case.code, err
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), err
    assert len(lines) <= 2, err
    assert case.blamed in lines[0], err
    assert case.phrase in lines[0], err
    assert after == before, sorted(set(after) ^ set(before)) or "a file changed"


@pytest.mark.parametrize("case", CASES)
def test_bad_input(case: Case, setup: Setup, tmp_path, capfd):
    env = Env(setup, tmp_path)
    argv = case.argv(env)
    before = snapshot(tmp_path, setup.world.root)
    capfd.readouterr()
    code, err = run_main(argv, capfd)
    check(case, code, err, before, snapshot(tmp_path, setup.world.root))


def run_console(argv: list) -> subprocess.CompletedProcess:
    """The entry point in a process of its own, as `taskexpert ...` runs it."""
    src = Path(__file__).resolve().parents[2] / "src"
    return subprocess.run(
        [sys.executable, "-c", "from taskexpert.cli import main; main()", *map(str, argv)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(src)},
        timeout=300,
    )


@pytest.mark.parametrize("case", [c for c in CASES if c.id in ("kcenter-nan", "kcenter-k-not-int")])
def test_the_console_script_in_its_own_process(case: Case, setup: Setup, tmp_path):
    env = Env(setup, tmp_path)
    argv = case.argv(env)
    before = snapshot(tmp_path, setup.world.root)
    proc = run_console(argv)
    check(case, proc.returncode, proc.stderr, before, snapshot(tmp_path, setup.world.root))


def test_there_are_at_least_thirty_cases():
    assert len({c.values[0].id for c in CASES}) == len(CASES) >= 30


# --- the table: every case as a subprocess of the console entry point ---------------------------


def _table(path: Path) -> None:
    import tempfile
    import time

    root = Path(tempfile.mkdtemp(prefix="bad_input_"))
    setup = build_setup(root / "world")
    rows = [
        "| verb | input | exit code | the message (as printed) | output left? |",
        "|---|---|---|---|---|",
    ]
    failures = 0
    for number, param in enumerate(CASES):
        case = param.values[0]
        tmp = root / f"case{number:02d}"
        tmp.mkdir()
        env = Env(setup, tmp)
        argv = [str(a) for a in case.argv(env)]
        before = snapshot(tmp, setup.world.root)
        began = time.perf_counter()
        proc = run_console(argv)
        after = snapshot(tmp, setup.world.root)
        left = sorted(set(after) ^ set(before))
        changed = [k for k in before if k in after and before[k] != after[k]]
        try:
            check(case, proc.returncode, proc.stderr, before, after)
            verdict = "ok"
        except AssertionError:
            verdict = "FAIL"
            failures += 1
        message = proc.stderr.strip().replace(str(tmp) + "/", "").replace(str(root) + "/", "")
        message = message.replace("|", "\\|").replace("\n", "<br>")
        output = (
            "no"
            if not (left or changed)
            else "YES: " + ", ".join(Path(p).name for p in left + changed)
        )
        rows.append(f"| {case.verb} | {case.input} | {proc.returncode} | `{message}` | {output} |")
        print(
            f"{verdict} {case.id} rc={proc.returncode} {time.perf_counter() - began:.1f}s",
            flush=True,
        )
        if verdict == "FAIL":
            print(proc.stderr[-3000:], flush=True)
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")
    print(f"{len(CASES)} cases, {failures} failed; table in {path}")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    _table(Path(sys.argv[1]))
