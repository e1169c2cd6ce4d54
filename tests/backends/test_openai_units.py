"""The OpenAI backend's pure parts: the <think> splitter, base URLs, settings."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rtxrelay.app.settings import BackendFamily, load_settings
from rtxrelay.backends.openai.client import _is_context_error, _retry_after
from rtxrelay.backends.openai.reasoning import Split, ThinkSplitter
from rtxrelay.backends.openai.settings import OpenAiSettings, OpenAiTimeouts, parse_base_url
from rtxrelay.core.errors import ConfigError


def run(pieces: list[str]) -> tuple[str, str]:
    """Feed pieces; return (reasoning, answer) as a reader would end up with."""
    splitter = ThinkSplitter()
    reasoning, answer = "", ""
    for split in [*(splitter.feed(p) for p in pieces), splitter.finish()]:
        reasoning += split.reasoning
        answer = ("" if split.retracted else answer) + split.answer
    return reasoning, answer


def cuts(text: str, points: list[int]) -> list[str]:
    bounds = sorted({0, len(text), *(p % (len(text) + 1) for p in points)})
    return [text[a:b] for a, b in itertools.pairwise(bounds)]


@pytest.mark.parametrize(("text", "reasoning", "answer"), [
    ("<think>hmm, 2+2</think>\n\nIt is 4.", "hmm, 2+2", "It is 4."),
    ("  <think>x</think>Yes", "x", "Yes"),
    ("No thoughts here.", "", "No thoughts here."),
    # A tag later in an answer is text (a model explaining HTML).
    ("Use the <think> tag like </think> this.", "", "Use the <think> tag like </think> this."),
    # The template opened the block in the prompt: only the closing tag shows.
    ("pondering…</think>\nThe answer.", "pondering…", "The answer."),
    ("<think>never closed", "never closed", ""),
    ("<thi", "", "<thi"),  # a stream that ends on what looked like a tag
])
def test_think_blocks_are_split_off(text: str, reasoning: str, answer: str) -> None:
    assert run([text]) == (reasoning, answer)


@given(st.lists(st.integers(min_value=0, max_value=200), max_size=12))
def test_any_chunking_gives_the_same_split(points: list[int]) -> None:
    for text in ("<think>a < b, so </thi not yet</think>\n\nDone <b>.",
                 "Mention <think> then </think> in text.",
                 "plain answer with < and </ signs", "reason</think>answer"):
        assert run(cuts(text, points)) == run([text])


def test_a_retraction_drops_what_was_shown() -> None:
    splitter = ThinkSplitter()
    assert splitter.feed("Let me think") == Split(answer="Let me think")
    split = splitter.feed(" more</think>Four.")
    assert split == Split(reasoning="Let me think more", answer="Four.", retracted=True)


@pytest.mark.parametrize(("raw", "expected"), [
    ("http://localhost:11434", "http://localhost:11434/v1"),
    ("http://127.0.0.1:8080/v1/", "http://127.0.0.1:8080/v1"),
    (" https://box.lan/api/v1 ", "https://box.lan/api/v1"),
])
def test_base_urls_are_normalised(raw: str, expected: str) -> None:
    assert parse_base_url(raw).base == expected


@pytest.mark.parametrize("raw", ["localhost:11434", "ftp://x/v1", "http://x/v1?key=1", "http://"])
def test_bad_base_urls_say_what_they_should_look_like(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_base_url(raw)
    assert caught.value.setting == "OPENAI_BASE_URL" and "http://localhost" in caught.value.hint


def test_a_key_never_crosses_a_network_in_clear_unless_allowed() -> None:
    remote = OpenAiSettings("http://192.168.1.20:11434/v1", api_key="sk-secret")
    with pytest.raises(ConfigError, match="unencrypted"):
        remote.endpoint()
    OpenAiSettings("http://192.168.1.20:11434/v1").endpoint()  # no key: nothing to leak
    OpenAiSettings("http://192.168.1.20:11434/v1", api_key="k", allow_remote_http=True).endpoint()
    OpenAiSettings("https://gpu.example/v1", api_key="k").endpoint()


def test_the_backend_family_follows_the_settings() -> None:
    openai = load_settings({"OPENAI_BASE_URL": "http://localhost:11434/v1"}, None)
    assert openai.family is BackendFamily.OPENAI
    assert openai.limits.max_concurrent_jobs == 4 and not openai.jobs_set
    chatrtx = load_settings({"RTX_URL": "http://127.0.0.1:5000?cookie=x"}, None)
    assert chatrtx.family is BackendFamily.CHATRTX and chatrtx.limits.max_concurrent_jobs == 1
    pinned = load_settings({"OPENAI_BASE_URL": "http://x:1/v1", "MAX_CONCURRENT_JOBS": "2"}, None)
    assert pinned.limits.max_concurrent_jobs == 2 and pinned.jobs_set
    with pytest.raises(ConfigError, match="Both RTX_URL and OPENAI_BASE_URL") as caught:
        load_settings({"RTX_URL": "http://127.0.0.1:5000?cookie=x",
                       "OPENAI_BASE_URL": "http://localhost:11434/v1"}, None)
    assert caught.value.setting == "OPENAI_BASE_URL"


def test_retry_after_in_seconds_or_as_a_date() -> None:
    assert _retry_after("7") == 7.0
    assert _retry_after(None) == 5.0 and _retry_after("soon") == 5.0
    assert 0.0 <= _retry_after("Wed, 21 Oct 2015 07:28:00 GMT") <= 0.0  # in the past: now


@pytest.mark.parametrize("body", [
    {"error": {"code": 400, "message": "the request exceeds the available context size, try "
               "increasing it", "type": "exceed_context_size_error"}},
    {"error": {"message": "This model's maximum context length is 2048 tokens. However, you "
               "requested 4000 tokens.", "type": "BadRequestError", "code": 400}},
    {"error": {"message": "x", "type": "invalid_request_error", "code": "context_length_exceeded"}},
])
def test_context_errors_are_told_from_other_400s(body: dict[str, object]) -> None:
    import json

    assert _is_context_error(body, json.dumps(body))
    other = {"error": {"message": "'messages' must not be empty", "type": "invalid_request"}}
    assert not _is_context_error(other, json.dumps(other))


def test_every_openai_setting_is_read() -> None:
    """Each OPENAI_* setting the README lists reaches the backend's settings."""
    from rtxrelay.core.env import Env

    settings = OpenAiSettings.from_env(Env({
        "OPENAI_BASE_URL": "http://localhost:1234", "OPENAI_API_KEY": "k",
        "OPENAI_MODEL": "m", "SYSTEM_PROMPT": "Be brief.", "OPENAI_TEMPERATURE": "0.5",
        "OPENAI_MAX_TOKENS": "300", "OPENAI_CONNECT_TIMEOUT": "3",
        "OPENAI_FIRST_TOKEN_TIMEOUT": "40", "OPENAI_IDLE_TIMEOUT": "50",
        "OPENAI_TOTAL_TIMEOUT": "600", "OPENAI_BUSY_WAIT": "7",
        "OPENAI_ALLOW_REMOTE_HTTP": "1"}))
    assert (settings.api_key, settings.model, settings.system_prompt) == ("k", "m", "Be brief.")
    assert (settings.temperature, settings.max_tokens, settings.busy_wait) == (0.5, 300, 7.0)
    assert settings.timeouts == OpenAiTimeouts(3.0, 40.0, 50.0, 600.0)
    assert settings.allow_remote_http and settings.endpoint().base == "http://localhost:1234/v1"
    with pytest.raises(ConfigError, match="OPENAI_TEMPERATURE"):
        OpenAiSettings.from_env(Env({"OPENAI_TEMPERATURE": "hot"}))


def test_every_api_setting_is_read() -> None:
    from rtxrelay.app.serve import ApiSettings
    from rtxrelay.core.env import Env

    api = ApiSettings.from_env(Env({
        "RTXRELAY_API_HOST": "0.0.0.0", "RTXRELAY_API_PORT": "9000",
        "RTXRELAY_API_KEY": "k", "RTXRELAY_API_CORS_ORIGINS": "http://a:3000/, http://b",
        "RTXRELAY_API_MAX_WAITING": "3"}))
    assert api == ApiSettings("0.0.0.0", 9000, "k", ("http://a:3000", "http://b"), 3)
    assert ApiSettings.from_env(Env({}), host="::1", port=0).host == "::1"
    with pytest.raises(ConfigError, match="without a key"):
        ApiSettings.from_env(Env({"RTXRELAY_API_HOST": "0.0.0.0"}))
