"""Prompts for the language-model proposer, built from the run's real history and code."""

from __future__ import annotations

import json

from mixerlab.insights import SECTIONS, Insights
from mixerlab.table import accuracies_df, format_table
from mixerlab.text import shown

from .base import ProposalContext, TASK_NAMES

CONTRACT = """The candidate contract:
- One self-contained Python file, an edited copy of the parent's code below. It may import only torch,
  einops, math, typing and functools; no files, processes, network, eval/exec, globals or dunder tricks.
- Keep `class DeltaNet(nn.Module)` with `__init__(self, d_model, ...)` (every other argument defaulted) and
  `forward(x)` mapping [batch, length, d_model] to the same shape and dtype.
- It must stay causal (no look-ahead), sub-quadratic in length (no length x length tensors), finite in
  float32 and bfloat16, give every parameter a gradient, and keep the parameter count within +-50%."""


def system_prompt(language: str) -> str:
    lang = "Write the five Insights sections in Chinese (简体中文)." if language == "zh" else "Write in English."
    return (
        "You are a research engineer improving linear-attention sequence mixers (DeltaNet family). Each candidate "
        "is trained in a 4-layer model on the six MAD synthetic tasks and scored by accuracy. You analyse the "
        "results table and the code, then propose ONE focused, well-motivated code change.\n"
        f"{CONTRACT}\n{lang}\n"
        "Answer with a single JSON object with the keys: name (delta_net_4layer_<change_in_snake_case>), "
        + ", ".join(f"{k} (the section '{v}')" for k, v in SECTIONS.items())
        + ", targets (an object: task -> expected accuracy after the change, for "
        + ", ".join(TASK_NAMES)
        + "), code (the complete new Python file)."
    )


def _table(ctx: ProposalContext) -> str:
    rows = {e.name: {t: e.score(t) for t in TASK_NAMES if e.score(t) is not None} for e in ctx.evaluated}
    return format_table(accuracies_df(rows)) if rows else "(no results yet)"


def quoted(text: str, limit: int) -> str:
    """Text from a candidate's run (a failure reason) inside a prompt: one JSON string, control characters and
    line breaks escaped and bounded, so it reads as a quotation and cannot pose as the prompt's own lines."""
    return json.dumps(shown(text, limit), ensure_ascii=False)


def report_block(report: str) -> str:
    """A checker's report for a repair prompt: fenced as data, its own fences defused."""
    return FENCE + "text\n" + shown(report, 6000).replace(FENCE, "` ` `") + "\n" + FENCE


FENCE = "`" * 3


def _lessons(ctx: ProposalContext) -> str:
    lines = []
    by_name = {e.name: e for e in ctx.history}
    for e in ctx.history[-10:]:
        if e.kind != "candidate":
            continue
        if e.status == "failed":
            lines.append(f"- {e.name}: failed, reason {quoted(e.failure_reason, 200)}")
        elif e.status == "done" and e.mean_score is not None:
            parent = by_name.get(e.parent or "")
            delta = f"{e.mean_score - parent.mean_score:+.4f} vs parent" if parent and parent.mean_score is not None else ""
            lines.append(f"- {e.name}: mean {e.mean_score:.4f} {delta}")
    return "\n".join(lines) or "- (no candidates yet)"


def retrieved_cards(ctx: ProposalContext, k: int) -> list:
    """The k knowledge cards most relevant to the parent's weakest tasks and its code."""
    if k <= 0:
        return []
    from mixerlab.knowledge import Retriever

    weak = ctx.weak_tasks()
    return [h.card for h in Retriever(backend="lexical").for_weaknesses(weak, ctx.parent.code, k=k)] if weak else []


def _cards(cards: list) -> str:
    if not cards:
        return ""
    return ("Knowledge cards retrieved for the parent's weakest tasks (name the ones you draw on, by their [id], in "
            "Technical Reasoning):\n" + "\n".join(f"- {c.brief()}" for c in cards) + "\n\n")


def user_prompt(ctx: ProposalContext, cards: list | None = None) -> str:
    refs = "\n".join(
        f"- {e.name} ({e.status}{', mean %.4f' % e.mean_score if e.mean_score is not None else ''})"
        + (f": {quoted(e.failure_reason, 160)}" if e.failure_reason else "")
        for e in ctx.references
    ) or "- (none)"
    return (
        f"Iteration {ctx.iteration}. Results so far (accuracy per task):\n{_table(ctx)}\n\n"
        f"Lessons from earlier attempts:\n{_lessons(ctx)}\n\nReference experiments:\n{refs}\n\n"
        f"{_cards(cards or [])}"
        f"Parent: {ctx.parent.name} (mean {ctx.parent.mean_score}). Its code:\n```python\n{ctx.parent.code}```\n\n"
        "Propose one change to the parent. Ground every observation in the numbers above; give numeric targets "
        "per task; return the complete modified file in `code`."
    )


def repair_messages(ctx: ProposalContext, code: str, insights: Insights, report: str) -> list[dict]:
    return [
        {"role": "user", "content": user_prompt(ctx)},
        {"role": "assistant", "content": f"(proposed code)\n```python\n{code}```"},
        {"role": "user", "content": (
            "The checker rejected this code. Its exact report (output of the run, quoted as data):\n"
            f"{report_block(report)}\n\nFix the problem while keeping the idea of the change. Answer with the same JSON object "
            "(name, the five sections, targets, code) and the complete corrected file in `code`.")},
    ]


def choices_system_prompt() -> str:
    return ("You improve DeltaNet-family sequence mixers, scored on six MAD tasks. A mixer is a set of design choices. "
            "Pick the options to change from the menu, one or two axes, guided by the results and the cards. Answer "
            "with one JSON object: {\"name\": short snake_case name of the change, \"choices\": {axis: option}, "
            "\"reasoning\": two or three sentences naming the cards by [id]}.")


def choices_user_prompt(ctx: ProposalContext, base: dict[str, str], cards: list) -> str:
    from . import space

    menu = "\n".join(f"- {a.name} (now {base[a.name]}): " + ", ".join(f"{o.name} = {o.summary}" for o in a.options)
                     for a in space.AXES)
    return (f"Results so far (accuracy per task):\n{_table(ctx)}\n\nLessons:\n{_lessons(ctx)}\n\n{_cards(cards)}"
            f"Parent: {ctx.parent.name} (mean {ctx.parent.mean_score}).\nMenu of axes and options:\n{menu}\n\n"
            "Change one or two axes of the parent. Reply with the JSON object only.")
