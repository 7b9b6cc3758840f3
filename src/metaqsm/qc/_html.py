"""Self-contained HTML: one page with its style sheet inline and pictures as base64 PNG.

No scripts, no external assets: the report opens from a file, a mail attachment or a cluster's
scratch space the same way.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math

SUMMARY_ID = "metaqsm-summary"

STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 0;
       background: #f4f4f4; color: #1a1a1a; }
header { background: #20262e; color: #fff; padding: 14px 24px; }
header h1 { margin: 0 0 4px 0; font-size: 22px; }
header p { margin: 2px 0; font-size: 13px; color: #cfd6de; }
main { padding: 8px 24px 24px 24px; max-width: 1280px; }
section { background: #fff; border: 1px solid #ddd; border-radius: 4px; margin: 14px 0;
          padding: 8px 16px 12px 16px; }
h2 { font-size: 17px; margin: 6px 0 8px 0; }
.orientation { background: #fff7d6; border: 1px solid #e0c96b; padding: 6px 10px;
               font-size: 14px; }
.warnings { background: #fde8e6; border: 2px solid #c62828; }
.warnings h2 { color: #b71c1c; }
.warnings li { margin: 4px 0; font-size: 15px; }
.nowarnings { background: #e8f5e9; border: 1px solid #66bb6a; }
figure { margin: 0; }
figure img { display: block; width: 100%; max-width: 1210px; height: auto; background: #000; }
figcaption { font-size: 13px; color: #444; margin-top: 4px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #eef0f3; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.status-ok { background: #e8f5e9; }
.status-warnings { background: #fff3e0; }
.status-failed { background: #fde8e6; font-weight: bold; }
footer { font-size: 12px; color: #666; padding: 0 24px 16px 24px; }
"""


def esc(text):
    return html.escape(str(text), quote=True)


def fmt(value):
    """A number or value as a short string for a table cell."""
    if value is None:
        return "\u2013"  # an en dash: not recorded
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(fmt(v) for v in value) + "]"
    return str(value)


def png_base64(fig, *, dpi=None):
    """A matplotlib figure as a base64 PNG string (for an ``img`` data URI)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor(), dpi=dpi)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figure(section_id, heading, png64, caption):
    return (f'<section id="{esc(section_id)}"><h2>{esc(heading)}</h2><figure>'
            f'<img alt="{esc(heading)}" src="data:image/png;base64,{png64}">'
            f"<figcaption>{esc(caption)}</figcaption></figure></section>")


def table(header, rows, *, numeric=()):
    """An HTML table; cells are escaped unless they are ``Raw``."""
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for i, cell in enumerate(row):
            classes = (["num"] if i in numeric else []) + \
                ([cell.cls] if isinstance(cell, Raw) and cell.cls else [])
            cls = f' class="{" ".join(classes)}"' if classes else ""
            text = cell.html if isinstance(cell, Raw) else esc(fmt(cell))
            cells.append(f"<td{cls}>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


class Raw:
    """Markup to put into a table cell as is (already escaped), with an optional CSS class for
    the cell."""

    def __init__(self, markup, *, cls=None):
        self.html = markup
        self.cls = cls


def warnings_section(warnings):
    if not warnings:
        return '<section id="warnings" class="nowarnings"><h2>Warnings</h2><p>None.</p></section>'
    items = "".join(f"<li>{esc(w)}</li>" for w in warnings)
    return (f'<section id="warnings" class="warnings"><h2>Warnings ({len(warnings)})</h2>'
            f"<ul>{items}</ul></section>")


def summary_script(summary):
    """The report's key numbers and warnings as JSON in a non-executed script block, so a group
    index can read them back from the file."""
    text = json.dumps(summary, allow_nan=False, default=str).replace("</", "<\\/")
    return f'<script type="application/json" id="{SUMMARY_ID}">{text}</script>'


def read_summary(text):
    """The summary written by :func:`summary_script` in an HTML page, or None."""
    start = text.find(f'id="{SUMMARY_ID}">')
    if start < 0:
        return None
    start = text.index(">", start) + 1
    end = text.find("</script>", start)
    try:
        return json.loads(text[start:end].replace("<\\/", "</"))
    except ValueError:
        return None


def page(title, header_lines, body, footer):
    lines = "".join(f"<p>{esc(line)}</p>" for line in header_lines)
    return ("<!DOCTYPE html>\n"
            f'<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{esc(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<header><h1>{esc(title)}</h1>{lines}</header>\n<main>\n{body}\n</main>\n"
            f"<footer>{esc(footer)}</footer>\n</body>\n</html>\n")
