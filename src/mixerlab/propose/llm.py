"""The language-model proposer: any OpenAI-compatible chat endpoint (OpenAI, vLLM, llama.cpp's server,
Ollama), over HTTP with httpx.

- Prompt: the history table, the parent's code, reference experiments and lessons so far (prompts.py).
- Output: a JSON object (name, the five Insights sections, per-task targets, the full code). Structured
  output is requested in the first form the server accepts: OpenAI's `json_schema`, then llama.cpp's
  `json_object` with a schema (both enforced by constrained decoding), then none (the reply is parsed from
  JSON or tagged sections). Whatever code comes back goes to the checker: broken code is the checker's to
  reject, with a reason, never a crash.
- Faults: connection errors, timeouts, HTTP 429 and 5xx are retried with exponential backoff (honouring
  Retry-After) up to `max_retries` times; a malformed or truncated reply is asked for again, up to
  `format_retries` times, with the parse error quoted. Every failure ends in an `LLMError` whose message
  names the problem and the fix; the loop records it and carries on.
- Accounting: prompt and completion tokens from `usage` per call, and their cost at the configured prices.
"""

from __future__ import annotations

import json
import os
import random
import re
import threading
import time
from dataclasses import dataclass

import httpx
from pydantic import BaseModel

from mixerlab.config import LLMSettings  # defined with every other setting
from mixerlab.insights import SECTIONS, Insights, snake_case, valid_name

from .base import BaseProposer, Proposal, ProposalContext, ProposerError, TASK_NAMES, TokenUse, unique_name
from . import space
from .prompts import choices_system_prompt, choices_user_prompt, repair_messages, retrieved_cards, system_prompt, user_prompt


class LLMError(ProposerError):
    """The endpoint or its reply could not be used; the message says what to fix."""


# name and code first: constrained decoders emit properties in this order, so a reply cut off by the token
# limit still carries the code (and is closed and used, see `salvage_json`)
RESPONSE_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 100},
        "code": {"type": "string"},
        "targets": {"type": "object", "properties": {t: {"type": "number"} for t in TASK_NAMES}},
        **{key: {"type": "string"} for key in SECTIONS},
    },
    "required": ["name", "code", "targets", *SECTIONS],
}


@dataclass
class Reply:
    text: str
    tokens: TokenUse
    truncated: bool


class LLMClient:
    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        key = os.environ.get(settings.api_key_env, "")
        if settings.require_key and not key:
            raise LLMError(f"no API key: set the environment variable {settings.api_key_env} (or pass --api-key-env)")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self.http = httpx.Client(base_url=settings.base_url.rstrip("/"), headers=headers,
                                 timeout=httpx.Timeout(settings.timeout_s, connect=10.0))
        self._rate_lock = threading.Lock()
        self._next_call = 0.0
        self._form: str | None = self.FORMATS[0]  # the structured-output form this server last accepted

    def _wait_for_rate_limit(self) -> None:
        """Space calls at least 60 / max_calls_per_minute seconds apart (shared by every thread)."""
        if not self.settings.max_calls_per_minute:
            return
        with self._rate_lock:
            now = time.monotonic()
            wait = self._next_call - now
            self._next_call = max(now, self._next_call) + 60.0 / self.settings.max_calls_per_minute
        if wait > 0:
            time.sleep(wait)

    FORMATS = ("json_schema", "json_object", None)

    def chat(self, messages: list[dict], schema: bool, response_schema: dict | None = None) -> Reply:
        """One chat completion; structured output in the first form this server accepts."""
        forms = self.FORMATS if schema else (None,)
        start = forms.index(self._form) if self._form in forms else 0
        for form in forms[start:]:
            try:
                reply = self._chat(messages, form, response_schema or RESPONSE_SCHEMA)
            except _SchemaRefused:
                continue
            if schema:  # a plain request says nothing of which structured form the server takes
                self._form = form
            return reply
        raise LLMError("the endpoint refused every request format")  # pragma: no cover - None is never refused

    def _chat(self, messages: list[dict], form: str | None, response_schema: dict = RESPONSE_SCHEMA) -> Reply:
        body = {"model": self.settings.model, "messages": messages, "max_tokens": self.settings.max_tokens,
                "temperature": self.settings.temperature}
        if form == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "mixer_proposal", "schema": response_schema, "strict": False}}
        elif form == "json_object":
            body["response_format"] = {"type": "json_object", "schema": response_schema}
        schema = form is not None
        last = ""
        for attempt in range(self.settings.max_retries + 1):
            self._wait_for_rate_limit()
            try:
                response = self.http.post("/chat/completions", json=body)
            except httpx.TimeoutException:
                last = f"no reply from {self.settings.base_url} within {self.settings.timeout_s:.0f} s (raise --llm-timeout?)"
            except httpx.HTTPError as err:
                last = f"cannot reach {self.settings.base_url} ({type(err).__name__}); is the server running and --base-url right?"
            else:
                if response.status_code == 200:
                    return self._parse_response(response)
                if schema and response.status_code >= 400 and "response_format" in response.text:
                    raise _SchemaRefused(response.text[:300])
                if response.status_code in (401, 403):
                    raise LLMError(f"{self.settings.base_url} refused the credentials (HTTP {response.status_code}); "
                                   f"check the key in {self.settings.api_key_env}")
                if response.status_code == 404:
                    raise LLMError(f"{self.settings.base_url}/chat/completions not found (HTTP 404); "
                                   "--base-url must point at an OpenAI-compatible /v1 endpoint")
                if response.status_code != 429 and response.status_code < 500:
                    raise LLMError(f"HTTP {response.status_code} from {self.settings.base_url}: {response.text[:200]}")
                last = f"HTTP {response.status_code} from {self.settings.base_url}"
                retry_after = response.headers.get("retry-after")
                if retry_after and retry_after.replace(".", "").isdigit() and attempt < self.settings.max_retries:
                    time.sleep(min(60.0, float(retry_after)))
                    continue
            if attempt < self.settings.max_retries:
                time.sleep(self.settings.backoff_s * 2**attempt * (1 + 0.1 * random.random()))
        raise LLMError(f"{last}; gave up after {self.settings.max_retries + 1} attempts")

    def _parse_response(self, response: httpx.Response) -> Reply:
        try:
            data = response.json()
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
        except (ValueError, KeyError, IndexError, TypeError):
            raise _Malformed(f"the endpoint answered 200 but not with a chat completion: {response.text[:200]!r}") from None
        usage = data.get("usage") or {}
        prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        cost = prompt / 1000 * self.settings.price_prompt_per_1k + completion / 1000 * self.settings.price_completion_per_1k
        return Reply(text=text, tokens=TokenUse(prompt=prompt, completion=completion, calls=1, cost=cost),
                     truncated=choice.get("finish_reason") == "length")


class _SchemaRefused(Exception):
    pass


class _Malformed(Exception):
    pass


class ParsedReply(BaseModel):
    name: str
    insights: Insights
    targets: dict[str, float]
    code: str


def parse_reply(text: str) -> ParsedReply:
    """A JSON object (possibly inside a ```json fence) or tagged sections (<name>, <code>, ## headings)."""
    data = _json_object(text)
    if data is None:
        data = _tagged(text)
    missing = [k for k in ("name", "code") if k not in data]
    if missing:
        raise ValueError(f"the reply lacks {', '.join(missing)}")
    code = _strip_fence(str(data["code"]))  # whatever it is, the checker judges it
    targets = {}
    for task, value in (data.get("targets") or {}).items():
        try:
            targets[str(task)] = max(0.0, min(1.0, float(value)))
        except (TypeError, ValueError):
            continue
    sections = {k: str(data.get(k) or "").strip() or "(the model wrote nothing for this section)" for k in SECTIONS}
    return ParsedReply(name=str(data["name"]), insights=Insights(**sections), targets=targets, code=code)


def salvage_json(text: str) -> dict | None:
    """Close a JSON object cut off by the token limit (an open string, then open brackets)."""
    start = text.find("{")
    if start == -1:
        return None
    body, stack, in_string, escaped = text[start:], [], False, False
    for ch in body:
        if in_string:
            escaped = (ch == "\\") and not escaped
            if ch == '"' and not escaped:
                in_string = False
            continue
        if ch == '"':
            in_string = True
        elif ch in "{[":
            stack.append("}" if ch == "{" else "]")
        elif ch in "}]" and stack:
            stack.pop()
    closing = ('"' if in_string else "") + "".join(reversed(stack))
    return _first_object([body + closing, body.rstrip().rstrip(",:") + closing])


def _first_object(candidates: list[str]) -> dict | None:
    """The first candidate text that parses as a JSON object."""
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict):
            return value
    return None


def _json_object(text: str) -> dict | None:
    fenced = re.search(r"```(?:json)?\s*(\{.*\})\s*```", text, flags=re.S)
    candidates = [fenced.group(1)] if fenced else []
    start, end = text.find("{"), text.rfind("}")
    if start != -1 and end > start:
        candidates.append(text[start : end + 1])
    return _first_object(candidates)


def _tagged(text: str) -> dict:
    data: dict = {}
    for tag in ("name", "code", "targets"):
        match = re.search(rf"<{tag}>(.*?)</{tag}>", text, flags=re.S | re.I)
        if match:
            data[tag] = match.group(1).strip()
    if isinstance(data.get("targets"), str):
        data["targets"] = _json_object(data["targets"]) or {}
    if "code" not in data:
        block = re.search(r"```python\s*(.*?)```", text, flags=re.S)
        if block:
            data["code"] = block.group(1)
    for key, title in SECTIONS.items():
        match = re.search(rf"^#*\s*{re.escape(title)}\s*$(.*?)(?=^#*\s*(?:{'|'.join(map(re.escape, SECTIONS.values()))})\s*$|<code>|```|\Z)",
                          text, flags=re.S | re.M | re.I)
        if match:
            data[key] = match.group(1).strip()
    return data


def _strip_fence(code: str) -> str:
    match = re.search(r"```(?:python)?\s*(.*?)```", code, flags=re.S)
    return (match.group(1) if match else code).strip() + "\n"


# the choices format: a name, one option per axis the model wants to change (enums: constrained decoding cannot
# produce an invalid one), a short reasoning, and code only where the model goes beyond the space
CHOICES_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},  # no maxLength: llama.cpp expands it into a grammar too large to parse
        "choices": {"type": "object", "properties": {a.name: {"type": "string", "enum": a.names} for a in space.AXES},
                    "additionalProperties": False},
        "reasoning": {"type": "string"},
    },
    "required": ["name", "choices", "reasoning"],
}


def parse_choices(text: str) -> tuple[str, dict[str, str], str]:
    """(name, choices, reasoning) from a choices-format reply; unknown axes or options are named in the error."""
    data = _json_object(text) or salvage_json(text)
    if not data or not isinstance(data.get("choices"), dict):
        raise ValueError("the reply holds no JSON object with a `choices` object")
    choices = {}
    for axis, option in data["choices"].items():
        if axis not in space.AXES_BY_NAME:
            raise ValueError(f"unknown axis {axis!r}; axes: {', '.join(space.AXES_BY_NAME)}")
        if str(option) not in space.AXES_BY_NAME[axis].names:
            raise ValueError(f"axis {axis!r} has no option {option!r}; options: {', '.join(space.AXES_BY_NAME[axis].names)}")
        choices[axis] = str(option)
    return str(data.get("name") or ""), choices, str(data.get("reasoning") or "").strip()


class LLMProposer(BaseProposer):
    name = "llm"
    concurrent = True  # a model endpoint: slow, and nothing is kept between calls

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self.client = LLMClient(settings)

    @property
    def choices_format(self) -> bool:
        return self.settings.format == "choices"

    def eligible(self, e) -> bool:
        """Code format: any experiment. Choices format: those with a design-space vector."""
        if not self.choices_format:
            return True
        from .search import vector_of

        return vector_of(e) is not None

    def _ask(self, messages: list[dict]) -> tuple[ParsedReply, TokenUse]:
        used = TokenUse()
        schema = self.settings.use_json_schema
        problem = ""
        for attempt in range(self.settings.format_retries + 1):
            try:
                reply = self.client.chat(messages, schema)
            except _Malformed as err:
                problem = str(err)
                continue
            used = used + reply.tokens
            try:
                if reply.truncated:
                    salvaged = salvage_json(reply.text)
                    if not salvaged or "code" not in salvaged or "name" not in salvaged:
                        raise ValueError(f"the reply was cut off at max_tokens={self.settings.max_tokens} "
                                         "before it held a name and code (raise --max-tokens)")
                    return parse_reply(json.dumps(salvaged)), used
                return parse_reply(reply.text), used
            except ValueError as err:
                problem = str(err)
                messages = [*messages, {"role": "assistant", "content": reply.text[-4000:]},
                            {"role": "user", "content": f"Your reply could not be used: {problem}. Answer again with one JSON "
                                                        "object with the keys name, " + ", ".join(SECTIONS) + ", targets, code."}]
        raise LLMError(f"the model's reply was malformed {self.settings.format_retries + 1} times (last: {problem})", ) \
            if problem else LLMError("the model gave no usable reply")

    def _proposal(self, ctx: ProposalContext, parsed: ParsedReply, tokens: TokenUse) -> Proposal:
        change = snake_case(parsed.name.replace("delta_net_4layer_", "", 1))
        name = f"delta_net_4layer_{change}"
        if not valid_name(name):
            name = f"delta_net_4layer_change_{ctx.iteration}"
        targets = {t: v for t, v in parsed.targets.items() if t in TASK_NAMES}
        return Proposal(name=unique_name(name, ctx.taken_names), code=parsed.code, insights=parsed.insights,
                        expected=targets, edits=[], tokens=tokens)

    def propose(self, ctx: ProposalContext) -> Proposal:
        cards = retrieved_cards(ctx, self.settings.cards)
        if self.choices_format:
            return self._propose_choices(ctx, cards)
        messages = [{"role": "system", "content": system_prompt(ctx.language)},
                    {"role": "user", "content": user_prompt(ctx, cards)}]
        parsed, tokens = self._ask(messages)
        proposal = self._proposal(ctx, parsed, tokens)
        return _note_cards(proposal, cards)

    def _propose_choices(self, ctx: ProposalContext, cards: list, refused: set[tuple] = frozenset()) -> Proposal:
        from .search import SearchProposer, tried_designs, vector_of

        base = vector_of(ctx.parent)
        if base is None:
            raise LLMError(f"parent {ctx.parent.name!r} has no design-space vector; the choices format builds on "
                           "baselines and design-space candidates")
        messages = [{"role": "system", "content": choices_system_prompt()},
                    {"role": "user", "content": choices_user_prompt(ctx, base, cards)}]
        used, problem = TokenUse(), ""
        taken = tried_designs(ctx.history) | set(refused)
        for _ in range(self.settings.format_retries + 1):
            reply = self.client.chat(messages, self.settings.use_json_schema, CHOICES_SCHEMA)
            used = used + reply.tokens
            try:
                name, choices, reasoning = parse_choices(reply.text)
                child = space.canonical({**base, **choices})
                if child == space.canonical(base):
                    raise ValueError("the choices change nothing: pick at least one option different from the parent's")
                if tuple(sorted(child.items())) in taken:
                    raise ValueError(f"that design ({space.describe(child)}) was already tried; choose another")
            except ValueError as err:
                problem = str(err)
                messages = [*messages, {"role": "assistant", "content": reply.text[-2000:]},
                            {"role": "user", "content": f"Your reply could not be used: {problem}. Answer again."}]
                continue
            changed = [(a, base[a], child[a]) for a in space.AXES_BY_NAME if base[a] != child[a]]
            proposal = SearchProposer().proposal_for(ctx, child, weak_cards=[c.id for c in cards])
            insights = proposal.insights.model_copy(update={"reasoning": (
                f"The model's reasoning: {reasoning or '(none given)'}\n" + proposal.insights.reasoning)})
            label = snake_case(name.replace("delta_net_4layer_", "", 1)) if name else ""
            final = f"delta_net_4layer_{label}" if label and valid_name(f"delta_net_4layer_{label}") else \
                "delta_net_4layer_" + "_and_".join(f"{a}_{new}" for a, _, new in changed[:3])
            return proposal.model_copy(update={"name": unique_name(final, ctx.taken_names), "insights": insights,
                                               "tokens": used})
        raise LLMError(f"the model's choices were unusable {self.settings.format_retries + 1} times (last: {problem})")

    def repair(self, ctx: ProposalContext, proposal: Proposal, report: str) -> Proposal:
        if self.choices_format:  # rendered code that fails is the space's fault: ask for another design
            failed = space.from_edits(proposal.edits)
            refused = {tuple(sorted(failed.items()))} if failed else set()
            return self._propose_choices(ctx, retrieved_cards(ctx, self.settings.cards), refused)
        messages = [{"role": "system", "content": system_prompt(ctx.language)},
                    *repair_messages(ctx, proposal.code, proposal.insights, report)]
        parsed, tokens = self._ask(messages)
        repaired = self._proposal(ctx, parsed, tokens)
        # a repair fixes the code; the proposal's identity and its stated reasoning stay
        return proposal.model_copy(update={"code": repaired.code, "tokens": tokens})


def _note_cards(proposal: Proposal, cards: list) -> Proposal:
    """Say in Technical Reasoning which cards the model was given (and so could draw on)."""
    if not cards:
        return proposal
    listed = "; ".join(f"[{c.id}] {c.name} ({c.citation.authors} {c.citation.year})" for c in cards)
    reasoning = proposal.insights.reasoning.rstrip() + f"\n• Knowledge cards given to the model: {listed}."
    return proposal.model_copy(update={"insights": proposal.insights.model_copy(update={"reasoning": reasoning})})
