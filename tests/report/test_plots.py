"""plots: each function returns a PNG of the report's width (height grows with the rows)."""

from __future__ import annotations

import struct

import pytest

from taskexpert.report import plots

PNG = b"\x89PNG\r\n\x1a\n"


def _size(png: bytes) -> tuple[int, int]:
    assert png.startswith(PNG)
    return struct.unpack(">II", png[16:24])  # the IHDR chunk: width, height


def test_verdict_bars_are_the_column_width_and_grow_with_the_methods():
    few = plots.verdict_bars(["a", "b"], [0.2, 0.5], [0.1, 0.3], [0.3, 0.7], "b", 0.95)
    many = plots.verdict_bars(list("abcdef"), [0.5] * 6, [0.4] * 6, [0.6] * 6, "a", 0.95)
    assert _size(few)[0] == _size(many)[0] == pytest.approx(plots.WIDTH * plots.DPI, abs=2)
    assert _size(many)[1] > _size(few)[1]


def test_verdict_bars_draw_the_reference_floor():
    args = (["a", "b"], [0.2, 0.5], [0.1, 0.3], [0.3, 0.7], "b", 0.95)
    plain = plots.verdict_bars(*args)
    floored = plots.verdict_bars(*args, floor=("always yes", 0.62))
    assert _size(plain) == _size(floored)
    assert plain != floored  # the dashed line and its legend


@pytest.mark.parametrize(
    "draw",
    [
        lambda: plots.heatmap([[1, 0.2], [0.2, 1]], ["a", "b"], ["a", "b"], "t", "s", ["a"]),
        lambda: plots.heatmap(
            [[0.5] * 3] * 20, [f"l{i}" for i in range(20)], list("xyz"), "t", "s", vmin=0, vmax=1
        ),  # fmt: skip
        lambda: plots.counts_bars({"add": 3, "mc": 5}, "t", {"add": 10}),
        lambda: plots.histogram([0.7, 0.8, 0.9, 0.85], "x", "t"),
        lambda: plots.line_curves({"m": ([1, 2], [3.0, 2.5])}, "x", "y", "t", 0.69, "max"),
        lambda: plots.entropy_bars(["l0", "l1"], [0.5, 0.6], 0.69, "t"),
        lambda: plots.rounds_curve(
            [{"round": 0, "vendi": 2.0}, {"round": 1, "vendi": 3.0, "exact_match": 0.4}], "t"
        ),  # fmt: skip
    ],
)
def test_every_plot_is_a_png(draw):
    width, height = _size(draw())
    assert width >= 300 and height >= 200


def test_data_uri_round_trips():
    import base64

    png = plots.histogram([1.0, 2.0], "x", "t")
    uri = plots.data_uri(png)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1]) == png
