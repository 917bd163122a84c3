"""The history table in the seeds' format (`accuracies_df`): one row per architecture, one column per task.

It is printed the way the seeds show it: a pandas DataFrame read back from CSV, whose name column is
therefore called `Unnamed: 0`, printed with `to_string()`. `parse_table` reads such a block back.
"""

from __future__ import annotations

import io
import re
from typing import Mapping

import pandas as pd

from mixerlab.tasks import TASK_ORDER

COLUMNS = [task.column for task in TASK_ORDER]
NAME_COLUMN = "Unnamed: 0"


def accuracies_df(rows: Mapping[str, Mapping[str, float]]) -> pd.DataFrame:
    """rows: architecture name -> {task (snake case or column title): accuracy}. Missing tasks are NaN."""
    records = []
    for name, scores in rows.items():
        record = {NAME_COLUMN: name}
        for task in TASK_ORDER:
            record[task.column] = scores.get(task.value, scores.get(task.column, float("nan")))
        records.append(record)
    return pd.DataFrame(records, columns=[NAME_COLUMN, *COLUMNS])


def format_table(df: pd.DataFrame) -> str:
    """pandas' `to_string()`, header line flush left as in the seeds; the header alone when no row is done."""
    if df.empty:
        return "  ".join([NAME_COLUMN, *COLUMNS]) + "\n(no finished experiments yet)"
    lines = df.to_string().splitlines()
    return "\n".join([lines[0].lstrip(), *lines[1:]])


def parse_table(text: str) -> pd.DataFrame:
    """Parse a printed table (header line with `Unnamed: 0` and the six columns, then one line per row)."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines or not lines[0].strip().startswith(NAME_COLUMN):
        raise ValueError("not a history table: the first line must start with 'Unnamed: 0'")
    header = lines[0]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ValueError(f"history table lacks the columns {missing}")
    records = []
    for line in lines[1:]:
        parts = line.split()
        if len(parts) < 2 + len(COLUMNS) or not re.fullmatch(r"\d+", parts[0]):
            raise ValueError(f"cannot parse table row {line!r}")
        name = " ".join(parts[1 : len(parts) - len(COLUMNS)])
        values = [float(v) for v in parts[-len(COLUMNS) :]]
        records.append({NAME_COLUMN: name, **dict(zip(COLUMNS, values))})
    return pd.DataFrame(records, columns=[NAME_COLUMN, *COLUMNS])


def to_csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.set_index(NAME_COLUMN).rename_axis(None).to_csv(buf)
    return buf.getvalue()
