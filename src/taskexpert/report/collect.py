"""Read a run directory into one typed `ReportData`: every number the report shows, found once.

Why a separate reading step: the report draws from files that several stages (and helpers)
write, some of them optional (leakage, routing, DiverseEvol). Reading and checking them here,
before anything is drawn, means a malformed file fails with an InputError naming it and the
field, and a section whose files are absent is `None`, which the renderer shows as "not in
this run" rather than failing the whole report.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskexpert.errors import InputError

MANIFEST = "manifest.json"
VERDICT = "verdict.json"
EXPERTS = "stages/select-experts/experts.json"
SELECTED = "stages/select-data/selected.jsonl"
SELECTED_SUMMARY = "stages/select-data/selected.summary.json"
TRAIN_DIR = "stages/train"
EVAL_DIR = "stages/eval"
LEAKAGE = "stages/leakage/leakage.json"
ROUTING = "routing.json"
TRAIN_LOG = "train_log.jsonl"
CURVE = "curve.json"  # DiverseEvol's per-round summaries
DIVERSEEVOL_PLACES = (CURVE, "stages/diverseevol/curve.json", "diverseevol/curve.json")
BASE_ROW = "(base model)"  # experts.scoring.BASE_ROW, not imported: that module loads torch


@dataclass
class MethodRow:
    """One method of the verdict: mean score, interval and per-seed means."""

    method: str
    mean: float
    low: float
    high: float
    per_seed: list[float]
    n_items: int
    detail: str = ""  # a reference row's meaning (verdict.MethodScore.detail)


@dataclass
class VerdictData:
    methods: list[MethodRow]
    winner: str
    sentence: str
    comparison: str | None
    n_items: int
    confidence: float
    warnings: list[str]
    references: list[MethodRow] = field(default_factory=list)  # model-free floors
    cautions: list[str] = field(default_factory=list)  # why the winner may not be worth it


@dataclass
class ExpertRow:
    """One adapter (or the base model's reference row) of experts.json."""

    name: str
    em: float | None
    rppl: float | None
    ppl: float | None
    quality: float | None
    similarity_to_chosen: float | None  # mean similarity to the chosen experts (not itself)
    chosen: bool
    reason: str


@dataclass
class ExpertsData:
    chosen: list[str]
    reason: str
    rows: list[ExpertRow]
    similarity_method: str | None
    names: list[str]
    matrix: list[list[float]]
    group: dict[str, Any]
    warnings: list[str]


@dataclass
class SelectedData:
    """The selected data: where it came from, how diverse, how close to the K-shot."""

    count: int
    budget: int | None
    mode: str | None
    encoder: str | None
    per_source: dict[str, int]
    pool_per_source: dict[str, int]
    pool_size: int | None
    vendi: float | None
    scores: list[float]  # each selected record's similarity to the K-shot (its `score`)
    removed_duplicates: int | None


@dataclass
class Curve:
    """One trained model's loss (and, for a mixture, router entropy) by optimizer step."""

    name: str
    steps: list[int]
    loss: list[float]
    router_entropy: list[float] = field(default_factory=list)
    router_max_entropy: float | None = None


@dataclass
class RoutingData:
    """Router usage of one evaluated mixture (stages/eval/moe-seed<s>/routing.json)."""

    name: str
    experts: list[str]
    layers: list[str]
    usage: list[list[float]]
    entropy: list[float]
    max_entropy: float
    collapsed: bool
    dominant_share: list[float]
    warning: str | None
    tokens: int


@dataclass
class LeakageData:
    checked: dict[str, int]
    counts: dict[str, int]
    dropped: int
    drop: bool
    thresholds: dict[str, float]
    examples: list[dict[str, Any]]


@dataclass
class StageTime:
    name: str
    seconds: float | None
    peak_rss_mb: float | None
    cuda_peak_mb: float | None


@dataclass
class Provenance:
    created: str | None
    updated: str | None
    versions: dict[str, str | None]
    inputs: dict[str, str]
    seeds: list[int]
    stages: list[StageTime]
    config: dict[str, Any]


@dataclass
class ReportData:
    """Everything the report shows; a section is None when its files are not in the run."""

    run_dir: Path
    verdict: VerdictData | None = None
    experts: ExpertsData | None = None
    selected: SelectedData | None = None
    curves: list[Curve] = field(default_factory=list)
    routing: list[RoutingData] = field(default_factory=list)
    leakage: LeakageData | None = None
    diverseevol: list[dict[str, Any]] | None = None
    provenance: Provenance | None = None


def _read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist; unreadable JSON is an InputError."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise InputError(f"not UTF-8 text: {exc}", path) from None
    except json.JSONDecodeError as exc:
        raise InputError(f"not valid JSON: {exc.msg}", path, line=exc.lineno) from None


def _read_jsonl(path: Path) -> list[dict[str, Any]] | None:
    if not path.is_file():
        return None
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"not valid JSON: {exc.msg}", path, line=number) from None
        if not isinstance(row, dict):
            raise InputError("expected a JSON object per line", path, line=number)
        rows.append(row)
    return rows


def _number(value: Any) -> float | None:
    """A score as a float: "inf" (how scoring writes overflow) is inf, anything else None."""
    if value == "inf":
        return math.inf
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def _need(data: Any, key: str, kind: type | tuple, path: Path, where: str = "") -> Any:
    """data[key], checked to be of `kind`; else an InputError naming file and field."""
    name = f"{where}.{key}" if where else key
    if not isinstance(data, dict) or key not in data:
        raise InputError("missing", path, field=name)
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and bool not in _kinds(kind):
        raise InputError(f"expected {_kind_name(kind)}, got {type(value).__name__}", path,
                         field=name)  # fmt: skip
    return value


def _kinds(kind: type | tuple) -> tuple:
    return kind if isinstance(kind, tuple) else (kind,)


def _kind_name(kind: type | tuple) -> str:
    return " or ".join(k.__name__ for k in _kinds(kind))


def read_verdict(run_dir: Path) -> VerdictData | None:
    path = run_dir / VERDICT
    data = _read_json(path)
    if data is None:
        return None
    rows: dict[str, list[MethodRow]] = {"methods": [], "references": []}
    for key, found in rows.items():
        listed = _need(data, key, list, path) if key == "methods" else data.get(key, [])
        for k, row in enumerate(listed):
            where = f"{key}[{k}]"
            found.append(
                MethodRow(
                    method=_need(row, "method", str, path, where),
                    mean=float(_need(row, "mean", (int, float), path, where)),
                    low=float(_need(row, "low", (int, float), path, where)),
                    high=float(_need(row, "high", (int, float), path, where)),
                    per_seed=[float(v) for v in row.get("per_seed", [])],
                    n_items=int(row.get("n_items", data.get("n_items", 0))),
                    detail=str(row.get("detail", "")),
                )
            )
    comparison = data.get("comparison")
    return VerdictData(
        methods=rows["methods"],
        winner=_need(data, "winner", str, path),
        sentence=str(data.get("sentence", "")),
        comparison=comparison.get("sentence") if isinstance(comparison, dict) else None,
        n_items=int(data.get("n_items", 0)),
        confidence=float(data.get("confidence", 0.95)),
        warnings=[str(w) for w in data.get("warnings", [])],
        references=rows["references"],
        cautions=[str(c) for c in data.get("cautions") or []],
    )


def read_experts(run_dir: Path) -> ExpertsData | None:
    path = run_dir / EXPERTS
    data = _read_json(path)
    if data is None:
        return None
    chosen = [str(n) for n in _need(data, "chosen", list, path)]
    similarity = data.get("similarity") or {}
    names = [str(n) for n in similarity.get("names", [])]
    matrix = [[float(v) for v in row] for row in similarity.get("matrix", [])]
    if len(matrix) != len(names) or any(len(row) != len(names) for row in matrix):
        raise InputError(f"expected a {len(names)}x{len(names)} matrix", path,
                         field="similarity.matrix")  # fmt: skip
    position = {name: k for k, name in enumerate(names)}
    rows = []
    for name, score in (data.get("scores") or {}).items():
        if not isinstance(score, dict):
            raise InputError("expected an object", path, field=f"scores.{name}")
        rows.append(
            ExpertRow(
                name=name,
                em=_number(score.get("em")),
                rppl=_number(score.get("rppl")),
                ppl=_number(score.get("ppl")),
                quality=_number(score.get("quality")),
                similarity_to_chosen=_similarity_to(name, chosen, matrix, position),
                chosen=name in chosen,
                reason=_reason(name, score, chosen),
            )
        )
    for name, why in (data.get("rejected") or {}).items():
        rows.append(ExpertRow(name, None, None, None, None, None, False, f"rejected: {why}"))
    return ExpertsData(
        chosen=chosen,
        reason=str(data.get("reason") or ""),
        rows=rows,
        similarity_method=similarity.get("method"),
        names=names,
        matrix=matrix,
        group=dict(data.get("group") or {}),
        warnings=[str(w) for w in data.get("warnings") or []],
    )


def _similarity_to(name: str, chosen: list[str], matrix: list[list[float]],
                   position: dict[str, int]) -> float | None:  # fmt: skip
    """Mean similarity of `name` to the chosen experts other than itself: its diversity."""
    others = [position[c] for c in chosen if c != name and c in position]
    if name not in position or not others:
        return None
    row = matrix[position[name]]
    return sum(row[k] for k in others) / len(others)


def _reason(name: str, score: dict[str, Any], chosen: list[str]) -> str:
    """The decision select-experts recorded; a hand-written file without one gets the bare
    outcome."""
    if score.get("decision"):
        return str(score["decision"])
    if name == BASE_ROW:
        return "reference: the base model without an adapter"
    return "chosen" if name in chosen else "not chosen"


def read_selected(run_dir: Path) -> SelectedData | None:
    summary_path = run_dir / SELECTED_SUMMARY
    summary = _read_json(summary_path)
    records = _read_jsonl(run_dir / SELECTED)
    if summary is None and records is None:
        return None
    summary = summary or {}
    records = records or []
    per_source = summary.get("selected_per_source")
    if per_source is None:
        per_source = {}
        for record in records:
            source = str(record.get("source", "(no source)"))
            per_source[source] = per_source.get(source, 0) + 1
    scores = [s for s in (_number(r.get("score")) for r in records) if s is not None]
    return SelectedData(
        count=int(summary.get("selected", len(records))),
        budget=summary.get("budget"),
        mode=summary.get("mode"),
        encoder=summary.get("encoder"),
        per_source={str(k): int(v) for k, v in per_source.items()},
        pool_per_source={str(k): int(v) for k, v in (summary.get("pool_per_source") or {}).items()},
        pool_size=summary.get("pool_size"),
        vendi=_number(summary.get("vendi_score")),
        scores=scores,
        removed_duplicates=summary.get("removed_duplicates"),
    )


def read_curves(run_dir: Path) -> list[Curve]:
    """Loss by step of every trained model: the mixture's model/train_log.jsonl and the LoRA
    baselines' train_log.jsonl, in stage-name order."""
    train = run_dir / TRAIN_DIR
    if not train.is_dir():
        return []
    curves = []
    for stage in sorted(p for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for path in (stage / "model" / TRAIN_LOG, stage / TRAIN_LOG):
            entries = _read_jsonl(path)
            if entries is None:
                continue
            steps, loss, entropy, max_entropy = [], [], [], None
            for line, entry in enumerate(entries, 1):
                if not isinstance(entry.get("step"), int) or _number(entry.get("loss")) is None:
                    raise InputError("expected integer 'step' and numeric 'loss'", path, line)
                steps.append(entry["step"])
                loss.append(float(entry["loss"]))
                if _number(entry.get("router_entropy")) is not None:
                    entropy.append(float(entry["router_entropy"]))
                    max_entropy = _number(entry.get("router_max_entropy"))
            curves.append(Curve(stage.name, steps, loss, entropy, max_entropy))
            break
    return curves


def read_routing(run_dir: Path) -> list[RoutingData]:
    """Every stages/eval/*/routing.json, checked against the documented shape."""
    evals = run_dir / EVAL_DIR
    if not evals.is_dir():
        return []
    found = []
    for path in sorted(evals.glob(f"*/{ROUTING}")):
        data = _read_json(path)
        experts = [str(e) for e in _need(data, "experts", list, path)]
        layers = [str(name) for name in _need(data, "layers", list, path)]
        usage = _need(data, "usage", list, path)
        if len(usage) != len(layers) or any(
            not isinstance(row, list) or len(row) != len(experts) for row in usage
        ):
            raise InputError(f"expected {len(layers)} rows of {len(experts)} fractions "
                             "(one per layer and expert)", path, field="usage")  # fmt: skip
        entropy = _need(data, "entropy", list, path)
        if len(entropy) != len(layers):
            raise InputError(f"expected {len(layers)} values, one per layer", path,
                             field="entropy")  # fmt: skip
        found.append(
            RoutingData(
                name=path.parent.name,
                experts=experts,
                layers=layers,
                usage=[[float(v) for v in row] for row in usage],
                entropy=[float(v) for v in entropy],
                max_entropy=float(_need(data, "max_entropy", (int, float), path)),
                collapsed=bool(data.get("collapsed", False)),
                dominant_share=[float(v) for v in data.get("dominant_share", [])],
                warning=data.get("warning"),
                tokens=int(data.get("tokens", 0)),
            )
        )
    return found


def read_leakage(run_dir: Path) -> LeakageData | None:
    path = run_dir / LEAKAGE
    data = _read_json(path)
    if data is None:
        return None
    return LeakageData(
        checked={str(k): int(v) for k, v in _need(data, "checked", dict, path).items()},
        counts={str(k): int(v) for k, v in _need(data, "counts", dict, path).items()},
        dropped=int(data.get("dropped", 0)),
        drop=bool(data.get("drop", False)),
        thresholds=dict(data.get("thresholds") or {}),
        examples=[e for e in data.get("examples") or [] if isinstance(e, dict)],
    )


def read_diverseevol(run_dir: Path) -> list[dict[str, Any]] | None:
    """DiverseEvol's per-round summaries (curve.json) in a DiverseEvol run directory, or under
    a `taskexpert run` directory's stages/diverseevol when a run has one."""
    for place in DIVERSEEVOL_PLACES:
        path = run_dir / place
        data = _read_json(path)
        if data is None:
            continue
        if not isinstance(data, list) or not all(
            isinstance(r, dict) and isinstance(r.get("round"), int) for r in data
        ):
            raise InputError("expected a list of round summaries, each with an integer "
                             "'round'", path)  # fmt: skip
        return data
    return None


def read_provenance(run_dir: Path) -> Provenance | None:
    path = run_dir / MANIFEST
    data = _read_json(path)
    if data is None:
        return None
    if not isinstance(data, dict):
        raise InputError("expected a JSON object", path)
    stages = []
    for name, record in (data.get("stages") or {}).items():
        record = record if isinstance(record, dict) else {}
        stages.append(
            StageTime(
                name,
                _number(record.get("seconds")),
                _number(record.get("peak_rss_mb")),
                _number(record.get("cuda_peak_mb")),
            )
        )
    return Provenance(
        created=data.get("created"),
        updated=data.get("updated"),
        versions=dict(data.get("versions") or {}),
        inputs={str(k): str(v) for k, v in (data.get("inputs") or {}).items()},
        seeds=list(data.get("seeds") or []),
        stages=stages,
        config=dict(data.get("config") or {}),
    )


def collect(run_dir: str | Path) -> ReportData:
    """Read every section of `run_dir` (a `taskexpert run` or a DiverseEvol directory)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise InputError("not a directory", run_dir, field="run_dir")
    data = ReportData(
        run_dir=run_dir,
        verdict=read_verdict(run_dir),
        experts=read_experts(run_dir),
        selected=read_selected(run_dir),
        curves=read_curves(run_dir),
        routing=read_routing(run_dir),
        leakage=read_leakage(run_dir),
        diverseevol=read_diverseevol(run_dir),
        provenance=read_provenance(run_dir),
    )
    if data.provenance is None and data.diverseevol is None:
        raise InputError(
            f"not a taskexpert run directory (no {MANIFEST}) nor a DiverseEvol run (no {CURVE})",
            run_dir,
            field="run_dir",
        )
    return data
