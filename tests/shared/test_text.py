"""Finding a NUL character in a request, without a server."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shared.text import nul_in_json, nul_in_pairs


@pytest.mark.parametrize(
    ("body", "path"),
    [
        ({"description": "暖气\x00不热"}, "description"),
        ({"location": {"lat": 1, "address": "龙沙区\x00"}}, "location.address"),
        ({"attributes": {"whole_building": "\x00"}}, "attributes.whole_building"),
        ({"media_urls": ["https://a.example/1.jpg", "https://a.example/\x00"]}, "media_urls.1"),
        ({"attributes": {"bad\x00key": "yes"}}, "attributes.bad\\x00key"),
        ({"description": "fine", "note": "also fine"}, None),
        ({"count": 0, "flag": False, "nothing": None}, None),
    ],
)
def test_the_path_of_a_nul_in_a_json_body(body: dict[str, Any], path: str | None) -> None:
    assert nul_in_json(json.dumps(body, ensure_ascii=False).encode()) == path


def test_a_json_body_without_the_escape_is_not_parsed_again() -> None:
    assert nul_in_json(b"{not json at all") is None  # left to the body's own validation
    assert nul_in_json(b'{"a": "\\u0000"') is None  # malformed, even with the escape


def test_the_name_of_a_query_or_form_field_holding_a_nul() -> None:
    assert nul_in_pairs([("district", "longsha"), ("grid", "g\x001")]) == "grid"
    assert nul_in_pairs([("a\x00", "x")]) == "a\\x00"
    assert nul_in_pairs([("district", "longsha")]) is None
