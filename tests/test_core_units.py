"""Pure pieces of the core: SSE parsing, Gradio diffs, ChatRTX HTML, launch URL, settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from rtxrelay.core.chatrtx_html import convert_answer, scrub_paths
from rtxrelay.core.config import load_settings
from rtxrelay.core.errors import BackendError, BackendErrorKind, ConfigError
from rtxrelay.core.gradio_diff import apply_diff
from rtxrelay.core.launch_url import parse_launch_url
from rtxrelay.core.sse import SseParser
from tests.replica import fake_model

# -- SSE ------------------------------------------------------------------------------------------


def test_sse_events_split_across_chunks_and_line_endings() -> None:
    parser = SseParser()
    stream = b'data: {"msg":"a"}\n\ndata: {"msg":\r\n\r\n: comment\n\ndata:{"msg":"c"}\n\n'
    events: list[str] = []
    for i in range(len(stream)):  # one byte at a time: the worst chunking
        events += parser.feed(stream[i:i + 1])
    assert events == ['{"msg":"a"}', '{"msg":', '{"msg":"c"}']
    assert not parser.has_partial_event


def test_sse_large_event_and_cut_stream() -> None:
    parser = SseParser()
    big = "x" * 300_000  # beyond aiohttp's 64 KiB readline limit
    assert parser.feed(f"data: {big}\n\n".encode()) == [big]
    assert parser.feed(b'data: {"msg":"process_gen') == []
    assert parser.has_partial_event


# -- diffs ----------------------------------------------------------------------------------------


def test_gradio_diff_operations() -> None:
    history = [["hi", "Hel"]]
    history = apply_diff(history, [["append", [0, 1], "lo"]])
    assert history == [["hi", "Hello"]]
    history = apply_diff(history, [["replace", [0, 1], "Bye"], ["add", [1], ["q", None]]])
    assert history == [["hi", "Bye"], ["q", None]]
    history = apply_diff(history, [["delete", [0], None]])
    assert history == [["q", None]]
    assert apply_diff("ab", [["append", [], "c"]]) == "abc"
    assert apply_diff({"k": 1}, [["replace", ["k"], 2], ["add", ["n"], 3]]) == {"k": 2, "n": 3}


def test_a_diff_that_does_not_fit_is_a_protocol_error() -> None:
    with pytest.raises(BackendError) as excinfo:
        apply_diff([["hi", "x"]], [["append", [5, 1], "y"]])
    assert excinfo.value.kind is BackendErrorKind.PROTOCOL
    with pytest.raises(BackendError):
        apply_diff([], [["explode", [0], 1]])


# -- ChatRTX HTML ---------------------------------------------------------------------------------


def test_references_become_file_names_without_paths() -> None:
    raw = fake_model.answer_text("tell me [refs]", [])
    converted = convert_answer(raw)
    assert converted.references == ("notes.txt", "report.pdf")
    assert converted.text.endswith("Reference files: notes.txt, report.pdf")
    for leak in ("C:\\", "Users", "Temp_Docs", "data-link", "<br>", "<a"):
        assert leak not in converted.text


def test_real_chatrtx_mixed_slash_reference_path() -> None:
    raw = ('RTX is fast.<br>Reference files:<br><a data-link="C:\\Users\\me\\AppData\\Local\\'
           'Temp/Temp_Docs\\1712\\secret plan.pdf">secret plan.pdf</a>')
    converted = convert_answer(raw)
    assert converted.text == "RTX is fast.\n\nReference files: secret plan.pdf"


def test_photo_mode_answer() -> None:
    converted = convert_answer(fake_model.images_answer())
    assert "<img" not in converted.text and "file/" not in converted.text
    assert "C:\\" not in converted.text
    assert "Matching pictures:" in converted.text


def test_model_html_stays_literal_and_partial_tags_wait() -> None:
    assert convert_answer("use <b>bold</b> & <script>").text == "use <b>bold</b> & <script>"
    assert convert_answer("line<br", streaming=True).text == "line"
    assert convert_answer('x<br>Reference files:<br><a data-link="C:\\a\\b', streaming=True).text \
        == "x\nReference files:"


def test_stray_local_paths_in_model_text_are_reduced_to_names() -> None:
    assert scrub_paths(r"see C:\Users\bob\Documents\plan.docx now") == "see plan.docx now"
    assert scrub_paths(r"share \\nas\team\q3.xlsx") == "share q3.xlsx"
    assert scrub_paths("ratio 3:4 and http://x/y") == "ratio 3:4 and http://x/y"


# -- launch URL -----------------------------------------------------------------------------------


def test_launch_url_from_the_whole_line() -> None:
    line = ("Open https://127.0.0.1:38017?cookie=5f1c6f0e-1f7c-4c2e-9d55-0c1f7d3e2a11&__theme=dark "
            "in browser to start Chat with RTX")
    url = parse_launch_url(line)
    assert (url.scheme, url.host, url.port) == ("https", "127.0.0.1", 38017)
    assert url.cookie == "5f1c6f0e-1f7c-4c2e-9d55-0c1f7d3e2a11"
    assert url.cookie_header == {"Cookie": "_s_chat_=5f1c6f0e-1f7c-4c2e-9d55-0c1f7d3e2a11"}
    assert "5f1c6f0e" not in url.redacted and url.is_loopback


@pytest.mark.parametrize(
    ("raw", "fix"),
    [
        ("", "RTX_URL"),
        ("127.0.0.1:7860", "http"),
        ("http://127.0.0.1?cookie=x", "PORT"),
        ("http://:99999", "PORT"),
    ],
)
def test_malformed_rtx_url_says_how_to_fix_it(raw: str, fix: str) -> None:
    with pytest.raises(BackendError) as excinfo:
        parse_launch_url(raw)
    assert excinfo.value.kind is BackendErrorKind.BAD_URL
    assert fix in str(excinfo.value)


# -- settings -------------------------------------------------------------------------------------


def test_settings_from_env_file_and_environment(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('RTX_URL="http://127.0.0.1:5000?cookie=abc"\nHISTORY_TURNS=3\n')
    settings = load_settings({"HISTORY_TURNS": "5"}, env_file)
    assert settings.backend.launch_url().port == 5000
    assert settings.limits.history_turns == 5  # the real environment wins over .env
    assert settings.env_file == env_file


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("HISTORY_TURNS", "lots", "HISTORY_TURNS='lots' is not a whole number"),
        ("MAX_CONCURRENT_JOBS", "0", "MAX_CONCURRENT_JOBS=0 is out of range"),
        ("RTX_IDLE_TIMEOUT", "-1", "RTX_IDLE_TIMEOUT=-1 is out of range"),
        ("RTX_INSECURE_LOCALHOST", "maybe", "is not a yes/no value"),
        ("LOG_LEVEL", "LOUD", "is not a log level"),
    ],
)
def test_malformed_settings_name_the_variable(name: str, value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as excinfo:
        load_settings({name: value}, None)
    assert expected in excinfo.value.message


def test_tls_settings(tmp_path: Path) -> None:
    https = "https://127.0.0.1:5000?cookie=a"
    remote = load_settings({"RTX_URL": "https://192.168.1.5:5000?cookie=a",
                            "RTX_INSECURE_LOCALHOST": "1"}, None)
    with pytest.raises(ConfigError) as excinfo:
        remote.backend.ssl_context(remote.backend.launch_url())
    assert "RTX_CA_FILE" in excinfo.value.hint
    local = load_settings({"RTX_URL": https, "RTX_INSECURE_LOCALHOST": "yes"}, None)
    assert local.backend.ssl_context(local.backend.launch_url()) is False
    missing = load_settings({"RTX_URL": https, "RTX_CA_FILE": str(tmp_path / "nope.pem")}, None)
    with pytest.raises(ConfigError):
        missing.backend.ssl_context(missing.backend.launch_url())
    with pytest.raises(ConfigError) as unset:
        load_settings({}, None).backend.launch_url()
    assert "discover" in unset.value.hint


@pytest.mark.parametrize(
    "question",
    ["a [refs] [len=3000]", "b [len=2000] [code]", "[images] x",
     "[echo] <b>x</b> C:\\Users\\a\\b.txt\n\n\n\nz"],
)
def test_streaming_converter_matches_full_conversion(question: str) -> None:
    from rtxrelay.core.chatrtx_html import StreamingConverter

    converter = StreamingConverter()
    for chunk in fake_model.answer_stream(question, []):
        assert converter.feed(chunk) == convert_answer(chunk, streaming=True).text


def test_log_redaction_masks_tokens_cookie_and_tracebacks() -> None:
    import logging

    from rtxrelay.core.log_redaction import MASK, RedactingFormatter, secrets_of

    token = "7000001234:AAsecretsecretsecret"
    secrets = [*secrets_of({"TELEGRAM_TOKEN": token, "DISCORD_TOKEN": "x"}), "cookie-uuid-1234"]
    formatter = RedactingFormatter(logging.Formatter("%(message)s"), secrets)
    try:
        raise ValueError(f"The token `{token}` was rejected")
    except ValueError:
        import sys

        record = logging.LogRecord("t", logging.ERROR, __file__, 1,
                                   "POST /bot%s/getMe cookie=%s", (token, "cookie-uuid-1234"),
                                   sys.exc_info())
    text = formatter.format(record)
    assert token not in text and "AAsecretsecretsecret" not in text
    assert "cookie-uuid-1234" not in text and MASK in text
    assert "rejected" in text  # the rest of the line and the traceback stay readable
    assert "x" in formatter.format(logging.LogRecord("t", 20, __file__, 1, "x", (), None))
