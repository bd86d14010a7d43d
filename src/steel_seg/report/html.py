"""One self-contained HTML page: headings, text, tables and PNG figures embedded as base64 data URIs.

No JavaScript, no external resources: the page opens from any folder, a mail attachment or a Kaggle notebook's
output pane.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from steel_seg import fileio

_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1280px; padding: 0 1em; color: #222; }
h1 { border-bottom: 2px solid #444; padding-bottom: .2em; }
h2 { margin-top: 2em; border-bottom: 1px solid #bbb; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: .25em .6em; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
caption { caption-side: top; text-align: left; font-weight: bold; padding-bottom: .3em; }
figure { margin: 0 0 1.5em; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { font-size: 14px; color: #555; }
p.note { color: #555; }
"""


def format_cell(value: object, digits: int = 4) -> str:
    """Table cell text: floats with `digits` decimals, integers as such, NaN as an empty cell."""
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "" if np.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def table_html(frame: pd.DataFrame, caption: str = "", digits: int = 4) -> str:
    """A DataFrame as an HTML table; the index becomes the first column (named after `frame.index.name`)."""
    head = [frame.index.name or ""] + [str(c) for c in frame.columns]
    rows = ["<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in head) + "</tr>"]
    for values in frame.itertuples(index=True, name=None):  # per-column dtypes kept (iterrows upcasts ints)
        cells = [f"<td>{html.escape(format_cell(v, digits))}</td>" for v in values]
        rows.append("<tr>" + "".join(cells) + "</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return f"<table>{cap}\n" + "\n".join(rows) + "\n</table>"


def png_data_uri(path: str | os.PathLike) -> str:
    """`data:image/png;base64,...` of a PNG file; ValueError naming the file when it is not a PNG."""
    data = Path(path).read_bytes()
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise ValueError(f"{path}: not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


@dataclass(frozen=True)
class Written:
    """A written report: the page, the figures it embeds (in page order) and a one-line summary."""

    html: Path
    figures: list[Path]
    summary: str


@dataclass
class HtmlPage:
    """A page built in order by `heading`, `text`, `table` and `figure`, then written by `write`."""

    title: str
    parts: list[str] = field(default_factory=list)
    figures: list[Path] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def text(self, text: str, note: bool = False) -> None:
        cls = ' class="note"' if note else ""
        self.parts.append(f"<p{cls}>{html.escape(text)}</p>")

    def table(self, frame: pd.DataFrame, caption: str = "", digits: int = 4) -> None:
        self.parts.append(table_html(frame, caption, digits))

    def figure(self, path: str | os.PathLike, caption: str = "") -> None:
        """Embed the PNG at `path` (read now, so the page never refers back to the file)."""
        path = Path(path)
        alt = html.escape(caption or path.stem, quote=True)
        cap = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
        img = f'<img src="{png_data_uri(path)}" alt="{alt}" id="{html.escape(path.stem, quote=True)}">'
        self.parts.append(f"<figure>{img}{cap}</figure>")
        self.figures.append(path)

    def render(self) -> str:
        title = html.escape(self.title)
        body = "\n".join(self.parts)
        return (
            '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f"<title>{title}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n<h1>{title}</h1>\n"
            f"{body}\n</body>\n</html>\n"
        )

    def write(self, path: str | os.PathLike) -> Path:
        """Write the page atomically (temp file + rename) and return its path."""
        return fileio.write_text(path, self.render())
