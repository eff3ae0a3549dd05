"""The client's fast paths keep its rules: JSON read by orjson first, and the first attempt of a request
made outside the retry loop."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circleci_ds.client.http import (
    CircleCIClient,
    MalformedResponse,
    TransientError,
    UnreadableBody,
    _parse_json,
    scrubbed,
)
from hostile_server import HostileServer, Reply

TOKEN = "fast-path-test-token-0c1d"


def reference(body: bytes) -> Any:
    """The rules of `_parse_json`, by the standard parser alone."""

    def refuse(name: str) -> Any:
        raise MalformedResponse(name)

    def finite(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise MalformedResponse(text)
        return value

    def int64(text: str) -> int:
        if len(text.lstrip("-")) > 19:
            raise MalformedResponse(text)
        return int(text)

    try:
        return json.loads(body, parse_constant=refuse, parse_float=finite, parse_int=int64)
    except RecursionError:
        raise MalformedResponse("deep") from None
    except MalformedResponse:
        raise
    except ValueError:
        raise UnreadableBody("not JSON") from None


def outcome(parse: Any, body: bytes) -> tuple[str, str]:
    """What parsing `body` gives: the value with every number's type spelled out, or the error's kind."""
    try:
        return "value", repr(typed(parse(body)))
    except (MalformedResponse, UnreadableBody) as exc:
        return "error", type(exc).__name__


def typed(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, float | int) and not isinstance(value, bool):
        return (type(value).__name__, value)
    return value


def parse(body: bytes) -> Any:
    return _parse_json("/x", body)[0]


numbers = st.one_of(
    st.integers(min_value=-(10**21), max_value=10**21),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**18, -(10**18)]),
    st.floats(allow_nan=False, allow_infinity=False),
)
text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=12)
values = st.recursive(
    st.none() | st.booleans() | numbers | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(values)
def test_json_of_any_shape_reads_as_the_standard_parser_reads_it(value: Any) -> None:
    body = json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")
    assert outcome(parse, body) == outcome(reference, body)
    escaped = json.dumps(value).encode()  # \u escapes, lone surrogates included
    assert outcome(parse, escaped) == outcome(reference, escaped)


@pytest.mark.parametrize(
    "body",
    [
        b'{"n": 1e999}',
        b'{"n": -1e400}',
        b'{"n": NaN}',
        b'{"n": Infinity}',
        b'{"n": 12345678901234567890}',
        b'{"n": -9223372036854775809}',
        b'{"n": 9999999999999999999}',
        b'{"s": "\\ud800"}',
        b'{"s": "\\u0000"}',
        b'\xef\xbb\xbf{"a": 1}',
        '{"a": 1}'.encode("utf-16"),
        b'{"a": "\xff"}',
        b'{"a": 1} x',
        b"[" * 200_000 + b"]" * 200_000,
        b'{"a":' * 5000 + b"1" + b"}" * 5000,
        b"",
        b'{"a": 1, "a": 2}',
    ],
)
def test_edge_bodies_read_as_the_standard_parser_reads_them(body: bytes) -> None:
    assert outcome(parse, body) == outcome(reference, body)


@pytest.mark.parametrize(
    ("failures", "attempts", "answered"), [(0, 3, True), (2, 3, True), (3, 3, False), (1, 1, False)]
)
async def test_a_request_is_sent_at_most_max_attempts_times(
    failures: int, attempts: int, answered: bool
) -> None:
    hostile = HostileServer()
    async with (
        hostile.serve() as url,
        CircleCIClient(url, TOKEN, max_attempts=attempts, backoff_initial=0.01, backoff_max=0.02) as client,
    ):
        hostile.play([Reply(500, body=b'{"message": "oops"}')] * failures, kinds="project")
        if answered:
            assert (await client.project("gh/acme/api"))["name"] == "bait"
        else:
            with pytest.raises(TransientError, match="HTTP 500"):
                await client.project("gh/acme/api")
        sent = min(failures + 1, attempts)
        assert len(hostile.seen) == sent
        assert client.stats.retries == sent - 1


def full_scrub(body: bytes) -> Any:
    """What an answer reads as when every string is checked: the standard parser, then the scrub (an
    array inside a wrapper object, as `_json_value` holds it)."""
    data = json.loads(body)
    return scrubbed(data, TOKEN, 64) if isinstance(data, dict) else scrubbed({"v": data}, TOKEN, 65)["v"]


def escaped(text: str, every: int) -> str:
    """`text` as a JSON string's inside, every `every`-th character written as a \\u escape."""
    return "".join(
        f"\\u{ord(c):04x}" if i % every == 0 else json.dumps(c, ensure_ascii=False)[1:-1]
        for i, c in enumerate(text)
    )


pieces = st.one_of(
    st.text(max_size=8),
    st.just(TOKEN),
    st.sampled_from(["\x00", "\ud800", "\udfff", "é", "😀", "<&>", TOKEN[:5]]),
)


@settings(max_examples=400, deadline=None)
@given(parts=st.lists(pieces, max_size=5), every=st.integers(1, 60), in_key=st.booleans())
def test_strings_are_scrubbed_whenever_they_need_it(parts: list[str], every: int, in_key: bool) -> None:
    """The bytes-level judgement (no scrub needed) never lets through a NUL, a lone surrogate or the
    token, written as they are or as escapes, in keys or values: the answer reads as the full scrub's."""
    text = escaped("".join(parts), every)
    inner = f'"{text}": 1' if in_key else f'"k": "{text}"'
    body = ('{"items": [{' + inner + '}], "next_page_token": null}').encode("utf-8", "surrogatepass")
    array = ("[{" + inner + "}]").encode("utf-8", "surrogatepass")  # the usage routes answer arrays too
    client = CircleCIClient("http://127.0.0.1:9", TOKEN)
    assert client._json_object("/x", body) == full_scrub(body)
    assert client._json_value("/x", body) == full_scrub(body)
    assert client._json_value("/x", array) == full_scrub(array)


@pytest.mark.parametrize("levels", [64, 65])
@pytest.mark.parametrize("inside", ["1", '"plain"', '"\\u0000"', f'"{TOKEN}"'])
def test_a_json_value_is_held_to_the_depth_limit_whether_its_strings_are_walked_or_not(
    levels: int, inside: str
) -> None:
    """Plain strings take the path that skips the scrub, a NUL or the token the one that walks them:
    both refuse what is nested past the limit (64 levels) and mask what they keep."""
    client = CircleCIClient("http://127.0.0.1:9", TOKEN)
    for body in ("[" * levels + inside + "]" * levels, '{"a":' * levels + inside + "}" * levels):
        if levels > 64:
            with pytest.raises(MalformedResponse, match="nested deeper than 64 levels"):
                client._json_value("/x", body.encode())
        else:
            assert client._json_value("/x", body.encode()) == full_scrub(body.encode())
            assert TOKEN not in json.dumps(client._json_value("/x", body.encode()))
