"""The report's plots: each a function from plain numbers to PNG bytes (matplotlib, Agg).

Why bytes: the HTML report inlines every image as a data URI so it opens offline, from a mail
attachment or a CI artifact, with nothing beside it. The Agg backend draws without a display.
matplotlib is imported inside the functions so `taskexpert --help` stays instant.
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager

WIDTH = 7.5  # inches; at DPI below this fits the report's 960 px column
DPI = 110
HIGHLIGHT, PLAIN = "#d9822b", "#4c78a8"


@contextmanager
def _figure(height: float, ncols: int = 1, width: float = WIDTH) -> Iterator[tuple]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width, height), dpi=DPI, squeeze=False)
    try:
        yield fig, list(axes[0])
    finally:
        plt.close(fig)


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    """The PNG as a `data:` URI for an <img src>: the report needs no file beside it."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _short(name: str, limit: int = 28) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def _tail(name: str, limit: int = 34) -> str:
    """A module path cut from the left: 'model.layers.23.self_attn.q_proj' differs from its
    neighbours at the end, not the start."""
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def _integer_steps(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def verdict_bars(
    methods: Sequence[str], means: Sequence[float], lows: Sequence[float],
    highs: Sequence[float], winner: str, confidence: float,
    floor: tuple[str, float] | None = None,
) -> bytes:  # fmt: skip
    """Each method's mean score with its bootstrap interval; the winner highlighted. `floor`
    (label, score) draws a model-free reference as a dashed line, so a bar that only reaches
    "always answer yes" reads as such."""
    with _figure(0.45 * len(methods) + 1.2) as (fig, (ax,)):
        y = list(range(len(methods)))[::-1]
        colors = [HIGHLIGHT if m == winner else PLAIN for m in methods]
        errors = [[m - lo for m, lo in zip(means, lows)], [hi - m for m, hi in zip(means, highs)]]
        ax.barh(y, means, color=colors, xerr=errors, capsize=4, ecolor="#333")
        ax.set_yticks(y, [_short(m) for m in methods])
        ax.set_xlim(0, max(1.0, *highs) if highs else 1.0)
        if floor is not None:
            label, score = floor
            ax.axvline(score, color="#888", linestyle="--", linewidth=1, label=label)
            ax.legend(loc="lower right", fontsize=8, frameon=False)
        ax.set_xlabel(f"score on the test items (bars: {confidence:.0%} bootstrap interval)")
        ax.grid(axis="x", alpha=0.3)
        return _png(fig)


def heatmap(
    matrix: Sequence[Sequence[float]], rows: Sequence[str], cols: Sequence[str], title: str,
    colorbar: str, marked: Sequence[str] = (), vmin: float | None = None,
    vmax: float | None = None,
) -> bytes:  # fmt: skip
    """A labelled heat map; labels in `marked` are drawn bold (the chosen experts)."""
    import numpy as np

    values = np.asarray(matrix, dtype=float)
    side = max(len(rows), len(cols))
    size = min(9.0, max(4.0, 0.32 * side + 2.5))
    with _figure(min(9.0, max(2.8, 0.3 * len(rows) + 2.0)), width=size + 1.5) as (fig, (ax,)):
        image = ax.imshow(values, cmap="viridis", aspect="auto", vmin=vmin, vmax=vmax)
        ax.set_xticks(range(len(cols)), [_short(c, 20) for c in cols], rotation=60, ha="right",
                      fontsize=8)  # fmt: skip
        ax.set_yticks(range(len(rows)), [_tail(r) for r in rows], fontsize=8)
        for label in [*ax.get_xticklabels(), *ax.get_yticklabels()]:
            if label.get_text() in {_short(m, 20) for m in marked} | {_tail(m) for m in marked}:
                label.set_fontweight("bold")
        if len(rows) * len(cols) <= 64:
            for (i, j), value in np.ndenumerate(values):
                ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if value < np.nanmean(values) else "black")  # fmt: skip
        fig.colorbar(image, ax=ax, label=colorbar, fraction=0.046, pad=0.04, shrink=0.9)
        ax.set_title(title, fontsize=10, pad=10)
        return _png(fig)


def counts_bars(counts: Mapping[str, int], title: str, pool: Mapping[str, int] | None = None
                ) -> bytes:  # fmt: skip
    """Items per source, largest first; with `pool`, each source's share of the pool beside."""
    names = sorted(counts, key=lambda n: (-counts[n], n))
    with _figure(0.35 * len(names) + 1.3) as (fig, (ax,)):
        y = list(range(len(names)))[::-1]
        ax.barh(y, [counts[n] for n in names], color=PLAIN, label="selected")
        for k, name in zip(y, names):
            note = f" {counts[name]}" + (f" of {pool[name]} in the pool" if pool and
                                         name in pool else "")  # fmt: skip
            ax.text(counts[name], k, note, va="center", fontsize=8)
        ax.set_yticks(y, [_short(n) for n in names])
        ax.set_xlim(0, max(counts.values()) * 1.6 if counts else 1)
        ax.set_xlabel("items")
        ax.set_title(title, fontsize=10)
        return _png(fig)


def histogram(values: Sequence[float], xlabel: str, title: str) -> bytes:
    with _figure(2.6) as (fig, (ax,)):
        ax.hist(values, bins=min(30, max(5, len(values) // 3)), color=PLAIN, edgecolor="white")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("items")
        ax.set_title(title, fontsize=10)
        return _png(fig)


def line_curves(
    curves: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
    title: str, reference: float | None = None, reference_label: str = "",
) -> bytes:  # fmt: skip
    """One line (with markers: a short run logs few points) per named series."""
    with _figure(3.2) as (fig, (ax,)):
        for name, (xs, ys) in curves.items():
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1.4, label=_short(name, 32))
        if reference is not None:
            ax.axhline(reference, color="#888", linestyle="--", linewidth=1, label=reference_label)
        _integer_steps(ax)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2 if len(curves) > 4 else 1, loc="best")
        return _png(fig)


def entropy_bars(layers: Sequence[str], entropy: Sequence[float], max_entropy: float,
                 title: str) -> bytes:  # fmt: skip
    """Router entropy per layer against the uniform maximum (log of the expert count)."""
    with _figure(0.22 * len(layers) + 1.5) as (fig, (ax,)):
        y = list(range(len(layers)))[::-1]
        ax.barh(y, entropy, color=PLAIN)
        ax.axvline(max_entropy, color=HIGHLIGHT, linestyle="--")
        ax.set_yticks(y, [_tail(n) for n in layers], fontsize=7)
        top = max([max_entropy, *entropy]) if entropy else max_entropy
        ax.set_xlim(0, top * 1.1 if top > 0 and math.isfinite(top) else 1)
        ax.set_xlabel("router entropy (nats)")
        ax.set_title(f"{title} (dashed: uniform routing, the maximum)", fontsize=10)
        return _png(fig)


def rounds_curve(rounds: Sequence[Mapping], title: str) -> bytes:
    """DiverseEvol's curve: Vendi score (and exact match when evaluated) by round."""
    xs = [r["round"] for r in rounds]
    panels = [("vendi", "Vendi score of the subset")]
    if any(r.get("exact_match") is not None for r in rounds):
        panels.append(("exact_match", "exact match"))
    with _figure(3.0, ncols=len(panels)) as (fig, axes):
        for ax, (key, label) in zip(axes, panels):
            pairs = [(x, r[key]) for x, r in zip(xs, rounds) if r.get(key) is not None]
            ax.plot([p[0] for p in pairs], [p[1] for p in pairs], marker="o", color=PLAIN)
            _integer_steps(ax)
            ax.set_xlabel("round")
            ax.set_ylabel(label)
            ax.grid(alpha=0.3)
        fig.suptitle(title, fontsize=10)
        return _png(fig)
