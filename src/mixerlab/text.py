"""Text that came from candidate code (error messages, tracebacks, printed output, names) made safe to show.

Such text reaches a terminal, the database, HTML pages, Markdown reports and the LLM's prompt. Markup is each
writer's to escape (Rich with markup off or `escape`, Jinja's autoescape, `html.escape`); what no writer
escapes is taken out here, once, where the text enters the trusted side: control characters (ANSI escape
sequences could clear or retitle a terminal) are shown as `\\xNN`, and the length is bounded.
"""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, and C1 controls (U+0080-U+009F, which some terminals also obey)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def shown(text: str, limit: int = 2000) -> str:
    """`text` with control characters as visible `\\xNN` escapes, cut to at most `limit` characters."""
    if len(text) > 4 * limit:  # a megabyte of output is cut before it is scanned
        text = text[: 4 * limit]
    safe = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return safe if len(safe) <= limit else safe[: limit - 15] + " ... (cut here)"
