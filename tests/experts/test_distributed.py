"""Ray scale-out of Stage 1: same scores as in-process, adapters streamed, clear errors."""

import json
import shutil
import sys

import pytest
from expert_helpers import memory_adapter
from typer.testing import CliRunner

from taskexpert.bank import SAFETENSORS_FILE, load_bank
from taskexpert.cli import app
from taskexpert.errors import InputError, TaskexpertError
from taskexpert.experts.distributed import (
    AdapterStream,
    base_loader,
    score_bank_distributed,
    shard_items,
)
from taskexpert.experts.scoring import BASE_ROW, ScoringConfig, prepare_kshot
from taskexpert.recipes.select_experts import run_select_experts
from taskexpert.records import load_records

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TARGET = "mc_add_quiz"


@pytest.fixture(scope="module")
def ray_cluster():
    """One small local cluster for the module (2 CPU slots, as this machine has)."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def test_select_experts_with_ray_local_gives_the_in_process_scores_and_choice(
    micro_testbed, ray_cluster, tmp_path
):
    runs = {}
    out = tmp_path / "experts_0.json"
    run_select_experts(
        str(micro_testbed.base_dir),
        micro_testbed.bank_dir,
        micro_testbed.kshot_path(TARGET),
        out,
        device="cpu",
        n=4,
        max_new_tokens=12,
        report_variants=True,
        progress=False,
    )
    runs[0] = json.loads(out.read_text())
    out = tmp_path / "experts_2.json"
    args = [
        "select-experts", "--base", micro_testbed.base_dir, "--bank", micro_testbed.bank_dir,
        "--kshot", micro_testbed.kshot_path(TARGET), "--out", out, "--device", "cpu",
        "--n", 4, "--max-new-tokens", 12, "--report-variants", "--quiet",
        "--ray", "local", "--ray-actors", 2,
    ]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    runs[2] = json.loads(out.read_text())
    local, remote = runs[0]["scores"], runs[2]["scores"]
    assert list(remote) == list(local) and BASE_ROW in remote and len(local) > 10
    for name, row in local.items():
        for key in ("em", "rppl", "ppl", "rppl_contrast", "rppl_content"):
            assert remote[name][key] == pytest.approx(row[key], rel=1e-5, abs=1e-9), (name, key)
        assert remote[name]["seconds"] > 0
    assert runs[2]["chosen"] == runs[0]["chosen"]
    assert runs[2]["rejected"] == runs[0]["rejected"]


def test_a_corrupt_adapter_read_by_a_worker_is_reported_by_name(
    micro_testbed, ray_cluster, tmp_path
):
    names = micro_testbed.adapter_names("expert")[:2]
    for name in names:
        shutil.copytree(micro_testbed.adapter_dir(name), tmp_path / "bank" / name)
    load = base_loader(micro_testbed.base_dir, device="cpu")
    model, tokenizer = load()
    bank = load_bank(tmp_path / "bank", model)
    (tmp_path / "bank" / names[1] / SAFETENSORS_FILE).write_bytes(b"truncated")
    config = ScoringConfig(max_new_tokens=4)
    task = prepare_kshot(load_records(micro_testbed.kshot_path(TARGET))[:2], tokenizer, config)
    with pytest.raises(InputError, match="corrupt safetensors"):
        score_bank_distributed(load, bank, task, config, workers=1, progress=False)


def test_shards_send_paths_for_safetensors_and_tensors_otherwise(micro_testbed):
    name = micro_testbed.adapter_names("expert")[0]
    bank = load_bank(micro_testbed.adapter_dir(name))
    in_memory = memory_adapter("mem", {"model.layers.0.self_attn.q_proj": (2, 4, 4)})
    items = shard_items({**bank.adapters, "mem": in_memory})
    assert items[0] == (name, str(micro_testbed.adapter_dir(name).resolve()))
    assert items[1] == ("mem", in_memory)
    assert all(source is bank.adapters[name] for _, source in shard_items(bank.adapters, True))
    stream = AdapterStream(items)
    assert BASE_ROW not in stream and len(stream) == 2 and list(stream) == [name, "mem"]
    loaded = stream[name]
    assert loaded.name == name and loaded is not bank.adapters[name]
    assert loaded.modules.keys() == bank.adapters[name].modules.keys()


def test_missing_ray_says_how_to_install_it_before_any_model_loads(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` raise ImportError
    with pytest.raises(TaskexpertError, match=r"pip install 'taskexpert\[ray\]'"):
        run_select_experts(
            str(tmp_path / "no-model"),
            tmp_path / "no-bank",
            tmp_path / "no-kshot.jsonl",
            tmp_path / "experts.json",
            ray="local",
        )
    with pytest.raises(TaskexpertError, match=r"pip install 'taskexpert\[ray\]'"):
        score_bank_distributed(lambda: None, {}, None, workers=1, include_base=False)


def test_worker_counts_are_checked():
    with pytest.raises(InputError, match="at least 1"):
        score_bank_distributed(lambda: None, {}, None, workers=0)
