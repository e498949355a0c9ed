"""collect: a real micro run read into ReportData; absent sections are None; the leakage,
routing and DiverseEvol formats other stages write; malformed files name file and field."""

from __future__ import annotations

import json

import pytest

from taskexpert.errors import InputError
from taskexpert.report.collect import collect

from .conftest import LEAKAGE, ROUTING, write_json


def test_a_real_run_fills_every_section_it_has(report_run):
    data = collect(report_run)
    verdict = json.loads((report_run / "verdict.json").read_text())
    assert data.verdict is not None and data.verdict.winner == verdict["winner"]
    assert [m.method for m in data.verdict.methods] == [m["method"] for m in verdict["methods"]]
    for row in data.verdict.methods:
        assert row.low <= row.mean <= row.high

    experts = json.loads((report_run / "stages/select-experts/experts.json").read_text())
    assert data.experts is not None and data.experts.chosen == experts["chosen"]
    rows = {row.name: row for row in data.experts.rows}
    assert set(rows) == set(experts["scores"]) | set(experts.get("rejected", {}))
    for name in experts["chosen"]:
        assert rows[name].chosen and rows[name].reason.startswith("chosen")
        assert rows[name].em == pytest.approx(experts["scores"][name]["em"], abs=1e-9)
    for name in experts.get("rejected", {}):
        assert rows[name].reason.startswith("rejected: ")
    assert data.experts.names == experts["similarity"]["names"]

    summary = json.loads((report_run / "stages/select-data/selected.summary.json").read_text())
    selected = data.selected
    assert selected is not None and selected.count == summary["selected"]
    assert sum(selected.per_source.values()) == selected.count
    assert selected.vendi == pytest.approx(summary["vendi_score"], abs=1e-9)
    assert len(selected.scores) == selected.count
    assert min(selected.scores) == pytest.approx(summary["score"]["min"], abs=1e-4)

    curves = {curve.name: curve for curve in data.curves}
    assert {"moe-seed0", "moe-seed1", "plain_lora-seed0", "kshot_lora-seed1"} <= set(curves)
    for curve in curves.values():  # log_every 1, max_steps 4: one point per step
        assert curve.steps == [1, 2, 3, 4] and len(curve.loss) == 4
    assert len(curves["moe-seed0"].router_entropy) == 4
    assert curves["moe-seed0"].router_max_entropy == pytest.approx(0.693147, abs=1e-6)  # ln 2
    assert not curves["plain_lora-seed0"].router_entropy

    assert data.provenance is not None
    assert {"select-experts", "verdict"} <= {s.name for s in data.provenance.stages}
    assert data.provenance.versions["torch"]
    assert [r.name for r in data.routing] == ["moe-seed0", "moe-seed1"]  # the run's routing.json
    for routing in data.routing:
        assert len(routing.usage) == len(routing.layers) == len(routing.entropy)
        for row in routing.usage:
            assert sum(row) == pytest.approx(1.0, abs=1e-6)
    assert data.diverseevol is None


def test_a_run_with_only_a_manifest_has_every_other_section_absent(report_run, tmp_path):
    (tmp_path / "manifest.json").write_bytes((report_run / "manifest.json").read_bytes())
    data = collect(tmp_path)
    assert data.provenance is not None
    assert data.verdict is data.experts is data.selected is data.leakage is None
    assert data.curves == [] and data.routing == [] and data.diverseevol is None


def test_not_a_run_directory_is_refused(tmp_path):
    with pytest.raises(InputError, match="not a taskexpert run directory"):
        collect(tmp_path)
    with pytest.raises(InputError, match="not a directory"):
        collect(tmp_path / "missing")


def test_leakage_and_routing_in_their_documented_shapes(run_copy):
    write_json(run_copy / "stages/leakage/leakage.json", LEAKAGE)
    write_json(run_copy / "stages/eval/moe-seed0/routing.json", ROUTING)
    write_json(run_copy / "stages/eval/moe-seed1/routing.json", {**ROUTING, "collapsed": True,
               "warning": "one expert takes 90% of the tokens"})  # fmt: skip
    data = collect(run_copy)
    assert data.leakage is not None
    assert data.leakage.counts == LEAKAGE["counts"] and data.leakage.dropped == 2
    assert [e["eval_index"] for e in data.leakage.examples] == [1, 4]
    assert [r.name for r in data.routing] == ["moe-seed0", "moe-seed1"]
    first, second = data.routing
    assert first.usage == ROUTING["usage"] and first.layers == ROUTING["layers"]
    assert first.entropy == pytest.approx(ROUTING["entropy"], abs=1e-9)
    assert not first.collapsed and second.collapsed and "90%" in second.warning


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"usage": [[1.0, 0.0]]}, "usage"),  # one row for two layers
        ({"usage": [[1.0], [1.0]]}, "usage"),  # one column for two experts
        ({"entropy": [0.5]}, "entropy"),
        ({"experts": "expert_mc_add"}, "experts"),
    ],
)
def test_malformed_routing_names_the_file_and_field(run_copy, change, field):
    path = write_json(run_copy / "stages/eval/moe-seed0/routing.json", {**ROUTING, **change})
    with pytest.raises(InputError, match=field) as caught:
        collect(run_copy)
    assert caught.value.path == path and caught.value.field == field


def test_malformed_json_names_file_and_line(run_copy):
    path = run_copy / "stages/leakage/leakage.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('{"checked": {\n  "selected": ,\n}')
    with pytest.raises(InputError, match="not valid JSON") as caught:
        collect(run_copy)
    assert caught.value.path == path and caught.value.line == 2


def test_similarity_to_the_chosen_group_is_the_mean_over_the_other_chosen(tmp_path):
    write_json(tmp_path / "manifest.json", {"format": 1, "stages": {}})
    experts = {
        "chosen": ["a", "b"],
        "scores": {
            name: {"em": 0.5, "rppl": "inf", "ppl": 3.0, "seconds": 0.1} for name in ("a", "b", "c")
        },  # fmt: skip
        "similarity": {
            "method": "delta",
            "names": ["a", "b", "c"],
            "matrix": [[1.0, 0.2, 0.4], [0.2, 1.0, 0.8], [0.4, 0.8, 1.0]],
        },
    }
    write_json(tmp_path / "stages/select-experts/experts.json", experts)
    rows = {row.name: row for row in collect(tmp_path).experts.rows}
    assert rows["a"].similarity_to_chosen == pytest.approx(0.2, abs=1e-12)  # b only
    assert rows["c"].similarity_to_chosen == pytest.approx(0.6, abs=1e-12)  # mean of a and b
    assert rows["a"].rppl == float("inf")
    assert rows["a"].reason == "chosen" and rows["c"].reason == "not chosen"


def test_a_diverseevol_run_directory_has_its_curve(tmp_path):
    rounds = [
        {"round": 0, "size": 20, "vendi": 4.1, "exact_match": 0.2, "seconds": 3.0},
        {"round": 1, "size": 30, "vendi": 5.3, "exact_match": 0.25, "seconds": 3.5},
    ]
    write_json(tmp_path / "curve.json", rounds)
    data = collect(tmp_path)
    assert data.diverseevol == rounds and data.provenance is None and data.verdict is None
    write_json(tmp_path / "curve.json", [{"size": 3}])
    with pytest.raises(InputError, match="integer 'round'"):
        collect(tmp_path)
