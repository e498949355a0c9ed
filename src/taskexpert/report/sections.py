"""What the report says, section by section, in a form both renderers (HTML, Markdown) share.

Why an intermediate form: report.html and report.md must show the same numbers with the same
rounding; building each section once (text, tables, plots) and rendering it twice keeps them
from drifting apart. A section whose data the run does not have says so in one line.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from taskexpert.report import plots
from taskexpert.report.collect import BASE_ROW, ReportData

NOT_IN_RUN = "Not in this run."


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    bold: set[int] = field(default_factory=set)  # row indices drawn bold (winner, chosen)


@dataclass
class Image:
    alt: str
    png: bytes


@dataclass
class Section:
    """One titled part of the report: paragraphs, then tables, then images, in that order;
    `details` is long text (the config) shown folded in HTML."""

    title: str
    anchor: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    details: tuple[str, str] | None = None  # (summary line, preformatted text)


def fmt(value: float | None, digits: int = 3) -> str:
    """A number as the report prints it: fixed digits, 'inf', or '-' when absent."""
    if value is None:
        return "-"
    if math.isinf(value):
        return "inf"
    if abs(value) >= 1000:
        return f"{value:.4g}"
    return f"{value:.{digits}f}"


def verdict_section(data: ReportData) -> Section:
    section = Section("Verdict", "verdict")
    verdict = data.verdict
    if verdict is None:
        section.paragraphs.append(NOT_IN_RUN + " (no verdict.json)")
        return section
    sentence = verdict.sentence[:1].upper() + verdict.sentence[1:]
    section.paragraphs.append(f"Winner: {verdict.winner}. {sentence}.")
    section.paragraphs += [f"Warning: {w}" for w in verdict.warnings]
    section.paragraphs += [f"Caution: {c}" for c in verdict.cautions]
    level = f"{verdict.confidence:.0%}"
    table = Table(["method", "mean", f"{level} low", f"{level} high", "per seed", "items"], [])
    for k, row in enumerate(verdict.methods):
        seeds = ", ".join(fmt(v) for v in row.per_seed)
        table.rows.append([row.method, fmt(row.mean), fmt(row.low), fmt(row.high), seeds,
                           str(row.n_items)])  # fmt: skip
        if row.method == verdict.winner:
            table.bold.add(k)
    for row in verdict.references:  # model-free floors: shown for scale, never the winner
        table.rows.append([f"reference: {row.detail}", fmt(row.mean), fmt(row.low),
                           fmt(row.high), "", str(row.n_items)])  # fmt: skip
    section.tables.append(table)
    methods = verdict.methods
    floor = verdict.references[0] if verdict.references else None  # the commonest answer
    section.images.append(
        Image(
            "Bar chart of each method's mean score with its bootstrap interval",
            plots.verdict_bars(
                [m.method for m in methods],
                [m.mean for m in methods],
                [m.low for m in methods],
                [m.high for m in methods],
                verdict.winner,
                verdict.confidence,
                (f"reference: {floor.detail}", floor.mean) if floor else None,
            ),  # fmt: skip
        )
    )
    return section


def experts_section(data: ReportData) -> Section:
    section = Section("Chosen experts", "experts")
    experts = data.experts
    if experts is None:
        section.paragraphs.append(NOT_IN_RUN + " (no stages/select-experts/experts.json)")
        return section
    section.paragraphs.append(f"Chosen: {', '.join(experts.chosen)}.")
    if experts.reason:
        section.paragraphs.append(f"Why this group: {experts.reason}.")
    section.paragraphs += [f"Warning: {w}" for w in experts.warnings]
    section.paragraphs.append(
        "EM: exact match on the K-shot; RPPL: reasoning perplexity (lower is better); "
        "similarity: mean similarity to the chosen experts (lower is more diverse)."
    )
    table = Table(["adapter", "EM", "RPPL", "PPL", "quality", "similarity", "decision"], [])
    order = sorted(experts.rows, key=lambda r: (not r.chosen, r.name != BASE_ROW, r.name))
    for k, row in enumerate(order):
        table.rows.append([
            row.name, fmt(row.em), fmt(row.rppl, 2), fmt(row.ppl, 2), fmt(row.quality),
            fmt(row.similarity_to_chosen), row.reason,
        ])  # fmt: skip
        if row.chosen:
            table.bold.add(k)
    section.tables.append(table)
    if experts.names:
        method = experts.similarity_method or "similarity"
        section.images.append(
            Image(
                "Heat map of the bank's pairwise adapter similarity",
                plots.heatmap(
                    experts.matrix,
                    experts.names,
                    experts.names,
                    f"adapter similarity ({method}); chosen experts in bold",
                    "similarity",
                    marked=experts.chosen,
                    vmin=0.0,
                ),  # fmt: skip
            )
        )
    return section


def data_section(data: ReportData) -> Section:
    section = Section("Selected data", "data")
    selected = data.selected
    if selected is None:
        section.paragraphs.append(NOT_IN_RUN + " (no stages/select-data)")
        return section
    facts = [f"{selected.count} items selected"]
    if selected.budget is not None:
        facts.append(f"budget {selected.budget}")
    if selected.pool_size is not None:
        facts.append(f"from a pool of {selected.pool_size}")
    if selected.removed_duplicates is not None:
        facts.append(f"{selected.removed_duplicates} near-duplicates skipped")
    section.paragraphs.append("; ".join(facts) + ".")
    vendi = fmt(selected.vendi, 2) if selected.vendi is not None else "not recorded"
    section.paragraphs.append(
        f"Vendi score (effective number of distinct items): {vendi}. Encoder: "
        f"{selected.encoder or 'not recorded'}; mode: {selected.mode or 'not recorded'}."
    )
    if selected.scores:
        scores = selected.scores
        section.paragraphs.append(
            f"Similarity to the K-shot (cosine, as select-data scored it): min "
            f"{fmt(min(scores))}, mean {fmt(sum(scores) / len(scores))}, max {fmt(max(scores))}."
        )
    table = Table(["source", "selected", "in the pool"], [])
    for name in sorted(selected.per_source, key=lambda n: (-selected.per_source[n], n)):
        pool = selected.pool_per_source.get(name)
        table.rows.append([name, str(selected.per_source[name]), "-" if pool is None else
                           str(pool)])  # fmt: skip
    section.tables.append(table)
    if selected.per_source:
        section.images.append(
            Image(
                "Bar chart of the selected items per source",
                plots.counts_bars(
                    selected.per_source, "source mix of the selected data", selected.pool_per_source
                ),  # fmt: skip
            )
        )
    if selected.scores:
        section.images.append(
            Image(
                "Histogram of the selected items' similarity to the K-shot",
                plots.histogram(
                    selected.scores,
                    "cosine similarity to the K-shot",
                    "similarity of each selected item to the K-shot",
                ),  # fmt: skip
            )
        )
    return section


def training_section(data: ReportData) -> Section:
    section = Section("Training curves", "training")
    if not data.curves:
        section.paragraphs.append(NOT_IN_RUN + " (no train_log.jsonl under stages/train)")
        return section
    table = Table(["model", "logged steps", "first loss", "last loss"], [])
    for curve in data.curves:
        table.rows.append([curve.name, str(len(curve.steps)), fmt(curve.loss[0] if curve.loss
                           else None), fmt(curve.loss[-1] if curve.loss else None)])  # fmt: skip
    section.tables.append(table)
    section.images.append(
        Image(
            "Training loss by step of the mixture and the LoRA baselines",
            plots.line_curves(
                {c.name: (c.steps, c.loss) for c in data.curves},
                "optimizer step",
                "training loss",
                "training loss (mixture and baselines)",
            ),
        )  # fmt: skip
    )
    routed = [c for c in data.curves if c.router_entropy]
    if routed:
        section.images.append(
            Image(
                "Router entropy by training step of each mixture",
                plots.line_curves(
                    {c.name: (c.steps[-len(c.router_entropy) :], c.router_entropy) for c in routed},
                    "optimizer step",
                    "router entropy (nats)",
                    "mixture router entropy while training",
                    reference=routed[0].router_max_entropy,
                    reference_label="uniform (maximum)",
                ),  # fmt: skip
            )
        )
    return section


def routing_section(data: ReportData) -> Section:
    section = Section("Router usage", "routing")
    if not data.routing:
        section.paragraphs.append(NOT_IN_RUN + " (no routing.json under stages/eval)")
        return section
    for routing in data.routing:
        mean = sum(routing.entropy) / len(routing.entropy) if routing.entropy else None
        state = "collapsed" if routing.collapsed else "not collapsed"
        section.paragraphs.append(
            f"{routing.name}: {routing.tokens} tokens routed, mean entropy {fmt(mean)} of "
            f"{fmt(routing.max_entropy)} nats maximum, {state}."
        )
        if routing.warning:
            section.paragraphs.append(f"Warning ({routing.name}): {routing.warning}")
        section.images.append(
            Image(
                f"Heat map of router usage per layer and expert, {routing.name}",
                plots.heatmap(
                    routing.usage,
                    routing.layers,
                    routing.experts,
                    f"{routing.name}: share of tokens per layer and expert",
                    "share of tokens",
                    vmin=0.0,
                    vmax=1.0,
                ),  # fmt: skip
            )
        )
        section.images.append(
            Image(
                f"Bar chart of router entropy per layer, {routing.name}",
                plots.entropy_bars(
                    routing.layers,
                    routing.entropy,
                    routing.max_entropy,
                    f"{routing.name}: router entropy per layer",
                ),  # fmt: skip
            )
        )
    return section


def leakage_section(data: ReportData) -> Section:
    section = Section("Leakage check", "leakage")
    leakage = data.leakage
    if leakage is None:
        section.paragraphs.append(NOT_IN_RUN + " (no stages/leakage/leakage.json)")
        return section
    checked = ", ".join(f"{v} {k}" for k, v in leakage.checked.items())
    action = f"{leakage.dropped} dropped" if leakage.drop else "reported, not dropped"
    section.paragraphs.append(f"Checked {checked}; {action}.")
    thresholds = ", ".join(f"{k} {v}" for k, v in leakage.thresholds.items())
    counts = Table(["match", "items"], [[k, str(v)] for k, v in leakage.counts.items()])
    section.tables.append(counts)
    if thresholds:
        section.paragraphs.append(f"Thresholds: {thresholds}.")
    if leakage.examples:
        section.tables.append(
            Table(
                ["source", "index", "eval index", "reasons"],
                [
                    [
                        str(e.get("source", "-")),
                        str(e.get("index", "-")),
                        str(e.get("eval_index", "-")),
                        "; ".join(map(str, e.get("reasons", []))),
                    ]
                    for e in leakage.examples
                ],
            )  # fmt: skip
        )
    return section


def diverseevol_section(data: ReportData) -> Section:
    section = Section("DiverseEvol rounds", "diverseevol")
    rounds = data.diverseevol
    if rounds is None:
        section.paragraphs.append(NOT_IN_RUN + " (no DiverseEvol curve.json)")
        return section
    keys = ["round", "size", "vendi", "exact_match", "exact_match_macro", "seconds"]
    shown = [k for k in keys if any(r.get(k) is not None for r in rounds)]
    rows = [[_cell(r.get(k)) for k in shown] for r in rounds]
    section.tables.append(Table(shown, rows))
    if rounds:
        section.images.append(
            Image(
                "DiverseEvol's Vendi score and exact match by round",
                plots.rounds_curve(rounds, "DiverseEvol by round"),
            )  # fmt: skip
        )
    return section


def _cell(value) -> str:
    if isinstance(value, float):
        return fmt(value)
    return "-" if value is None else str(value)


def provenance_section(data: ReportData) -> Section:
    section = Section("Provenance", "provenance")
    prov = data.provenance
    if prov is None:
        section.paragraphs.append(NOT_IN_RUN + " (no manifest.json)")
        return section
    seeds = ", ".join(map(str, prov.seeds)) or "-"
    section.paragraphs.append(
        f"Created {prov.created or '-'}, updated {prov.updated or '-'}; seeds {seeds}."
    )
    section.tables.append(
        Table(["package", "version"], [[k, str(v or "-")] for k, v in prov.versions.items()])
    )
    section.tables.append(
        Table(["input", "sha256 (first 16)"], [[k, v[:16]] for k, v in prov.inputs.items()])
    )
    total = sum(s.seconds or 0.0 for s in prov.stages)
    section.tables.append(
        Table(
            ["stage", "seconds", "peak RSS (MB)", "peak CUDA (MB)"],
            [
                [s.name, fmt(s.seconds, 2), fmt(s.peak_rss_mb, 0), fmt(s.cuda_peak_mb, 0)]
                for s in prov.stages
            ]
            + [["total", fmt(total, 2), "", ""]],
            bold={len(prov.stages)},
        )  # fmt: skip
    )
    if prov.config:
        import yaml

        text = yaml.safe_dump(prov.config, sort_keys=False, allow_unicode=True)
        section.details = ("The run's config (as the manifest stores it)", text)
    return section


SECTIONS: tuple[Callable[[ReportData], Section], ...] = (
    verdict_section,
    experts_section,
    data_section,
    training_section,
    routing_section,
    leakage_section,
    diverseevol_section,
    provenance_section,
)


def build_sections(data: ReportData) -> list[Section]:
    """Every section in reading order: the answer first, then how the run got there. A
    DiverseEvol run directory (no manifest) has only its rounds to show."""
    if data.provenance is None and data.diverseevol is not None:
        return [diverseevol_section(data)]
    return [make(data) for make in SECTIONS]
