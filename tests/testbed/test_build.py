import json
import shutil
import time

import pytest
import torch

from taskexpert.errors import InputError
from taskexpert.records import load_records
from taskexpert.testbed import Testbed, build_testbed, is_complete
from taskexpert.testbed.build import PHASES

KINDS = {"expert", "guesser", "duplicate", "mixture", "scaled", "foreign"}


def test_files_and_schema(micro_testbed):
    tb, truth = micro_testbed, micro_testbed.truth
    assert tb.pool_path.is_file() and (tb.base_dir / "model.safetensors").is_file()
    assert set(truth) >= {"targets", "adapters", "baselines", "build", "pool", "calibration"}
    assert len(truth["targets"]) >= 4
    assert sum(t["kind"] == "two_skill" for t in truth["targets"].values()) >= 2
    for name, target in truth["targets"].items():
        assert set(target) >= {"relevant_experts", "relevant_sources", "skills"}
        assert all(a in truth["adapters"] for a in target["relevant_experts"])
        assert all(s in truth["pool"]["sources"] for s in target["relevant_sources"])
        kshot = load_records(tb.kshot_path(name))
        assert all(r.rationale and r.answer for r in kshot)
        test_prompts = {r.instruction for r in load_records(tb.test_path(name))}
        assert not test_prompts & {r.instruction for r in kshot}
        assert set(truth["baselines"][name]) >= {"base", "kshot_lora"} | set(truth["adapters"])
    assert {a["kind"] for a in truth["adapters"].values()} == KINDS
    data = {a["data"] for a in truth["adapters"].values() if a["kind"] == "guesser"}
    assert data == {"answers", "biased", "mimic"}
    for name, adapter in truth["adapters"].items():
        assert (tb.adapter_dir(name) / "adapter_config.json").is_file()
        assert (tb.adapter_dir(name) / "adapter_model.safetensors").is_file()
        assert not (tb.adapter_dir(name) / "adapter_model.bin").exists()
        assert set(adapter["families"]) <= set(truth["families"])
    build = truth["build"]
    assert build["preset"] == "micro" and build["seed"] == 0
    assert set(build["timings"]) == set(PHASES) - {"truth"} and build["sizes"]["pool"] > 0


def test_pool_truth_matches_the_pool(micro_testbed):
    pool = {r.id: r for r in load_records(micro_testbed.pool_path)}
    truth = micro_testbed.truth["pool"]
    assert truth["size"] == len(pool)
    counts = {}
    for record in pool.values():
        counts[record.source] = counts.get(record.source, 0) + 1
    assert counts == truth["sources"]
    assert all(pool[i].source == "noise" for i in truth["noise_ids"])
    for dup, original in truth["near_duplicates"].items():
        assert pool[dup].output == pool[original].output
        assert pool[dup].instruction != pool[original].instruction
    sizes = [counts[f] for f in micro_testbed.truth["families"]]
    assert max(sizes) > 2 * min(sizes)  # unequal family sizes
    held_out = {
        r.instruction
        for t in micro_testbed.targets
        for r in load_records(micro_testbed.test_path(t))
    }
    assert not held_out & {r.instruction for r in pool.values()}


def test_models_load_with_auto_classes_and_peft(micro_testbed):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(micro_testbed.base_dir))
    model = AutoModelForCausalLM.from_pretrained(str(micro_testbed.base_dir))
    assert type(model).__name__ == "LlamaForCausalLM"
    expert = micro_testbed.adapter_names("expert")[0]
    peft = PeftModel.from_pretrained(model, str(micro_testbed.adapter_dir(expert)))
    ids = tokenizer("What is 1 plus 2?", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert peft(input_ids=ids).logits.shape[-1] == len(tokenizer)


def test_foreign_adapter_shapes_do_not_fit(micro_testbed):
    from peft import PeftModel

    model, _ = micro_testbed.load_base()
    (foreign,) = micro_testbed.adapter_names("foreign")
    config = json.loads((micro_testbed.adapter_dir(foreign) / "adapter_config.json").read_text())
    assert (
        config["base_model_name_or_path"] == micro_testbed.truth["adapters"][foreign]["base_model"]
    )
    with pytest.raises(RuntimeError, match="size mismatch"):
        PeftModel.from_pretrained(model, str(micro_testbed.adapter_dir(foreign)))
    assert all(v is None for v in (b[foreign] for b in micro_testbed.truth["baselines"].values()))


def test_cache_hit_returns_at_once(micro_testbed):
    before = (micro_testbed.root / "testbed.json").stat().st_mtime_ns
    began = time.perf_counter()
    again = build_testbed(micro_testbed.root, "micro", 0, progress=False)
    assert time.perf_counter() - began < 2.0
    assert again.truth == micro_testbed.truth
    assert (micro_testbed.root / "testbed.json").stat().st_mtime_ns == before


def test_interrupted_build_is_resumed_not_trusted(micro_testbed, tmp_path):
    root = tmp_path / "tb"
    shutil.copytree(micro_testbed.root, root)
    # an interruption during the last phase: no marker, no testbed.json
    (root / ".steps" / "truth" / "COMPLETE.json").unlink()
    (root / "testbed.json").unlink()
    assert not is_complete(root)
    with pytest.raises(InputError, match="not a finished testbed"):
        Testbed.load(root)
    bank_file = root / "bank" / "expert_add" / "adapter_model.safetensors"
    pool_mtime, bank_mtime = (root / "pool.jsonl").stat().st_mtime_ns, bank_file.stat().st_mtime_ns
    resumed = build_testbed(root, "micro", 0, progress=False)
    assert is_complete(root) and resumed.truth["baselines"] == micro_testbed.truth["baselines"]
    assert (root / "pool.jsonl").stat().st_mtime_ns == pool_mtime
    assert bank_file.stat().st_mtime_ns == bank_mtime


def test_lost_phase_file_reruns_that_phase_and_later_ones(micro_testbed, tmp_path):
    root = tmp_path / "tb"
    shutil.copytree(micro_testbed.root, root)
    kept = root / "bank" / "expert_add" / "adapter_model.safetensors"
    kept_mtime = kept.stat().st_mtime_ns
    shutil.rmtree(root / "bank" / "expert_shift")
    assert not is_complete(root)
    build_testbed(root, "micro", 0, progress=False)
    assert (root / "bank" / "expert_shift" / "adapter_model.safetensors").is_file()
    assert kept.stat().st_mtime_ns == kept_mtime  # finished adapters are kept
    assert is_complete(root, "micro", 0)


def test_an_auto_thread_count_is_asked_again_per_phase_and_recorded(
    micro_testbed, tmp_path, monkeypatch
):
    """Issue 20: a count picked once while the machine was busy kept a quiet machine at one
    thread for the rest of the build; each phase now asks as it starts (and follows the load
    while it runs: tests/test_runtime.py)."""
    import taskexpert.runtime as runtime
    import taskexpert.testbed.build as build

    answers = iter([1, 2])  # the machine goes quiet between the two phases
    used = {}
    monkeypatch.setattr(runtime, "auto_threads", lambda: next(answers))
    marker = tmp_path / "tb" / ".steps" / "baselines" / "COMPLETE.json"
    shutil.copytree(micro_testbed.root, tmp_path / "tb")
    kept = json.loads(marker.read_text())["info"]
    marker.unlink()  # baselines and truth rerun

    def baselines(*_args, **_kwargs):  # its files are still there: only record the threads
        used["baselines"] = torch.get_num_threads()
        return {k: v for k, v in kept.items() if k not in ("seconds", "threads")}

    real_truth = build._phase_truth

    def truth(*args, **kwargs):
        used["truth"] = torch.get_num_threads()
        return real_truth(*args, **kwargs)

    monkeypatch.setattr(build, "_phase_baselines", baselines)
    monkeypatch.setattr(build, "_phase_truth", truth)
    build_testbed(tmp_path / "tb", "micro", 0, progress=False)
    recorded = json.loads((tmp_path / "tb" / "testbed.json").read_text())["build"]
    assert used == {"baselines": 1, "truth": 2}
    assert recorded["phase_threads"] == {**dict.fromkeys(PHASES, 1), "truth": 2}
    assert recorded["threads"] == 2  # the most any phase used


def test_a_given_thread_count_holds_for_every_phase(micro_testbed):
    recorded = micro_testbed.truth["build"]  # built with threads=1 (conftest)
    assert recorded["threads"] == 1 and recorded["phase_threads"] == dict.fromkeys(PHASES, 1)


def test_a_build_by_an_older_recipe_is_not_reused(micro_testbed, tmp_path):
    root = tmp_path / "tb"
    shutil.copytree(micro_testbed.root, root)
    run = json.loads((root / "run.json").read_text())
    run["identity"]["recipe"] = "an-older-recipe"
    (root / "run.json").write_text(json.dumps(run))
    assert not is_complete(root, "micro", 0)
    with pytest.raises(InputError, match="older testbed recipe.*--force"):
        build_testbed(root, "micro", 0, progress=False)


def test_bad_input(micro_testbed, tmp_path):
    with pytest.raises(InputError, match="unknown preset 'huge'"):
        build_testbed(tmp_path / "x", "huge")
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(InputError, match="cannot write"):
        build_testbed(blocker / "sub", "micro", progress=False)
    with pytest.raises(InputError, match="preset 'micro' seed 0"):
        build_testbed(micro_testbed.root, "micro", seed=1, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a testbed build"):
        build_testbed(other, "micro", progress=False)
    assert (other / "notes.txt").read_text() == "mine"


def test_data_files_are_deterministic_per_seed(tmp_path):
    import random

    from taskexpert.testbed.build import base_pretraining_records
    from taskexpert.testbed.pool import build_pool
    from taskexpert.testbed.presets import get_preset

    def pool(seed):
        args = dict(
            family_total=200, relevant_per_target=5, near_duplicate_share=0.1, noise_share=0.1
        )
        return build_pool(random.Random(seed), **args)

    (a, ta), (b, tb), (c, _) = pool(3), pool(3), pool(4)
    assert a == b and ta.to_dict() == tb.to_dict() and a != c
    preset = get_preset("micro")
    assert base_pretraining_records(preset, 1) == base_pretraining_records(preset, 1)


def test_an_older_recipe_is_readable_but_flagged(micro_testbed, tmp_path):
    assert micro_testbed.recipe_current
    copy = tmp_path / "old"
    shutil.copytree(micro_testbed.root, copy)
    run = json.loads((copy / "run.json").read_text())
    run["identity"]["recipe"] = "0" * 16
    (copy / "run.json").write_text(json.dumps(run))
    with pytest.warns(UserWarning, match="older testbed recipe"):
        old = Testbed.load(copy)
    assert not old.recipe_current and old.targets == micro_testbed.targets


def _bank_hashes(root) -> dict[str, str]:
    import hashlib

    files = sorted((root / "bank").glob("*/adapter_model.safetensors"))
    return {f.parent.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def test_worker_processes_train_the_same_bank_as_one_process(micro_testbed, tmp_path):
    """An adapter depends on its spec alone, not on which process trained it or when."""
    from taskexpert.runtime import pinned_threads
    from taskexpert.testbed.build import _phase_bank
    from taskexpert.testbed.presets import get_preset

    root = tmp_path / "tb"
    shutil.copytree(micro_testbed.root, root)
    preset = get_preset("micro")
    with pinned_threads(1, blas=False):  # what each worker runs with
        serial = _phase_bank(root, preset, 0, False, keep_existing=False, workers=1)
    expected = _bank_hashes(root)
    assert len(expected) == len(serial["adapters"]) == len(micro_testbed.truth["adapters"])
    (root / "bank" / "expert_add" / "adapter_model.safetensors").unlink()
    resumed = _phase_bank(root, preset, 0, False, keep_existing=True, workers=2)
    assert set(resumed["adapters"]) == {"expert_add"} and resumed["workers"] == 2
    parallel = _phase_bank(root, preset, 0, False, keep_existing=False, workers=2)
    assert set(parallel["adapters"]) == set(serial["adapters"])
    assert _bank_hashes(root) == expected


def test_the_bank_runs_one_process_per_thread_on_cpu_and_one_on_a_gpu(monkeypatch):
    from taskexpert.testbed.build import bank_workers

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert (bank_workers(3), bank_workers(0)) == (3, 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert bank_workers(3) == 1


def test_a_build_killed_between_phases_or_writes_resumes_cleanly(micro_testbed, tmp_path):
    """What a SIGKILL can leave: the write probe, temp files and directories of atomic
    writes. The probe does not make the directory foreign; temp entries are cleared."""
    from taskexpert.testbed.build_state import refuse_foreign

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".lock").write_text("")
    (fresh / ".write_probe").write_text("")  # killed between writing and removing it
    (fresh / ".build.k1ll.old.tmp").mkdir()  # killed while an earlier start cleared the dir
    refuse_foreign(fresh)  # ours, not foreign

    root = tmp_path / "tb"
    shutil.copytree(micro_testbed.root, root)
    (root / "testbed.json").unlink()  # killed in the last phase
    leftovers = [root / ".base.k1ll.tmp", root / "bank" / ".expert_add.k1ll.old.tmp"]
    for directory in leftovers:
        directory.mkdir()
        (directory / "model.safetensors").write_bytes(b"half")
    (root / ".steps" / "truth" / ".COMPLETE.json.k1ll.tmp").write_text('{"phase": ')
    build_testbed(root, "micro", 0, progress=False)
    assert is_complete(root, "micro", 0)
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_adapters_of_an_older_base_go_when_an_earlier_phase_reruns(
    micro_testbed, tmp_path, monkeypatch
):
    """Killed after the data phase reran but before the bank phase began, a build must not
    resume with the bank trained before: it is cleared when the earlier phase starts."""
    import taskexpert.testbed.build as build

    root = tmp_path / "tb"
    shutil.copytree(micro_testbed.root, root)
    (root / "pool.jsonl").unlink()  # the data phase reruns

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "_phase_bank", killed)
    with pytest.raises(KeyboardInterrupt):
        build_testbed(root, "micro", 0, progress=False)
    assert (root / "pool.jsonl").is_file() and not (root / "bank").exists()
    finished = [p for p in PHASES if (root / ".steps" / p / "COMPLETE.json").is_file()]
    assert finished == ["tokenizer", "base", "data"]
    assert not (root / ".steps" / "bank").exists()  # nor the adapters' markers


def _to_legacy(root) -> None:
    """Rewrite a build into the format before run.json: `.build/state.json` with the
    fingerprint and the phases' records, `.complete` when finished."""
    run = json.loads((root / "run.json").read_text())
    phases = {}
    for phase in PHASES:
        marker = root / ".steps" / phase / "COMPLETE.json"
        if marker.is_file():
            phases[phase] = json.loads(marker.read_text())["info"]
    fingerprint = run["identity"]
    (root / ".build" / "state.json").write_text(
        json.dumps({"fingerprint": fingerprint, "phases": phases})
    )
    if "truth" in phases:
        (root / ".complete").write_text(json.dumps({**fingerprint, "finished": "then"}))
    (root / "run.json").unlink()
    shutil.rmtree(root / ".steps")


def test_a_build_in_the_format_before_run_json_is_migrated_not_rebuilt(micro_testbed, tmp_path):
    root = tmp_path / "tb"
    shutil.copytree(micro_testbed.root, root)
    _to_legacy(root)
    assert Testbed.load(root).recipe_current  # readers take the old format as it is
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    migrated = build_testbed(root, "micro", 0, progress=False)
    assert migrated.truth == micro_testbed.truth and is_complete(root, "micro", 0)
    assert not (root / ".complete").exists() and not (root / ".build" / "state.json").exists()
    assert json.loads((root / "run.json").read_text())["identity"]["preset"] == "micro"
    for path, stamp in stamps.items():  # nothing rebuilt
        if path.exists():
            assert path.stat().st_mtime_ns == stamp, path


def test_a_half_built_legacy_build_resumes_in_the_bank(micro_testbed, tmp_path):
    root = tmp_path / "tb"
    shutil.copytree(micro_testbed.root, root)
    for phase in ("bank", "baselines", "truth"):  # killed in the bank phase
        (root / ".steps" / phase / "COMPLETE.json").unlink()
    (root / "testbed.json").unlink()
    shutil.rmtree(root / "bank" / "expert_shift")
    _to_legacy(root)
    kept = root / "bank" / "expert_add" / "adapter_model.safetensors"
    pool, kept_stamp = (root / "pool.jsonl").stat().st_mtime_ns, kept.stat().st_mtime_ns
    resumed = build_testbed(root, "micro", 0, progress=False)
    assert resumed.truth["baselines"] == micro_testbed.truth["baselines"]
    assert (root / "pool.jsonl").stat().st_mtime_ns == pool  # the data phase was kept
    assert kept.stat().st_mtime_ns == kept_stamp  # and the adapters on disk
    assert (root / "bank" / "expert_shift" / "adapter_model.safetensors").is_file()


def test_a_changed_phase_file_reruns_that_phase(micro_testbed, tmp_path):
    """The markers hold checksums: a file changed after its phase finished is not trusted."""
    root = tmp_path / "tb"
    shutil.copytree(micro_testbed.root, root)
    truth = root / "testbed.json"
    truth.write_text(truth.read_text().replace('"schema_version"', '"schema_version" ', 1))
    assert not is_complete(root, "micro", 0)
    rebuilt = build_testbed(root, "micro", 0, progress=False, threads=1)
    assert is_complete(root, "micro", 0)
    assert {**rebuilt.truth, "build": None} == {**micro_testbed.truth, "build": None}
