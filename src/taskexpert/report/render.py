"""The report's two renderings of the same sections: self-contained HTML and Markdown.

Why no external resources: report.html is read offline (a CI artifact, a mail attachment),
so the CSS is inline, images are data URIs and nothing links out. Every piece of text from
the run (adapter names, decisions, warnings, paths) is escaped, since it is user data.
"""

from __future__ import annotations

import html
from collections.abc import Sequence

from taskexpert.report.plots import data_uri
from taskexpert.report.sections import Section, Table

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #1d1d1f; background: #fafafa; line-height: 1.45; }
main { max-width: 980px; margin: 0 auto; padding: 1.5rem 1.25rem 3rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
h2 { font-size: 1.25rem; margin-top: 2.2rem; border-bottom: 1px solid #ddd;
     padding-bottom: 0.2rem; }
nav { font-size: 0.9rem; margin: 0.5rem 0 1rem; }
nav a { margin-right: 0.8rem; color: #2a5d8f; }
.path { color: #666; font-size: 0.85rem; word-break: break-all; }
.scroll { overflow-x: auto; margin: 0.8rem 0; }
table { border-collapse: collapse; font-size: 0.85rem; background: #fff; }
th, td { border: 1px solid #ddd; padding: 0.25rem 0.5rem; text-align: left;
         vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.bold td { font-weight: 600; background: #fff6e8; }
img { max-width: 100%; height: auto; display: block; margin: 0.8rem 0;
      border: 1px solid #e4e4e4; background: #fff; }
p.warn { color: #8a4b00; }
p.missing { color: #777; font-style: italic; }
pre { background: #f4f4f4; padding: 0.6rem; overflow-x: auto; font-size: 0.8rem; }
"""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text in ("-", "inf")
    return True


def _html_table(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.headers)
    rows = []
    for k, row in enumerate(table.rows):
        cells = "".join(
            f'<td class="num">{html.escape(c)}</td>' if _is_number(c)
            else f"<td>{html.escape(c)}</td>"
            for c in row
        )  # fmt: skip
        rows.append(f'<tr class="bold">{cells}</tr>' if k in table.bold else f"<tr>{cells}</tr>")
    body = "\n".join(rows)
    return f'<div class="scroll"><table>\n<tr>{head}</tr>\n{body}\n</table></div>'


def _paragraph_class(text: str) -> str:
    if text.startswith("Warning"):
        return ' class="warn"'
    if text.startswith("Not in this run"):
        return ' class="missing"'
    return ""


def _html_section(section: Section) -> str:
    parts = [f'<section id="{html.escape(section.anchor)}">',
             f"<h2>{html.escape(section.title)}</h2>"]  # fmt: skip
    parts += [f"<p{_paragraph_class(p)}>{html.escape(p)}</p>" for p in section.paragraphs]
    parts += [_html_table(t) for t in section.tables]
    parts += [
        f'<img src="{data_uri(image.png)}" alt="{html.escape(image.alt)}">'
        for image in section.images
    ]
    if section.details:
        summary, text = section.details
        parts.append(f"<details><summary>{html.escape(summary)}</summary>"
                     f"<pre>{html.escape(text)}</pre></details>")  # fmt: skip
    parts.append("</section>")
    return "\n".join(parts)


def to_html(sections: Sequence[Section], title: str, subtitle: str) -> str:
    """One HTML page with everything inline: CSS, images (data URIs), no links out."""
    nav = " ".join(
        f'<a href="#{html.escape(s.anchor)}">{html.escape(s.title)}</a>' for s in sections
    )
    body = "\n".join(_html_section(s) for s in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>\n"
        f'<h1>{html.escape(title)}</h1>\n<div class="path">{html.escape(subtitle)}</div>\n'
        f"<nav>{nav}</nav>\n{body}\n</main>\n</body>\n</html>\n"
    )


def _md_cell(text: str) -> str:
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_table(table: Table) -> str:
    lines = ["| " + " | ".join(_md_cell(h) for h in table.headers) + " |",
             "|" + "|".join("---" for _ in table.headers) + "|"]  # fmt: skip
    for k, row in enumerate(table.rows):
        cells = [_md_cell(c) for c in row]
        if k in table.bold:
            cells = [f"**{c}**" if c else c for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def to_markdown(sections: Sequence[Section], title: str, subtitle: str) -> str:
    """The same sections as Markdown; plots are only in report.html (named here)."""
    parts = [f"# {title}", "", subtitle, ""]
    for section in sections:
        parts += [f"## {section.title}", ""]
        for paragraph in section.paragraphs:
            parts += [paragraph, ""]
        for table in section.tables:
            parts += [_md_table(table), ""]
        for image in section.images:
            parts += [f"*Plot in report.html: {image.alt}.*", ""]
        if section.details:
            summary, text = section.details
            parts += [f"<details><summary>{summary}</summary>", "", "```yaml", text.rstrip(),
                      "```", "", "</details>", ""]  # fmt: skip
    return "\n".join(parts).rstrip() + "\n"
