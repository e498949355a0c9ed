"""sections + render: every section of a full run in both renderings, inline images only, no
external URLs, text escaped, absent sections said so, the Markdown verdict table."""

from __future__ import annotations

import base64
import json
import re

from taskexpert.report.collect import collect
from taskexpert.report.render import to_html, to_markdown
from taskexpert.report.sections import NOT_IN_RUN, build_sections

from .conftest import LEAKAGE, ROUTING, write_json

PNG = b"\x89PNG\r\n\x1a\n"
ROUNDS = [{"round": 0, "size": 20, "vendi": 4.1}, {"round": 1, "size": 30, "vendi": 5.3}]


def _full_run(run_copy):
    """The micro run plus the optional files other stages write."""
    write_json(run_copy / "stages/leakage/leakage.json", LEAKAGE)
    write_json(run_copy / "stages/eval/moe-seed0/routing.json", ROUTING)
    write_json(run_copy / "stages/diverseevol/curve.json", ROUNDS)
    return build_sections(collect(run_copy))


def _attributes(page: str, name: str) -> list[str]:
    return re.findall(rf'\b{name}="([^"]*)"', page)


def test_every_section_is_drawn_inline_with_no_external_resource(run_copy):
    sections = _full_run(run_copy)
    images = {s.anchor: len(s.images) for s in sections}
    # verdict bars; similarity heat map; source mix + K-shot similarity; loss + router
    # entropy; per mixture seed (the run's two) a usage heat map + entropy per layer; none for
    # leakage; the rounds curve
    assert images == {"verdict": 1, "experts": 1, "data": 2, "training": 2, "routing": 4,
                      "leakage": 0, "diverseevol": 1, "provenance": 0}  # fmt: skip
    assert not any(NOT_IN_RUN in p for s in sections for p in s.paragraphs)
    page = to_html(sections, "report", "/runs/x")
    sources = _attributes(page, "src")
    assert len(sources) == sum(images.values())
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1]).startswith(PNG)
    assert all(h.startswith("#") for h in _attributes(page, "href"))
    assert "http://" not in page and "https://" not in page
    assert "<link" not in page and "<script" not in page
    for section in sections:
        assert f'<section id="{section.anchor}">' in page


def test_text_from_the_run_is_escaped(run_copy):
    path = run_copy / "stages/select-experts/experts.json"
    experts = json.loads(path.read_text())
    name = experts["chosen"][0]
    experts["scores"][name]["decision"] = 'chosen: <img src="https://x.test/a.png"> & more'
    path.write_text(json.dumps(experts))
    page = to_html(build_sections(collect(run_copy)), "<run>", "/runs/<x>")
    assert "&lt;img src=&quot;https://x.test/a.png&quot;&gt; &amp; more" in page
    assert 'src="https://' not in page and "<title>&lt;run&gt;</title>" in page


def test_absent_sections_say_so_in_both_renderings(report_run, tmp_path):
    (tmp_path / "manifest.json").write_bytes((report_run / "manifest.json").read_bytes())
    sections = build_sections(collect(tmp_path))
    missing = [s.title for s in sections if any(NOT_IN_RUN in p for p in s.paragraphs)]
    assert missing == ["Verdict", "Chosen experts", "Selected data", "Training curves",
                       "Router usage", "Leakage check", "DiverseEvol rounds"]  # fmt: skip
    page, text = to_html(sections, "r", "p"), to_markdown(sections, "r", "p")
    assert page.count(NOT_IN_RUN) == text.count(NOT_IN_RUN) == len(missing)
    assert "<img" not in page


def test_markdown_has_the_verdict_table(report_run):
    data = collect(report_run)
    text = to_markdown(build_sections(data), "report", "/runs/x")
    lines = text.splitlines()
    head = lines.index("| method | mean | 95% low | 95% high | per seed | items |")
    rows = lines[head + 2 : head + 2 + len(data.verdict.methods)]
    for line, method in zip(rows, data.verdict.methods):
        cell = f"**{method.method}**" if method.method == data.verdict.winner else method.method
        assert line.startswith(f"| {cell} | ")
        assert f"{method.mean:.3f}" in line
    assert "data:image" not in text and "*Plot in report.html:" in text


def test_markdown_cells_escape_pipes(run_copy):
    path = run_copy / "stages/select-experts/experts.json"
    experts = json.loads(path.read_text())
    experts["scores"][experts["chosen"][0]]["decision"] = "chosen: a | b"
    path.write_text(json.dumps(experts))
    text = to_markdown(build_sections(collect(run_copy)), "r", "p")
    assert "chosen: a \\| b" in text


def test_a_diverseevol_run_shows_only_its_rounds(tmp_path):
    write_json(tmp_path / "curve.json", ROUNDS)
    sections = build_sections(collect(tmp_path))
    assert [s.anchor for s in sections] == ["diverseevol"]
    assert sections[0].tables[0].headers == ["round", "size", "vendi"]
    assert sections[0].tables[0].rows == [["0", "20", "4.100"], ["1", "30", "5.300"]]
    assert len(sections[0].images) == 1


def test_the_reference_floor_is_a_table_row_after_the_methods(run_copy):
    path = run_copy / "verdict.json"
    verdict = json.loads(path.read_text())
    verdict["references"] = [{"method": "majority", "mean": 0.617, "low": 0.56, "high": 0.67,
                              "detail": 'always "yes" (31 of 50 K-shot answers)'}]  # fmt: skip
    path.write_text(json.dumps(verdict))
    data = collect(run_copy)
    assert [row.detail for row in data.verdict.references] == [
        'always "yes" (31 of 50 K-shot answers)'
    ]
    lines = to_markdown(build_sections(data), "r", "p").splitlines()
    head = lines.index("| method | mean | 95% low | 95% high | per seed | items |")
    row = lines[head + 2 + len(data.verdict.methods)]
    assert row.startswith('| reference: always "yes" (31 of 50 K-shot answers) | 0.617 | ')
    assert f"**{data.verdict.winner}**" not in row  # a reference is never drawn as the winner


def test_the_verdicts_cautions_follow_its_sentence(run_copy):
    path = run_copy / "verdict.json"
    verdict = json.loads(path.read_text())
    verdict["cautions"] = ["the winner is not shown to improve on the base model: (planted)"]
    path.write_text(json.dumps(verdict))
    data = collect(run_copy)
    assert data.verdict.cautions == verdict["cautions"]
    text = to_markdown(build_sections(data), "r", "p")
    assert text.index("Winner: ") < text.index(f"Caution: {verdict['cautions'][0]}")
    verdict.pop("cautions")  # a verdict.json written before cautions existed
    path.write_text(json.dumps(verdict))
    assert collect(run_copy).verdict.cautions == []
