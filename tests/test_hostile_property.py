"""Property: whatever a server answers (bodies, headers, status codes, page-token sequences), a
collection ends, fails only through the client's exception tree (ApiError and its subclasses),
keeps the token in its origin and out of every message, log and file, and loses nothing stored.

Each example collects, into a copy of a database filled from the simulator, through a hostile
server that plays a generated script of answers to the requests of some kinds, then lets the
simulator answer again. 429s are left to the pacer's tests: each one slows the client by design.
1xx answers and bodies that never end are in test_hostile.py (they cost a timeout each).
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import logging
import shutil
import tempfile
import zlib
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from circleci_ds.client.http import ApiError, Limits
from circleci_ds.dev.simulator import SimConfig, SimProject, Simulator
from circleci_ds.text import clean
from collect_helpers import collect, stored_state
from hostile_server import MOVED, HostileServer, Reply

SLUGS = ["gh/prop/alpha", "gh/prop/beta"]
TOKEN = "property-token-0c41d7e2"
OTHER = "{other}"  # stands for the other origin's URL in generated Locations
LIMITS = Limits(max_response_bytes=1 << 20, max_pages=20)


def simulator() -> Simulator:
    projects = [SimProject("gh/prop/alpha", pipelines=6), SimProject("gh/prop/beta", pipelines=4)]
    return Simulator(SimConfig(seed=9, projects=projects, page_size=3, span_days=3.0))


@cache
def template() -> Path:
    """A database filled from the simulator once; each example collects into a copy."""
    path = Path(tempfile.mkdtemp(prefix="circleci-ds-hostile-")) / "store.db"

    async def fill() -> None:
        async with simulator().serve() as url:
            results, _ = await collect(url, f"sqlite:///{path}", SLUGS, token=TOKEN)
        assert [r.error for r in results] == [None, None]

    asyncio.run(fill())
    return path


# -- what a server may answer ------------------------------------------------------------------------------
odd_text = st.one_of(
    st.text(max_size=20), st.text(st.characters(categories=["Cs", "Cc", "Zs", "Lu"]), max_size=8)
)
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | odd_text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(odd_text, inner, max_size=3),
    max_leaves=12,
)
page_tokens = st.one_of(
    st.none(),
    st.just(""),
    st.sampled_from(["a", "b"]),
    odd_text,
    st.integers(),
    st.text(min_size=5000, max_size=5000),
)
items = st.one_of(
    st.fixed_dictionaries(
        {"id": st.one_of(st.uuids().map(str), odd_text, st.integers(), st.none())},
        optional={"created_at": st.one_of(odd_text, st.just("2026-10-30T00:00:00Z")), "state": odd_text},
    ),
    json_values,
)
pages = st.fixed_dictionaries(
    {},
    optional={"items": st.one_of(st.lists(items, max_size=3), json_values), "next_page_token": page_tokens},
)
message = st.builds(lambda text: {"message": text}, st.one_of(odd_text, st.just(f"echo {TOKEN}")))
documents = st.one_of(pages, message, json_values, pages, message)


def encoded(value: Any) -> bytes:
    return json.dumps(value).encode()  # NaN and Infinity included, lone surrogates as \\udXXX


bodies = st.one_of(documents.map(encoded), st.binary(max_size=40))
statuses = st.one_of(
    st.sampled_from(
        [200, 200, 200, 204, 301, 302, 303, 304, 307, 308, 400, 401, 403, 404, 408, 418, 500, 503, 999]
    ),
    st.integers(200, 999).filter(lambda s: s != 429),
)
locations = st.one_of(
    st.just(OTHER + "/project/x"),
    st.just(MOVED + "/project/gh/prop/alpha"),
    header_text,
    st.just("http://[::1"),
)
dates = st.one_of(
    header_text, st.sampled_from(["Fri, 31 Dec 9999 23:59:59 GMT", "Mon, 2 Jan 932134643768 560:1:1"])
)
retry_afters = st.one_of(st.sampled_from(["0", "1", "86400", "Fri, 31 Dec 9999 23:59:59 GMT"]), header_text)
encodings = st.sampled_from(["", "identity", "gzip", "deflate", "br", "x-unknown", "gzip-but-plain"])


@st.composite
def replies(draw: st.DrawFn) -> Reply:
    status, body, encoding = draw(statuses), draw(bodies), draw(encodings)
    headers: list[tuple[str, str]] = [
        ("Content-Type", draw(st.sampled_from(["application/json", "text/html"])))
    ]
    if draw(st.booleans()):
        headers.append(("Date", draw(dates)))
    if 300 <= status < 400 and draw(st.booleans()):
        headers.append(("Location", draw(locations)))
    if status == 503 and draw(st.booleans()):  # the server down for a while: waited out within max_wait
        headers.append(("Retry-After", draw(retry_afters)))
    if encoding == "gzip":
        body = gzip.compress(body)
    elif encoding == "deflate":
        body = zlib.compress(body)
    if encoding:
        headers.append(("Content-Encoding", "gzip" if encoding == "gzip-but-plain" else encoding))
    if draw(st.integers(0, 4)) == 0:  # now and then written by hand, with a length that may lie
        length = draw(st.one_of(st.just(len(body)), st.integers(-3, 100)))
        head = "".join(f"{k}: {v}\r\n" for k, v in headers)
        return Reply(raw=f"HTTP/1.1 {status} X\r\n{head}Content-Length: {length}\r\n\r\n".encode() + body)
    return Reply(status, headers, body)


kinds = st.sets(
    st.sampled_from(["project", "pipelines", "pipeline", "workflows", "jobs", "job_details"]), min_size=1
)


def page(token: str | None, *items: Any) -> Reply:
    return Reply(
        200, [("Content-Type", "application/json")], encoded({"items": list(items), "next_page_token": token})
    )


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
@given(script=st.lists(replies(), min_size=1, max_size=8), targets=kinds)
# The classes of test_hostile.py, so that each is tried whatever the draw.
@example([Reply(400, body=encoded({"message": f"echo {TOKEN} \ud800 \x1b[2J"}))], {"project"})
@example([Reply(302, [("Location", OTHER + "/project/gh/prop/alpha")])], {"project", "pipelines"})
@example([Reply(307, [("Location", MOVED + "/project/gh/prop/alpha/pipeline")])], {"pipelines"})
@example([page("a"), page("b"), page("a")], {"pipelines", "workflows"})
@example([page(f"t{n}") for n in range(8)], {"pipelines"})
@example([Reply(200, [("Content-Encoding", "gzip")], gzip.compress(b" " * (3 << 20)))], {"project"})
@example([Reply(200, body=b"[" * 100_000), Reply(200, body=b'{"n": NaN}')], {"project", "pipelines"})
@example([page("x", {"id": "../../project"}, {"id": 7}, {"no": "id"})], {"pipelines"})
@example([Reply(503, [("Retry-After", "0")])] * 8, {"project", "pipelines"})
def test_any_answers_end_cleanly_and_keep_the_token_home(script: list[Reply], targets: set[str]) -> None:
    filled = template()
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(filled, Path(tmp) / "store.db")
        asyncio.run(_scenario(Path(tmp), script, targets))


async def _scenario(tmp: Path, script: list[Reply], targets: set[str]) -> None:
    db_url = f"sqlite:///{tmp / 'store.db'}"
    before = stored_state(db_url)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logger = logging.getLogger("circleci_ds")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    sim = simulator()
    try:
        async with sim.serve() as sim_url:
            hostile, other = HostileServer(upstream=sim_url), HostileServer()
            async with hostile.serve() as url, other.serve() as other_url:
                hostile.play([_placed(r, other_url) for r in script], kinds=targets)
                errors = await _collect(url, db_url)
    finally:
        logger.removeHandler(handler)
    assert other.seen == [], "a request went to another origin"
    assert hostile.tokens_received() <= {TOKEN}
    for error in errors:
        assert error == clean(error, 2000), "an error message holds unprintable text"
    assert TOKEN not in "\n".join(errors) + log.getvalue()
    for path in tmp.iterdir():
        assert TOKEN.encode() not in path.read_bytes(), path
    _assert_nothing_lost(before, stored_state(db_url), trees_targeted=bool(targets & {"workflows", "jobs"}))


async def _collect(url: str, db_url: str) -> list[str]:
    """The endpoints' errors; a failure of the run itself must come from the client's tree."""
    try:
        # The limits end the run; this bound only turns a hang into a failure instead of a stall.
        results, _ = await asyncio.wait_for(
            collect(url, db_url, SLUGS, token=TOKEN, limits=LIMITS, timeout=1.0, max_wait=3.0), 120
        )
    except ApiError as exc:  # a 401 stops the run: the CLI says "token rejected", exit 1
        return [str(exc)]
    return [r.error for r in results if r.error]


def _placed(reply: Reply, other_url: str) -> Reply:
    if reply.raw is not None:
        return Reply(raw=reply.raw.replace(OTHER.encode(), other_url.encode()))
    headers = [(k, v.replace(OTHER, other_url.removesuffix("/api/v2"))) for k, v in reply.headers]
    return Reply(reply.status, headers, reply.body)


def _assert_nothing_lost(before: Any, after: Any, *, trees_targeted: bool) -> None:
    """Every stored pipeline is still there; unchanged unless the script answered for its own tree
    (a workflow or job list the server is entitled to change)."""
    (_, trees_before), (_, trees_after) = before, after
    for slug, trees in trees_before.items():
        assert set(trees) <= set(trees_after.get(slug, {})), f"{slug}: stored pipelines lost"
        if not trees_targeted:
            for pipeline_id, tree in trees.items():
                assert trees_after[slug][pipeline_id] == tree, f"{slug}: {pipeline_id} changed"


# -- ids, numbers and dates of every shape -----------------------------------------------------------------
# The server answers as the simulator does, except that one field of the answers of one kind takes a
# generated value. Whatever it is, the run ends cleanly, no number past the client's bound becomes the job
# frontier, no checkpoint moves past the machine's clock, nothing stored is lost, and the next run against
# the honest server collects everything.
ids = st.one_of(
    st.uuids().map(str),
    st.sampled_from(["", ".", "..", "../x", "a/b", "x" * 65, "x" * 5000, "\ud800", "bait-item"]),
    st.integers(),
    st.none(),
    st.booleans(),
    odd_text,
)
numbers = st.one_of(
    st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**53, 2**63 - 1, -(2**63), 10**12, 10**18]),
    st.integers(),
    st.floats(allow_nan=False),
    st.booleans(),
    st.none(),
    odd_text,
)
json_dates = st.one_of(
    st.sampled_from(
        ["2150-01-01T00:00:00Z", "1970-01-01T00:00:00Z", "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", ""]
    ),
    st.datetimes().map(lambda d: d.isoformat() + "Z"),
    odd_text,
    st.integers(),
)
http_dates = st.one_of(
    st.sampled_from(
        ["Sat, 01 Jan 2150 00:00:00 GMT", "Fri, 31 Dec 9999 23:59:59 GMT", "Thu, 01 Jan 1970 00:00:00 GMT"]
    ),
    st.datetimes().map(lambda d: d.strftime("%a, %d %b %Y %H:%M:%S GMT")),
    header_text,
)
FIELDS = {
    "pipelines": {"id": ids, "number": numbers, "created_at": json_dates},
    "workflows": {"id": ids, "created_at": json_dates, "stopped_at": json_dates},
    "jobs": {"id": ids, "job_number": numbers, "started_at": json_dates},
    "job_details": {"number": numbers, "queued_at": json_dates, "duration": numbers},
}


@st.composite
def lies(draw: st.DrawFn) -> tuple[str, str, Any, str | None]:
    kind = draw(st.sampled_from(sorted(FIELDS)))
    key = draw(st.sampled_from(sorted(FIELDS[kind])))
    date = draw(st.one_of(st.none(), http_dates))
    return kind, key, draw(FIELDS[kind][key]), date


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lie=lies())
@example(("job_details", "number", 2**63 - 1, None))
@example(("jobs", "job_number", 2**31 - 2, None))
@example(("pipelines", "id", "bait-item", "Sat, 01 Jan 2150 00:00:00 GMT"))
def test_ids_numbers_and_dates_of_any_shape_never_corrupt_the_walk(
    lie: tuple[str, str, Any, str | None],
) -> None:
    filled = template()
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copy(filled, Path(tmp) / "store.db")
        asyncio.run(_lie_then_honest(Path(tmp), *lie))


async def _lie_then_honest(tmp: Path, kind: str, key: str, value: Any, date: str | None) -> None:
    import time

    from circleci_ds.derive.facts import open_store
    from collect_helpers import assert_matches_truth
    from hostile_server import Exchange, Mode

    db_url = f"sqlite:///{tmp / 'store.db'}"
    trees_before = stored_state(db_url)[1]
    sim = simulator()

    def tamper(exchange: Exchange) -> None:
        if date is not None:
            exchange.headers["Date"] = date
        data = exchange.data
        if exchange.status != 200 or not isinstance(data, dict):
            return
        targets = data.get("items") if kind != "job_details" else [data]
        for target in (targets or [])[:1]:
            target[key] = value

    async with sim.serve() as sim_url:
        sim.advance(86400.0)
        hostile = HostileServer(upstream=sim_url)
        async with hostile.serve() as url:
            hostile.behave(Mode.TAMPER, kind, tamper=tamper)
            await asyncio.wait_for(collect(url, db_url, SLUGS, token=TOKEN, limits=LIMITS, timeout=2.0), 120)
            store = open_store(db_url, create=False)
            try:
                for slug in SLUGS:
                    frontier, _ = store.job_numbers(slug)
                    assert frontier is None or frontier < 2**31
                    checkpoint = store.checkpoint(slug)
                    assert checkpoint is None or checkpoint < time.time() + 86400
            finally:
                store.close()
            hostile.behave(Mode.PROXY)
            sim.advance(86400.0)
            for _ in range(2):
                results, _ = await collect(url, db_url, SLUGS, token=TOKEN, lookback=30 * 86400.0)
            assert [r.error for r in results] == [None, None]
    after = stored_state(db_url)[1]
    for slug, trees in trees_before.items():
        assert set(trees) <= set(after.get(slug, {})), f"{slug}: stored pipelines lost"
    for slug in SLUGS:  # every pipeline the honest server has is stored (a lie kept in a tree stays
        # until that tree is read again: the server said so)
        assert {p["id"] for p in sim.truth(slug)} <= set(after.get(slug, {})), f"{slug}: pipelines missed"
    if kind == "job_details" and key == "number":  # refused details leave no trace at all
        assert_matches_truth(db_url, sim, SLUGS, waiting_ok=True)
