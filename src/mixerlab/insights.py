"""The Insights document (five sections) and the iteration block the loop prints, in the seeds' shape:

    <history table>

    YYYYMMDD_HHMMSS

    --- Insights ---
    Key Observations from Experiment Results
    ...
    Lessons from Historical Attempts
    ...

    name: delta_net_4layer_<change>
    success: true|false

`parse_block` reads such a block back (the table, the timestamp, the sections, the name, success).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd
from pydantic import BaseModel, Field, field_validator

from mixerlab.table import format_table, parse_table
from mixerlab.text import shown

SECTIONS: dict[str, str] = {
    "observations": "Key Observations from Experiment Results",
    "code_issues": "Specific Code Issues Identified",
    "reasoning": "Technical Reasoning for Proposed Change",
    "expected": "Expected Improvements",
    "lessons": "Lessons from Historical Attempts",
}
SECTION_CHARS = 20_000  # a section longer than this is cut (a seed's whole block is about 2,000)
NAME_PATTERN = re.compile(r"^delta_net_4layer_[a-z0-9]+(_[a-z0-9]+)*$")


class Insights(BaseModel):
    observations: str = Field(min_length=1)
    code_issues: str = Field(min_length=1)
    reasoning: str = Field(min_length=1)
    expected: str = Field(min_length=1)
    lessons: str = Field(min_length=1)

    @field_validator("*")
    @classmethod
    def _strip(cls, value: str) -> str:
        # an LLM writes these and quotes candidates in them: data for the terminal like any candidate text
        return shown(value.strip(), SECTION_CHARS)

    def render(self) -> str:
        return "\n\n".join(f"{SECTIONS[key]}\n{getattr(self, key)}" for key in SECTIONS)


def valid_name(name: str) -> bool:
    return bool(NAME_PATTERN.match(name)) and len(name) <= 200


def snake_case(text: str) -> str:
    """`Tanh on the error!` -> `tanh_on_the_error` (what follows `delta_net_4layer_` in a name)."""
    words = re.findall(r"[a-z0-9]+", text.lower().replace("delta_net_4layer", " "))
    return "_".join(words)[:150] or "change"


def render_block(table: pd.DataFrame, timestamp: str, insights: Insights, name: str, success: bool) -> str:
    return (
        f"{format_table(table)}\n\n{timestamp}\n\n--- Insights ---\n{insights.render()}\n\n"
        f"name: {name}\nsuccess: {'true' if success else 'false'}\n"
    )


@dataclass
class ParsedBlock:
    table: pd.DataFrame
    timestamp: str
    insights: Insights
    name: str
    success: bool


def parse_block(text: str) -> ParsedBlock:
    head, sep, rest = text.partition("--- Insights ---")
    if not sep:
        raise ValueError("not an iteration block: no '--- Insights ---' line")
    stamp = re.search(r"^\s*(\d{8}_\d{6})\s*$", head, flags=re.M)
    if not stamp:
        raise ValueError("not an iteration block: no YYYYMMDD_HHMMSS timestamp before the insights")
    table = parse_table(head[: stamp.start()])
    name = re.search(r"^name:\s*(\S+)\s*$", rest, flags=re.M)
    success = re.search(r"^success:\s*(true|false)\s*$", rest, flags=re.M)
    if not name or not success:
        raise ValueError("not an iteration block: it must end with 'name: ...' and 'success: true|false'")
    body = rest[: name.start()]
    titles = list(SECTIONS.values())
    positions = []
    for title in titles:
        match = re.search(rf"^\s*{re.escape(title)}\s*$", body, flags=re.M)
        if not match:
            raise ValueError(f"iteration block lacks the section {title!r}")
        positions.append((match.start(), match.end()))
    sections = {}
    for i, key in enumerate(SECTIONS):
        end = positions[i + 1][0] if i + 1 < len(positions) else len(body)
        sections[key] = body[positions[i][1] : end].strip()
    return ParsedBlock(table=table, timestamp=stamp.group(1), insights=Insights(**sections), name=name.group(1),
                       success=success.group(1) == "true")
