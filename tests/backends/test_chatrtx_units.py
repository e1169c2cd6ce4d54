"""The Chat with RTX backend's pure pieces: SSE parsing, Gradio diffs, answer HTML, launch URL."""

from __future__ import annotations

import pytest

from rtxrelay.backends.chatrtx.answer_html import convert_answer, scrub_paths
from rtxrelay.backends.chatrtx.gradio_diff import appended_text, apply_diff, merge_diffs
from rtxrelay.backends.chatrtx.launch_url import parse_launch_url
from rtxrelay.backends.sse import SseParser
from rtxrelay.core.errors import BackendError, BackendErrorKind
from tests.replica import fake_model


def test_sse_events_split_across_chunks_and_line_endings() -> None:
    parser = SseParser()
    stream = b'data: {"msg":"a"}\n\ndata: {"msg":\r\n\r\n: comment\n\ndata:{"msg":"c"}\n\n'
    events: list[str] = []
    for i in range(len(stream)):  # one byte at a time: the worst chunking
        events += parser.feed(stream[i:i + 1])
    assert events == ['{"msg":"a"}', '{"msg":', '{"msg":"c"}']
    assert not parser.has_partial_event


def test_sse_events_of_one_read_come_together() -> None:
    parser = SseParser()
    events = parser.feed(b'data: {"a":1}\n\ndata: {"b":2}\n\n: ping\n\ndata: x\ndata: y\n\n'
                         b'event: e\nid: 7\ndata: z\n\ndata: {"c"')
    assert events == ['{"a":1}', '{"b":2}', "x\ny", "z"]
    assert parser.has_partial_event
    # CRLF and a blank line cut between reads, right inside the CRLF.
    assert parser.feed(b':3}\r\n\r') == []
    assert parser.feed(b'\ndata: \xc3\xa9\r\n\r\n') == ['{"c":3}', "é"]
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


def test_the_diffs_of_one_read_merge_into_one_append() -> None:
    history = [["hi", "He"]]
    updates = [[[["append", [0, 1], "l"]], []], [[["append", [0, 1], "lo"]], None],
               [[["append", [0, 1], " you"]], []]]
    merged = merge_diffs(updates, 2)
    assert merged == [[["append", [0, 1], "llo you"]], []]
    assert apply_diff(history, merged[0]) == [["hi", "Hello you"]]
    assert appended_text(merged[0], [0, 1]) == "llo you"
    assert appended_text([], [0, 1]) == ""
    # Anything but appends to that one string is not an append.
    assert appended_text([["replace", [0, 1], "x"]], [0, 1]) is None
    assert appended_text([["append", [1, 1], "x"]], [0, 1]) is None
    # Other edits keep their order; only runs of appends to one path are joined.
    mixed = merge_diffs([[[["append", [0, 1], "a"], ["add", [1], ["q", None]]]],
                         [[["append", [1, 1], "b"], ["append", [1, 1], "c"]]]], 1)
    assert mixed == [[["append", [0, 1], "a"], ["add", [1], ["q", None]],
                      ["append", [1, 1], "bc"]]]
    with pytest.raises(BackendError):
        merge_diffs([[[], []], [[]]], 2)


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


@pytest.mark.parametrize(
    "question",
    ["a [refs] [len=3000]", "b [len=2000] [code]", "[images] x",
     "[echo] <b>x</b> C:\\Users\\a\\b.txt\n\n\n\nz"],
)
def test_streaming_converter_matches_full_conversion(question: str) -> None:
    from rtxrelay.backends.chatrtx.answer_html import StreamingConverter

    converter = StreamingConverter()
    for chunk in fake_model.answer_stream(question, []):
        converter.feed(chunk)
        assert converter.text == convert_answer(chunk, streaming=True).text
