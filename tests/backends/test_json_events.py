"""Event JSON decodes the same with or without orjson, including what only json accepts."""

from __future__ import annotations

import json

import pytest

from rtxrelay.backends import json_events

EVENTS = [
    '{"msg":"process_generating","event_id":"e1","output":{"data":[[["append",[0,1],'
    '" tensor"]],[]],"is_generating":true},"success":true}',
    '{"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":'
    '{"content":"\\u4f60\\u597d \\ud83d\\ude00"},"finish_reason":null}]}',
    # What Python's json.dumps writes and orjson refuses: NaN, a lone surrogate. Gradio
    # serialises with json, so these can reach us.
    '{"msg":"estimation","rank_eta":NaN,"rank":0}',
    '{"text":"half a pair \\ud83d"}',
]


@pytest.mark.parametrize("event", EVENTS)
def test_every_event_decodes_as_the_standard_library_does(event: str) -> None:
    decoded = json_events.loads(event)
    expected = json.loads(event)
    assert json.dumps(decoded, sort_keys=True) == json.dumps(expected, sort_keys=True)
    assert json_events.loads(event.encode("utf-8", "surrogatepass")) is not None


@pytest.mark.parametrize("junk", ["data: x", '{"msg": "cut', "", "\ufeff"])
def test_what_is_not_json_is_a_value_error(junk: str) -> None:
    with pytest.raises(ValueError):
        json_events.loads(junk)


def test_orjson_is_what_decodes_where_it_is_installed() -> None:
    orjson = pytest.importorskip("orjson")
    assert json_events.orjson is orjson
