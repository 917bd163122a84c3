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

from mixerlab.insights import SECTIONS, Insights, snake_case, valid_name

from .base import Proposal, ProposalContext, ProposerError, TASK_NAMES, TokenUse, unique_name
from .prompts import repair_messages, system_prompt, user_prompt


class LLMError(ProposerError):
    """The endpoint or its reply could not be used; the message says what to fix."""


class LLMSettings(BaseModel):
    base_url: str = "http://127.0.0.1:8080/v1"
    model: str = "default"
    api_key_env: str = "OPENAI_API_KEY"
    require_key: bool = False  # hosted APIs need a key; local servers usually do not
    timeout_s: float = 300.0
    max_retries: int = 4
    format_retries: int = 2
    backoff_s: float = 1.0
    max_tokens: int = 4096
    temperature: float = 0.7
    use_json_schema: bool = True
    max_calls_per_minute: float | None = None  # the endpoint's rate limit: calls are spaced to respect it
    price_prompt_per_1k: float = 0.0
    price_completion_per_1k: float = 0.0


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

    def chat(self, messages: list[dict], schema: bool) -> Reply:
        """One chat completion; structured output in the first form this server accepts."""
        forms = self.FORMATS if schema else (None,)
        start = forms.index(getattr(self, "_form", forms[0])) if getattr(self, "_form", forms[0]) in forms else 0
        for form in forms[start:]:
            try:
                reply = self._chat(messages, form)
            except _SchemaRefused:
                continue
            self._form = form
            return reply
        raise LLMError("the endpoint refused every request format")  # pragma: no cover - None is never refused

    def _chat(self, messages: list[dict], form: str | None) -> Reply:
        body = {"model": self.settings.model, "messages": messages, "max_tokens": self.settings.max_tokens,
                "temperature": self.settings.temperature}
        if form == "json_schema":
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": "mixer_proposal", "schema": RESPONSE_SCHEMA, "strict": False}}
        elif form == "json_object":
            body["response_format"] = {"type": "json_object", "schema": RESPONSE_SCHEMA}
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


class LLMProposer:
    name = "llm"

    def __init__(self, settings: LLMSettings) -> None:
        self.settings = settings
        self.client = LLMClient(settings)

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
        messages = [{"role": "system", "content": system_prompt(ctx.language)}, {"role": "user", "content": user_prompt(ctx)}]
        parsed, tokens = self._ask(messages)
        return self._proposal(ctx, parsed, tokens)

    def repair(self, ctx: ProposalContext, proposal: Proposal, report: str) -> Proposal:
        messages = [{"role": "system", "content": system_prompt(ctx.language)},
                    *repair_messages(ctx, proposal.code, proposal.insights, report)]
        parsed, tokens = self._ask(messages)
        repaired = self._proposal(ctx, parsed, tokens)
        # a repair fixes the code; the proposal's identity and its stated reasoning stay
        return proposal.model_copy(update={"code": repaired.code, "tokens": tokens})
