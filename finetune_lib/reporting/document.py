"""A tiny document model rendered to Markdown or to one self-contained HTML file.

The training report and the model card are built as a list of blocks (headings, paragraphs, lists,
tables, code, images) so that one builder serves both formats, with no Markdown dependency.
Inline text may use two Markdown spans, `` `code` `` and ``**bold**``; everything else is literal
(and escaped in HTML).

Example:
    >>> doc = Document()
    >>> doc.heading("Results", 2)
    >>> doc.table(["metric", "value"], [["accuracy", "0.9"]])
    >>> print(doc.markdown())
    ## Results
    <BLANKLINE>
    | metric | value |
    |---|---|
    | accuracy | 0.9 |
    <BLANKLINE>
"""

from __future__ import annotations

import base64
import html
import mimetypes
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Document"]

_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*")

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 60rem; margin: 2rem auto;
       padding: 0 1rem; line-height: 1.45; color: #222; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.92rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.6rem; text-align: left; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #f3f3f3; }
code, pre { background: #f6f6f6; border-radius: 3px; }
pre { padding: 0.6rem; overflow-x: auto; }
img { max-width: 100%; border: 1px solid #eee; }
"""

_NUMBER = re.compile(r"^[-+]?(\d[\d,]*\.?\d*([eE][-+]?\d+)?|nan|inf)%?$")


def _inline_html(text: str) -> str:
    out, last = [], 0
    for m in _INLINE.finditer(text):
        out.append(html.escape(text[last:m.start()]))
        if m.group(1) is not None:
            out.append(f"<code>{html.escape(m.group(1))}</code>")
        else:
            out.append(f"<strong>{html.escape(m.group(2))}</strong>")
        last = m.end()
    out.append(html.escape(text[last:]))
    return "".join(out)


def _cell_md(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


@dataclass
class _Block:
    kind: str
    data: dict[str, Any] = field(default_factory=dict)


class Document:
    """Blocks of a report; `markdown()` and `html()` render them."""

    def __init__(self) -> None:
        self.blocks: list[_Block] = []

    # ---- building ---------------------------------------------------------------------------------
    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(_Block("heading", {"text": text, "level": level}))

    def paragraph(self, text: str) -> None:
        self.blocks.append(_Block("paragraph", {"text": text}))

    def bullets(self, items: Sequence[str]) -> None:
        if items:
            self.blocks.append(_Block("bullets", {"items": list(items)}))

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A table; cells are shown with `str()` (format numbers before)."""
        if rows:
            self.blocks.append(_Block("table", {"header": list(header), "rows": [list(r) for r in rows]}))

    def code(self, text: str, language: str = "") -> None:
        self.blocks.append(_Block("code", {"text": text.rstrip("\n"), "language": language}))

    def image(self, path: str | Path, alt: str, base: Path | None = None) -> None:
        """An image file; shown by a relative link in Markdown (relative to `base`, the folder of the
        document, with ``..`` where needed, so no absolute path of this machine is written) and
        embedded (base64) in HTML."""
        path = Path(path)
        link = path
        if base is not None:
            try:
                link = Path(os.path.relpath(path.resolve(), Path(base).resolve()))
            except ValueError:  # another drive (Windows): the file's name alone
                link = Path(path.name)
        elif link.is_absolute():
            link = Path(path.name)
        self.blocks.append(_Block("image", {"path": path, "link": link.as_posix(), "alt": alt}))

    # ---- rendering --------------------------------------------------------------------------------
    def markdown(self) -> str:
        out: list[str] = []
        for b in self.blocks:
            d = b.data
            if b.kind == "heading":
                out += ["#" * d["level"] + " " + d["text"], ""]
            elif b.kind == "paragraph":
                out += [d["text"], ""]
            elif b.kind == "bullets":
                out += [f"- {item}" for item in d["items"]] + [""]
            elif b.kind == "table":
                out.append("| " + " | ".join(_cell_md(h) for h in d["header"]) + " |")
                out.append("|" + "---|" * len(d["header"]))
                out += ["| " + " | ".join(_cell_md(c) for c in row) + " |" for row in d["rows"]]
                out.append("")
            elif b.kind == "code":
                out += [f"```{d['language']}", d["text"], "```", ""]
            elif b.kind == "image":
                out += [f"![{d['alt']}]({d['link']})", ""]
        return "\n".join(out)

    def html(self, title: str, embed_images: bool = True) -> str:
        """One HTML page; images are embedded as data URIs unless `embed_images=False`."""
        body: list[str] = []
        for b in self.blocks:
            d = b.data
            if b.kind == "heading":
                body.append(f"<h{d['level']}>{_inline_html(d['text'])}</h{d['level']}>")
            elif b.kind == "paragraph":
                body.append(f"<p>{_inline_html(d['text'])}</p>")
            elif b.kind == "bullets":
                body.append("<ul>" + "".join(f"<li>{_inline_html(i)}</li>" for i in d["items"]) + "</ul>")
            elif b.kind == "table":
                def cell(tag: str, value: Any) -> str:
                    text = str(value)
                    cls = ' class="num"' if _NUMBER.match(text.split(" ")[0]) else ""
                    return f"<{tag}{cls}>{_inline_html(text)}</{tag}>"

                head = "".join(f"<th>{_inline_html(str(h))}</th>" for h in d["header"])
                rows = "".join("<tr>" + "".join(cell("td", c) for c in row) + "</tr>" for row in d["rows"])
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif b.kind == "code":
                body.append(f"<pre><code>{html.escape(d['text'])}</code></pre>")
            elif b.kind == "image":
                src = html.escape(d["link"])
                if embed_images and Path(d["path"]).is_file():
                    data = base64.b64encode(Path(d["path"]).read_bytes()).decode("ascii")
                    mime = mimetypes.guess_type(str(d["path"]))[0] or "image/png"
                    src = f"data:{mime};base64,{data}"
                body.append(f'<p><img src="{src}" alt="{html.escape(d["alt"])}"></p>')
        return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
                f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
                + "\n".join(body) + "\n</body>\n</html>\n")
