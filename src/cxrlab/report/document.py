"""One report, two renderings: Markdown (figures beside it) and self-contained HTML (figures embedded)."""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from cxrlab.files import atomic_write_text


@dataclass
class Document:
    title: str
    warning: str | None = None  # shown first, in red in HTML (phantom data)
    blocks: list[tuple] = field(default_factory=list)

    def heading(self, text: str) -> None:
        self.blocks.append(("h2", text))

    def text(self, text: str) -> None:
        self.blocks.append(("p", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("ul", items))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", header, rows))

    def figures(self, paths: list[Path], caption: str) -> None:
        self.blocks.append(("figures", [Path(p) for p in paths if Path(p).is_file()], caption))

    # ---- renderings ----
    def markdown(self, relative_to: Path) -> str:
        out = [f"# {self.title}", ""]
        if self.warning:
            out += [f"> **{self.warning}**", ""]
        for block in self.blocks:
            kind = block[0]
            if kind == "h2":
                out += [f"## {block[1]}", ""]
            elif kind == "p":
                out += [block[1], ""]
            elif kind == "ul":
                out += [f"- {item}" for item in block[1]] + [""]
            elif kind == "table":
                header, rows = block[1], block[2]
                out.append("| " + " | ".join(header) + " |")
                out.append("|" + "---|" * len(header))
                out += ["| " + " | ".join(row) + " |" for row in rows]
                out.append("")
            elif kind == "figures":
                out += [f"![{block[2]}]({os.path.relpath(p, relative_to)})" for p in block[1]]
                out += [f"*{block[2]}*", ""]
        return "\n".join(out)

    def html(self) -> str:
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        if self.warning:
            body.append(f'<p class="warning">{e(self.warning)}</p>')
        for block in self.blocks:
            kind = block[0]
            if kind == "h2":
                body.append(f"<h2>{e(block[1])}</h2>")
            elif kind == "p":
                body.append(f"<p>{_inline(block[1])}</p>")
            elif kind == "ul":
                body.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in block[1]) + "</ul>")
            elif kind == "table":
                head = "".join(f"<th>{e(h)}</th>" for h in block[1])
                rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in block[2])
                body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table></div>')
            elif kind == "figures":
                images = "".join(
                    f'<img alt="{e(p.stem)}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">' for p in block[1]
                )
                body.append(f"<figure>{images}<figcaption>{e(block[2])}</figcaption></figure>")
        return HTML_PAGE.format(title=e(self.title), body="\n".join(body))

    def write(self, folder: Path, stem: str = "report") -> tuple[Path, Path]:
        folder = Path(folder)
        md, page = folder / f"{stem}.md", folder / f"{stem}.html"
        atomic_write_text(md, self.markdown(folder))
        atomic_write_text(page, self.html())
        return md, page


def _inline(text: str) -> str:
    """Markdown's `code` and **bold** in table cells and paragraphs, the only inline markup reports use."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


HTML_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }}
th, td {{ border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: right; white-space: nowrap; }}
.scroll {{ overflow-x: auto; }}
th:first-child, td:first-child {{ text-align: left; }}
th {{ background: #f3f3f3; }}
.warning {{ background: #fde8e8; border: 2px solid crimson; color: crimson; padding: 0.6em; font-weight: bold; }}
figure {{ margin: 1em 0; }} figure img {{ max-width: 100%; margin: 0.2em; }}
figcaption {{ font-style: italic; color: #555; }}
code {{ background: #f3f3f3; padding: 0 0.2em; }}
</style></head>
<body>
{body}
</body></html>
"""
