"""`mixerlab report`: a self-contained HTML page (inline CSS and SVG, no server, no network) and a Markdown
file with the leaderboard, the plots and each top experiment's insights and diff."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

from pygments import highlight
from pygments.formatters import HtmlFormatter
from pygments.lexers import DiffLexer

from mixerlab.insights import SECTIONS
from mixerlab.store import Store
from mixerlab.tasks import TASK_NAMES

from .charts import bar_chart, lineage_tree, scatter_by_iteration, score_color
from .queries import COLUMNS, Queries


def md_prose(text: str) -> str:
    """Recorded prose (insights an LLM wrote, quoting candidates) for Markdown: HTML characters escaped, so a
    renderer shows them as written instead of running them."""
    return escape(text, quote=False)


def md_fenced(text: str, info: str = "") -> list[str]:
    """`text` as one fenced block whose fence is longer than any run of backticks in it: a line of backticks in a
    candidate's code cannot close the block early and turn the rest into Markdown."""
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", text)), default=0) + 1)
    return [fence + info, text, fence]


def score_text(score: float | None) -> str:
    """A mean score as shown; empty for an experiment not scored (a run stopped during its baselines)."""
    return "" if score is None else f"{score:.4f}"


def write_report(db_url: str, out: Path, run: str | None = None, top: int = 5) -> tuple[Path, Path]:
    queries = Queries(Store(db_url, read_only=True))
    rows = queries.rows(run)
    done = [r for r in rows if r.status == "done" and r.mean_score is not None]
    ranked = sorted(done, key=lambda r: -r.mean_score)
    best = [r for r in ranked if r.kind == "candidate"][:top]
    baselines = [r for r in rows if r.kind == "baseline"]
    details = [queries.experiment(r.id) for r in best]

    scatter = scatter_by_iteration([(r.iteration, r.mean_score, r.name) for r in done if r.kind == "candidate"],
                                   "mean MAD score by iteration (dashed: best so far)")
    bars = bar_chart([COLUMNS[t] for t in TASK_NAMES], {r.name: [r.score(t) for t in TASK_NAMES] for r in baselines + best},
                     "per-task accuracy: baselines and top experiments")
    tree = lineage_tree(queries.lineage(run), href="#exp-{id}")
    css = (Path(__file__).parent / "static" / "style.css").read_text() + HtmlFormatter(cssclass="hl").get_style_defs(".hl")

    def cell(r, t):
        s = r.score(t)
        return f'<td style="background:{score_color(s)}">{s:.4f}</td>' if s is not None else "<td></td>"

    table = "".join(
        f'<tr class="{r.kind}"><td class="name"><a href="#exp-{r.id}">{escape(r.name)}</a></td>'
        + "".join(cell(r, t) for t in TASK_NAMES)
        + f"<td>{score_text(r.mean_score)}</td><td>{escape(r.status)}</td></tr>" for r in baselines + [x for x in ranked if x.kind != "baseline"]
    )
    failed = [r for r in rows if r.status == "failed"]
    sections = []
    for e in details:
        insights = "".join(f"<h4>{escape(title)}</h4><pre class='prose'>{escape(e['insights'].get(key, ''))}</pre>"
                           for key, title in SECTIONS.items())
        diff = highlight(e["diff"] or "", DiffLexer(), HtmlFormatter(cssclass="hl"))
        sections.append(f'<section id="exp-{e["id"]}"><h2>{escape(e["name"])} · {e["mean_score"]:.4f}</h2>'
                        f'<p class="muted">parent {escape((e["parent"] or {}).get("name", "-"))} · iteration {e["iteration"]}'
                        f' · edits {escape(", ".join(e["edits"] or []))}</p>{insights}<h4>Diff</h4><div class="code">{diff}</div></section>')
    title = f"mixerlab report{' · ' + run if run else ''}"
    html = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>
<style>{css}</style></head><body><header><span class="brand">{escape(title)}</span></header><main>
<h1>Leaderboard</h1><p class="muted">{len(rows)} experiments, {len(done)} evaluated, {len(failed)} failed.</p>
<table class="board" id="report-leaderboard"><thead><tr><th>Architecture</th>{''.join(f'<th>{COLUMNS[t]}</th>' for t in TASK_NAMES)}<th>Mean</th><th>Status</th></tr></thead>
<tbody>{table}</tbody></table>
<h1>Plots</h1><div class="charts">{scatter}{bars}</div>
<h1>Lineage</h1>{tree}
<h1>Top experiments</h1>{''.join(sections) or '<p class="muted">no candidate evaluated yet</p>'}
</main></body></html>"""
    out.mkdir(parents=True, exist_ok=True)
    html_path, md_path = out / "index.html", out / "report.md"
    html_path.write_text(html)

    md = [f"# {title}", "", f"{len(rows)} experiments, {len(done)} evaluated, {len(failed)} failed.", "",
          "| Architecture | " + " | ".join(COLUMNS[t] for t in TASK_NAMES) + " | Mean | Status |",
          "|" + "---|" * (len(TASK_NAMES) + 3)]
    for r in baselines + [x for x in ranked if x.kind != "baseline"]:
        md.append(f"| {r.name} | " + " | ".join(f"{r.score(t):.4f}" if r.score(t) is not None else "" for t in TASK_NAMES)
                  + f" | {score_text(r.mean_score)} | {r.status} |")
    for e in details:
        md += ["", f"## {e['name']} ({e['mean_score']:.4f})", "", f"parent: {(e['parent'] or {}).get('name', '-')}", ""]
        for key, title_ in SECTIONS.items():
            md += [f"### {title_}", "", md_prose(e["insights"].get(key, "")), ""]
        md += md_fenced(e["diff"] or "", "diff")
    if failed:
        md += ["", "## Failed", ""] + [f"- {r.name}: {r.status}" for r in failed]
    md_path.write_text("\n".join(md) + "\n")
    return html_path, md_path
