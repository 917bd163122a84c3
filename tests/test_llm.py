"""The LLM proposer: robust parsing, every endpoint fault with its documented retry behaviour, and the real
path against llama.cpp's OpenAI-compatible server with SmolLM2-135M."""

from __future__ import annotations

import time

import pytest

from mixerlab.mixers import template_source
from mixerlab.propose import ExperimentView, ProposalContext
from mixerlab.propose.llm import LLMClient, LLMError, LLMProposer, LLMSettings, parse_reply, salvage_json
from services import FaultServer, free_port, llama_server

SECTIONS_JSON = '"observations": "o", "code_issues": "c", "reasoning": "r", "expected": "e", "lessons": "l"'


def context() -> ProposalContext:
    parent = ExperimentView(name="delta_net_4layer", kind="baseline", parent=None, edits=[], status="done", success=True,
                            scores={"compress": {"mean": 0.5, "std": 0.0, "seeds": [0.5]}}, mean_score=0.5,
                            code=template_source("delta_net"))
    return ProposalContext(history=[parent], parent=parent, references=[], iteration=1, taken_names={"delta_net_4layer"})


def settings(url: str, **kw) -> LLMSettings:
    return LLMSettings(base_url=url, max_retries=2, format_retries=1, backoff_s=0.05, timeout_s=5, **kw)


def test_parse_json_fenced_json_and_tagged_sections() -> None:
    plain = parse_reply('{"name": "delta_net_4layer_a", "code": "class DeltaNet: pass", "targets": {"compress": 0.6}, ' + SECTIONS_JSON + "}")
    assert plain.name == "delta_net_4layer_a" and plain.targets == {"compress": 0.6} and plain.insights.lessons == "l"
    fenced = parse_reply('Here you go:\n```json\n{"name": "n", "code": "```python\\nclass DeltaNet: pass\\n```", ' + SECTIONS_JSON + "}\n```")
    assert fenced.code.strip() == "class DeltaNet: pass"
    tagged = parse_reply("<name>delta_net_4layer_b</name>\nKey Observations from Experiment Results\nobs\n"
                         "Specific Code Issues Identified\nissue\nTechnical Reasoning for Proposed Change\nwhy\n"
                         "Expected Improvements\nmore\nLessons from Historical Attempts\nless\n"
                         "<code>\n```python\nclass DeltaNet: pass\n```\n</code>")
    assert tagged.name == "delta_net_4layer_b" and tagged.insights.reasoning == "why" and "class DeltaNet" in tagged.code
    with pytest.raises(ValueError, match="lacks name, code"):
        parse_reply("I think you should add a gate.")
    missing = parse_reply('{"name": "n", "code": ""}')  # empty sections are marked, the checker judges the code
    assert "wrote nothing" in missing.insights.observations
    assert salvage_json('{"name": "n", "code": "class A:\\n    pa') == {"name": "n", "code": "class A:\n    pa"}


@pytest.fixture()
def fault():
    server = FaultServer()
    yield server
    server.close()


def test_the_structured_form_a_server_accepts_is_remembered_across_plain_requests(monkeypatch) -> None:
    """A server that refuses json_schema is asked in json_object from then on; a plain request (no schema) between
    two structured ones does not make the next structured one skip straight to no format."""
    from mixerlab.propose import llm

    client = LLMClient(settings("http://127.0.0.1:9"))
    asked: list[str | None] = []

    def chat(messages, form, response_schema=None):
        asked.append(form)
        if form == "json_schema":
            raise llm._SchemaRefused()
        return "reply"

    monkeypatch.setattr(client, "_chat", chat)
    assert client.chat([], schema=True) == "reply" and asked == ["json_schema", "json_object"]
    client.chat([], schema=False)
    client.chat([], schema=True)
    assert asked == ["json_schema", "json_object", None, "json_object"]


def test_http_500_and_429_are_retried_with_backoff(fault: FaultServer) -> None:
    fault.mode, fault.fail_times = "500", 2
    proposal = LLMProposer(settings(fault.url)).propose(context())
    assert proposal.name == "delta_net_4layer_fault_test" and fault.requests == 3
    assert proposal.tokens.prompt == 100 and proposal.tokens.completion == 20 and proposal.tokens.calls == 1
    fault.mode, fault.fail_times, fault.requests = "429", 1, 0
    LLMProposer(settings(fault.url)).propose(context())
    assert fault.requests == 2
    fault.mode, fault.fail_times, fault.requests = "500", 10, 0
    with pytest.raises(LLMError, match=r"HTTP 500 .*gave up after 3 attempts"):
        LLMProposer(settings(fault.url)).propose(context())
    assert fault.requests == 3


def test_garbage_and_truncated_replies_get_clear_errors(fault: FaultServer) -> None:
    fault.mode = "garbage"
    with pytest.raises(LLMError, match="not with a chat completion"):
        LLMProposer(settings(fault.url)).propose(context())
    fault.mode, fault.requests = "truncated", 0
    with pytest.raises(LLMError, match="cut off at max_tokens"):
        LLMProposer(settings(fault.url)).propose(context())
    assert fault.requests == 2  # asked once more (format_retries=1)


def test_timeouts_server_down_and_missing_key(fault: FaultServer, monkeypatch) -> None:
    fault.mode = "timeout"
    start = time.monotonic()
    with pytest.raises(LLMError, match="no reply from .* within 1 s"):
        LLMClient(settings(fault.url).model_copy(update={"timeout_s": 1.0, "max_retries": 1})).chat([], False)
    assert time.monotonic() - start < 10
    with pytest.raises(LLMError, match="cannot reach http://127.0.0.1:.*is the server running"):
        LLMClient(settings(f"http://127.0.0.1:{free_port()}/v1")).chat([], False)
    monkeypatch.delenv("MY_KEY", raising=False)
    with pytest.raises(LLMError, match="set the environment variable MY_KEY"):
        LLMClient(settings(fault.url, api_key_env="MY_KEY", require_key=True))


@pytest.fixture(scope="module")
def llama_url():
    """One llama.cpp server (SmolLM2-135M) for the module's tests: a start costs seconds of model loading."""
    with llama_server() as url:
        yield url


@pytest.mark.slow
def test_real_llama_cpp_server_answers_a_proposal(llama_url: str) -> None:
    # one card: a 2.9k-token prompt instead of 3.8k, read at ~100 tokens/s by SmolLM2 on one CPU
    proposer = LLMProposer(LLMSettings(base_url=llama_url, max_tokens=400, temperature=0.0, timeout_s=240, cards=1))
    proposal = proposer.propose(context())
    assert proposal.name.startswith("delta_net_4layer_")
    assert proposal.tokens.prompt > 1000 and proposal.tokens.completion > 0  # the real prompt and reply, counted
    assert isinstance(proposal.code, str)
    assert "Knowledge cards given to the model: [" in proposal.insights.reasoning


@pytest.mark.slow
def test_a_small_model_picks_design_choices_that_render_valid_code(llama_url: str) -> None:
    from mixerlab.check.static import static_check
    from mixerlab.propose import space

    proposer = LLMProposer(LLMSettings(base_url=llama_url, max_tokens=300, temperature=0.0, timeout_s=240, format="choices"))
    proposal = proposer.propose(context())
    child = space.from_edits(proposal.edits)
    assert child is not None and child != space.canonical({}), "the model changed at least one axis of DeltaNet"
    assert proposal.code == space.render(child) and static_check(proposal.code)[0].passed
    assert proposal.insights.reasoning.startswith("The model's reasoning:") and "Cards drawn on: [" in proposal.insights.reasoning
    assert proposal.tokens.completion > 0


def test_the_llm_settings_are_typed_with_the_run_config() -> None:
    """The run's config carries LLMSettings, not a dict: a wrong field or value is refused, named, at the start."""
    from pydantic import ValidationError

    from mixerlab.config import LoopConfig

    config = LoopConfig(run_dir="r", llm={"base_url": "http://127.0.0.1:9/v1", "cards": 2})
    assert isinstance(config.llm, LLMSettings) and config.llm.cards == 2 and config.llm.max_retries == 4
    assert LoopConfig.model_validate(config.model_dump(mode="json")).llm == config.llm  # as a run records it
    with pytest.raises(ValidationError, match="llm.temperature"):
        LoopConfig(run_dir="r", llm={"temperature": -1})
    with pytest.raises(ValidationError, match="llm.max_token"):
        LoopConfig(run_dir="r", llm={"max_token": 10})  # a misspelt field is not silently dropped
