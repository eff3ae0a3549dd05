"""The `circleci-ds` command line. Thin: parsing, output and exit statuses; work lives elsewhere.

Exit statuses: 0 ok; 1 an endpoint failed or the token was rejected; 2 bad usage, fixture,
database or output path; 3 an unexpected internal error; 130 interrupted (SIGINT); 143 terminated
(SIGTERM). Every failure is one line on stderr, never a traceback.

Everything external that reaches the terminal (API strings, paths, option values, database
contents) goes through `display` (shown as text, control characters replaced) and, with the token
and database credentials, is masked by `Redactor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, ClassVar, TypeVar

import typer
from rich.console import Console
from rich.live import Live
from rich.logging import RichHandler
from rich.table import Table
from rich.text import Text

from circleci_ds import __version__
from circleci_ds.client.http import (
    DEFAULT_API_URL,
    CircleCIClient,
    Limits,
    MiB,
    Unauthorized,
    api_url_problem,
)
from circleci_ds.collect.collector import (
    DEFAULT_CONCURRENCY,
    Collector,
    EndpointResult,
    Options,
    trees_in_flight,
)
from circleci_ds.collect.gc_tuning import fewer_gc_passes
from circleci_ds.collect.lanes import Outcome
from circleci_ds.collect.progress import RequestRate, active_lines, client_line, pause_left
from circleci_ds.collect.users import UserPass
from circleci_ds.derive.credit_rates import shipped_rates
from circleci_ds.derive.facts import open_store
from circleci_ds.derive.people import People
from circleci_ds.documents.mapping import ExportKind, index_template
from circleci_ds.files import OutputError, check_target
from circleci_ds.inputs.fixture import FixtureError, Settings, load_fixture
from circleci_ds.inputs.identities import Identities, IdentitiesError, load_identities
from circleci_ds.inputs.rates import RatesError, load_rates
from circleci_ds.metrics.cost import CostOptions, Thresholds
from circleci_ds.store import DEFAULT_DB_URL, Store, StoreError
from circleci_ds.store.database import database_files
from circleci_ds.store.urls import secrets_in
from circleci_ds.text import plain, safe_text
from circleci_ds.times import iso, parse_date, parse_duration

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

app = typer.Typer(
    name="circleci-ds",
    help="Collect CircleCI pipelines, workflows, jobs and job details into a store; export, report.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False)
log = logging.getLogger("circleci_ds")
F = TypeVar("F", bound=Callable[..., Any])

DbOption = Annotated[
    str,
    typer.Option("--db", envvar="CIRCLECI_DS_DB", help="Database URL: sqlite:///file.db or postgresql://…"),
]


class Redactor(logging.Filter):
    """Masks secrets in every log record and message that leaves the process, and makes it safe text."""

    secrets: ClassVar[set[str]] = set()

    @classmethod
    def mask(cls, text: str) -> str:
        for secret in sorted(cls.secrets, key=len, reverse=True):  # a longer secret may hold a shorter
            if secret:
                text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = safe_text(self.mask(record.getMessage()))
        record.args = None
        return True


class Interrupted(BaseException):
    """A signal asked the run to stop (BaseException, like KeyboardInterrupt: no handler swallows it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum

    @property
    def exit_status(self) -> int:
        return 128 + self.signum  # the shell's convention: 130 for SIGINT, 143 for SIGTERM


def fail(message: str, code: int) -> typer.Exit:
    err.print(Text("error: ", style="bold red") + plain(Redactor.mask(message)), soft_wrap=True)
    return typer.Exit(code)


def _on_sigterm(signum: int, _frame: Any) -> None:
    raise Interrupted(signum)


def guarded(func: F) -> F:
    """Turn known failures into one line and an exit status; never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (typer.Exit, typer.Abort):
            raise
        except (FixtureError, IdentitiesError) as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        except (StoreError, OutputError) as exc:
            raise fail(str(exc), EXIT_USAGE) from None
        except Interrupted as exc:
            name = signal.Signals(exc.signum).name
            raise fail(f"interrupted by {name}; everything stored so far is kept", exc.exit_status) from None
        except KeyboardInterrupt:
            raise fail("interrupted; everything stored so far is kept", EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            sys.stderr.close()
            raise typer.Exit(EXIT_OK) from None
        except Exception as exc:
            if os.environ.get("CIRCLECI_DS_DEBUG"):
                raise
            raise fail(
                f"internal error ({exc.__class__.__name__}: {exc}); set CIRCLECI_DS_DEBUG=1 for a traceback",
                EXIT_INTERNAL,
            ) from None

    return wrapper  # type: ignore[return-value]


def _setup_logging(verbose: bool) -> None:
    handler: logging.Handler
    if err.is_terminal:  # log lines go above the progress bar
        handler = RichHandler(console=err, show_path=False, markup=False, rich_tracebacks=False)
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    handler.addFilter(Redactor())
    root = logging.getLogger("circleci_ds")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def _open_store(db: str, *, create: bool = True) -> Store:
    Redactor.secrets.update(secrets_in(db))
    return open_store(db, create=create)


# -- collect --------------------------------------------------------------------------------
class TestsRead(StrEnum):
    auto = "auto"
    all = "all"


@app.command()
@guarded
def collect(
    fixture: Annotated[Path, typer.Argument(help="da-ds fixture file (YAML) listing CircleCI endpoints.")],
    db: DbOption = DEFAULT_DB_URL,
    api_url: Annotated[
        str,
        typer.Option(
            envvar="CIRCLECI_API_URL", help="CircleCI API v2 base URL (server installs, simulator)."
        ),
    ] = DEFAULT_API_URL,
    concurrency: Annotated[
        int, typer.Option(min=1, max=256, help="Requests in flight at most.")
    ] = DEFAULT_CONCURRENCY,
    max_rps: Annotated[float | None, typer.Option(min=0.1, help="Requests per second at most.")] = None,
    from_date: Annotated[
        str | None, typer.Option(help="First run: only pipelines created on or after this date (ISO).")
    ] = None,
    lookback: Annotated[
        str,
        typer.Option(help="Re-read final pipelines as their age doubles, up to this age (reruns that wait)."),
    ] = "72h",
    parallel_endpoints: Annotated[int, typer.Option(min=1, help="Endpoints collected at once.")] = 4,
    max_wait: Annotated[
        str,
        typer.Option(
            help="Longest total wait for the server's rate limit, per request and per run (e.g. 15m, 1h); "
            "past it the endpoint fails."
        ),
    ] = "15m",
    lease_ttl: Annotated[
        float, typer.Option(min=1.0, help="Seconds a dead collector's endpoints stay leased.", hidden=True)
    ] = 60.0,
    tests: Annotated[
        TestsRead,
        typer.Option(
            "--tests",
            help="Test results of finished build jobs: `auto` reads the jobs of a job name that stored "
            "none in its last runs one run in ten (and when they failed); `all` reads every job's.",
        ),
    ] = TestsRead.auto,
    no_tests: Annotated[bool, typer.Option("--no-tests", help="Read no test results.")] = False,
    usage: Annotated[
        bool, typer.Option("--usage/--no-usage", help="Read the organisations' Usage API exports (cost).")
    ] = True,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds one request may take, body included; then it is retried.")
    ] = 60.0,
    max_response_mb: Annotated[
        float,
        typer.Option(min=0.01, help="Largest response body accepted, in MiB once decompressed; larger fail."),
    ] = 64.0,
    max_pages: Annotated[
        int, typer.Option(min=1, help="Pages read at most per list (pipelines, workflows, jobs); more fail.")
    ] = Limits.max_pages,
    retry_backoff: Annotated[
        float, typer.Option(min=0.0, help="Seconds before the first retry; doubles each time.", hidden=True)
    ] = 0.5,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Collect every endpoint of FIXTURE incrementally into the store."""
    _setup_logging(verbose)
    try:
        lookback_s = parse_duration(lookback)
        max_wait_s = parse_duration(max_wait)
        from_ts = parse_date(from_date) if from_date else None
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if (problem := api_url_problem(api_url)) is not None:  # before anything is stored or sent
        raise fail(f"--api-url: {problem}", EXIT_USAGE)
    settings = load_fixture(fixture)
    if settings.token:
        Redactor.secrets.add(settings.token)
    for note in settings.notes:
        log.info("%s: %s", settings.path, note)
    store = _open_store(db)
    options = Options(
        lookback=lookback_s,
        from_date=from_ts,
        parallel_endpoints=parallel_endpoints,
        trees_in_flight=trees_in_flight(concurrency),
        lease_ttl=lease_ttl,
        tests=not no_tests and settings.collect_tests,
        tests_all=tests is TestsRead.all,
        usage=usage,
        usage_org_ids=settings.usage_org_ids,
    )
    limits = Limits(max_response_bytes=int(max_response_mb * MiB), max_pages=max_pages)
    started = time.monotonic()
    try:
        with fewer_gc_passes():
            results, stats, counters, users = asyncio.run(
                _collect(
                    settings,
                    store,
                    api_url,
                    concurrency,
                    max_rps,
                    options,
                    max_wait=max_wait_s,
                    limits=limits,
                    timeout=timeout,
                    backoff=retry_backoff,
                )
            )
    except Unauthorized:
        raise fail(
            "token rejected (HTTP 401): check the fixture's Circle-Token or CIRCLE_TOKEN", EXIT_FAILED
        ) from None
    finally:
        with contextlib.suppress(StoreError):  # however the run ended, its leases go
            store.release_leases(options.owner)
        store.close()
    failed = [r for r in results if r.error]
    for result in failed:
        err.print(Text("failed: ", style="red") + plain(Redactor.mask(result.error or "")), soft_wrap=True)
    others = sum(1 for r in results if r.outcome is Outcome.ELSEWHERE)
    reruns = sum(p.signaled for p in counters.endpoints.values())
    print(
        f"collected {len(results) - len(failed) - others}/{len(settings.endpoints)} endpoint(s)"
        + (f" ({others} by another collector)" if others else "")
        + f": {counters.pipelines} pipeline(s) stored"
        + (f" ({reruns} found rerun by job number)" if reruns else "")
        + f", {counters.workflows} workflow(s), "
        f"{counters.jobs} job(s), {counters.details} job detail(s), "
        f"tests of {counters.tests.jobs} job(s) ({counters.tests.results} result(s)) read"
        + (f" ({counters.tests.skipped} job(s) not read: quiet job names)" if counters.tests.skipped else "")
        + ", "
        f"{users.resolved} user(s) resolved ({users.deleted} deleted); {stats.requests} request(s), "
        f"{stats.rate_limited} rate-limited, {stats.retries} retried, in {time.monotonic() - started:.1f}s"
        + (f"; {len(failed)} endpoint(s) failed" if failed else ""),
        file=sys.stderr if not sys.stdout.isatty() else sys.stdout,
    )
    if failed:
        raise typer.Exit(EXIT_FAILED)


async def _collect(
    settings: Settings,
    store: Store,
    api_url: str,
    concurrency: int,
    max_rps: float | None,
    options: Options,
    *,
    limits: Limits,
    max_wait: float,
    timeout: float,
    backoff: float,
) -> tuple[list[EndpointResult], Any, Any, UserPass]:
    with _stop_on_signals() as caught:
        try:
            async with CircleCIClient(
                api_url,
                settings.token,
                concurrency=concurrency,
                max_rps=max_rps,
                timeout=timeout,
                backoff_initial=backoff,
                limits=limits,
                max_wait=max_wait,
            ) as client:
                collector = Collector(client, store, options)
                reporter = asyncio.create_task(_report_progress(collector))
                try:
                    results = await collector.run(list(settings.endpoints))
                finally:
                    reporter.cancel()
                return results, client.stats, collector.counters, collector.users
        except asyncio.CancelledError:
            if caught:
                raise Interrupted(caught[0]) from None
            raise


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[list[int]]:
    """SIGINT and SIGTERM cancel the run, so every lane ends through its cleanup (leases released,
    trees stored whole); yields the signals caught. Later signals are ignored while it ends."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    caught: list[int] = []

    def stop(signum: int) -> None:
        if not caught and task is not None:
            task.cancel()
        caught.append(signum)

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop, signum)
    try:
        yield caught
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        signal.signal(signal.SIGTERM, _on_sigterm)


async def _report_progress(collector: Collector) -> None:
    """On a terminal, a live view: per endpoint what is known so far, and the client's pace (log
    lines go above it); piped, a plain log line every 10 s."""
    c, client = collector.counters, collector.client
    rate = RequestRate()

    def lines() -> list[str]:
        now = time.monotonic()
        pace = rate.sample(client.stats.requests, now)
        return [client_line(c, client.stats, pace, pause_left(client.pacer, now)), *active_lines(c)]

    if err.is_terminal:
        with Live(Text(""), console=err, transient=True, refresh_per_second=4) as live:
            while True:
                live.update(Text(safe_text(Redactor.mask("\n".join(lines())), multiline=True)))
                await asyncio.sleep(0.25)
    while True:
        await asyncio.sleep(10)
        for line in lines():
            log.info("progress: %s", line)


# -- discover -------------------------------------------------------------------------------
@app.command()
@guarded
def discover(
    org: Annotated[str, typer.Argument(help="gh/ORG, github/ORG, bb/ORG or circleci/ORG-ID.")],
    api_url: Annotated[
        str, typer.Option(envvar="CIRCLECI_API_URL", help="CircleCI API v2 base URL.")
    ] = DEFAULT_API_URL,
    max_pages: Annotated[
        int, typer.Option(min=1, help="Pages of the organisation's pipelines read at most.")
    ] = 50,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds one request may take.")] = 60.0,
) -> None:
    """Print a da-ds fixture listing every project of ORG that has pipelines (token from CIRCLE_TOKEN).

    Exit statuses: 0 printed; 1 token refused, organisation unknown, unseen or without pipelines; 2 bad ORG.
    """
    from circleci_ds.collect.discover import DiscoverError, parse_org, run_discover

    try:
        parsed = parse_org(org)
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    token = os.environ.get("CIRCLE_TOKEN") or None
    if token:
        Redactor.secrets.add(token)
    try:
        text, summary = asyncio.run(run_discover(api_url, token, parsed, max_pages, timeout))
    except DiscoverError as exc:
        raise fail(str(exc), EXIT_FAILED) from None
    sys.stdout.write(text)
    err.print(plain(Redactor.mask(summary)), soft_wrap=True)


# -- export ---------------------------------------------------------------------------------
IdentitiesOption = Annotated[
    Path | None,
    typer.Option(help="People, logins and organisations (YAML or JSON; a SortingHat export works too)."),
]


class Format(StrEnum):
    ndjson = "ndjson"
    es_bulk = "es-bulk"


@app.command()
@guarded
def export(
    db: DbOption = DEFAULT_DB_URL,
    project: Annotated[str | None, typer.Option(help="Only this native project slug.")] = None,
    kind: Annotated[
        ExportKind,
        typer.Option(
            help="raw: one item per pipeline; enriched: pipeline/workflow/job docs; "
            "dads: one da-ds document per job."
        ),
    ] = ExportKind.raw,
    fmt: Annotated[
        Format, typer.Option("--format", help="ndjson, or Elasticsearch/OpenSearch _bulk.")
    ] = Format.ndjson,
    index: Annotated[
        str | None, typer.Option(help="es-bulk: this index instead of sds-<native-slug>-circleci[-raw].")
    ] = None,
    identities: IdentitiesOption = None,
) -> None:
    """Print stored data as NDJSON (perceval item envelope for raw pipelines)."""
    from circleci_ds.documents import raw as ex

    if index is not None and not ex.valid_index_name(index):
        rule = 'lowercase, without spaces or \\/*?"<>|,#:'
        raise fail(f"--index {index!r}: index names are {rule}", EXIT_USAGE)
    people_ids = _load_identities(identities)
    store = _open_store(db, create=False)
    try:
        docs: Iterable[dict[str, Any]]
        if kind is ExportKind.raw:
            docs = ex.raw_items(store, project)
        elif kind is ExportKind.dads:
            from circleci_ds.documents.dads import dads_documents

            docs = dads_documents(store.iter_trees(project, with_usage=True), People.load(store, people_ids))
        else:
            from circleci_ds.documents.enriched import enrich_trees
            from circleci_ds.documents.tests import test_documents

            people = People.load(store, people_ids)
            trees = store.iter_trees(project, with_facts=True, with_usage=True)
            docs = enrich_trees(trees, store.project_infos(), people=people)
            docs = itertools.chain(docs, test_documents(store, project))  # one document per test result
        raw = kind is ExportKind.raw
        lines = ex.es_bulk(docs, raw=raw, index=index) if fmt is Format.es_bulk else ex.ndjson(docs)
        try:
            _write_lines(lines)
        finally:  # a failed write ends the store's read before the store closes
            for generator in (lines, docs):
                getattr(generator, "close", lambda: None)()
        _warn_unreadable_times(store.unreadable_timestamps(project))
    finally:
        store.close()


def _warn_unreadable_times(count: int) -> None:
    if count:
        err.print(
            f"warning: {count} stored timestamp(s) could not be read; they are null in derived data "
            "(raw data is kept as sent)",
            markup=False,
            soft_wrap=True,
        )


def _load_identities(path: Path | None) -> Identities | None:
    return load_identities(path) if path is not None else None


@app.command("es-mapping")
@guarded
def es_mapping(
    kind: Annotated[ExportKind, typer.Option(help="The export kind the index will hold.")] = ExportKind.dads,
    pattern: Annotated[
        str | None, typer.Option(help="Index pattern; default sds-*-circleci (sds-*-circleci-raw for raw).")
    ] = None,
) -> None:
    """Print an Elasticsearch/OpenSearch index template (PUT _index_template/NAME) for an export kind."""
    print(json.dumps(index_template(kind, pattern), indent=2))


def _write_lines(lines: Iterator[str]) -> None:
    out = sys.stdout
    try:
        for line in lines:
            out.write(line)
            out.write("\n")
        out.flush()
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise OutputError(f"cannot write the output: {exc.strerror or exc.__class__.__name__}") from None


# -- status ---------------------------------------------------------------------------------
@app.command()
@guarded
def status(db: DbOption = DEFAULT_DB_URL) -> None:
    """Per endpoint: last pull date, what is stored, open pipelines, lease holder, last error."""
    store = _open_store(db, create=False)
    try:
        rows = store.endpoint_statuses()
        now = store.now()  # leases are judged by the database's clock
    finally:
        store.close()
    if not rows:
        print("no endpoints collected yet")
        return
    table = Table(title=plain(f"circleci-ds store {store.url}"), title_justify="left")
    for name in (
        "endpoint",
        "project",
        "last pull",
        "pipelines",
        "workflows",
        "jobs",
        "open",
        "lease",
        "last error",
    ):
        table.add_column(
            name, justify="right" if name in ("pipelines", "workflows", "jobs", "open") else "left"
        )
    for r in rows:
        lease = (
            f"{r.lease_owner} ({r.lease_expires - now:+.0f}s)" if r.lease_owner and r.lease_expires else "-"
        )
        table.add_row(
            plain(r.slug),
            plain(r.native),
            iso(r.checkpoint) or "never",
            str(r.pipelines),
            str(r.workflows),
            str(r.jobs),
            str(r.open_pipelines),
            plain(lease),
            plain(Redactor.mask(r.last_error or "-")),
        )
    Console(highlight=False, width=max(160, Console().width)).print(table)


# -- report ---------------------------------------------------------------------------------
def _report_help() -> str:
    from circleci_ds.metrics.definitions import help_text

    return "CI metrics per project, workflow and job; optionally an offline HTML report.\n\n" + help_text()


@app.command(help=_report_help())
@guarded
def report(
    db: DbOption = DEFAULT_DB_URL,
    project: Annotated[str | None, typer.Option(help="Only this native project slug.")] = None,
    since: Annotated[
        str | None,
        typer.Option(help="Window start (ISO date, UTC); default 30 days before the window's end."),
    ] = None,
    until: Annotated[
        str | None,
        typer.Option(
            help="Window end, excluded (ISO date, UTC); default the UTC midnight after the newest stored run."
        ),
    ] = None,
    branch: Annotated[
        str | None, typer.Option(help="Branch, or '*' for all; default each project's default branch.")
    ] = None,
    bucket: Annotated[
        str, typer.Option(help="Trend points: day, week, or auto (weeks past 45 days).")
    ] = "auto",
    deploy_pattern: Annotated[
        str | None,
        typer.Option(
            help="Regular expression (case-insensitive) naming deploy workflows or jobs; default 'deploy'."
        ),
    ] = None,
    fixture: Annotated[
        Path | None, typer.Option(help="da-ds fixture whose circleci config may give a deploy-pattern entry.")
    ] = None,
    fmt: Annotated[str, typer.Option("--format", help="table or json.")] = "table",
    html: Annotated[Path | None, typer.Option(help="Also write a self-contained HTML report here.")] = None,
    identities: IdentitiesOption = None,
    concurrency_cap: Annotated[
        int | None,
        typer.Option(
            min=1, help="The plan's concurrency cap (default: the fixture's concurrency-cap config entry)."
        ),
    ] = None,
    credit_rates: Annotated[
        Path | None,
        typer.Option(help="YAML mapping of resource class to credits per minute, for estimated cost."),
    ] = None,
    rightsize_min_runs: Annotated[
        int, typer.Option(min=1, help="Right-sizing: sampled runs a job needs to be judged.")
    ] = 5,
    oversized_pct: Annotated[
        float,
        typer.Option(
            min=0, max=100, help="Right-sizing: oversized when p95 of max CPU and RAM are at most this."
        ),
    ] = 40.0,
    starved_pct: Annotated[
        float,
        typer.Option(min=0, max=100, help="Right-sizing: starved when the median max CPU is at least this."),
    ] = 95.0,
) -> None:
    import re

    from circleci_ds.report import run_report

    if fmt not in ("table", "json"):
        raise fail(f"--format must be table or json, not {fmt!r}", EXIT_USAGE)
    if bucket not in ("day", "week", "auto"):
        raise fail(f"--bucket must be day, week or auto, not {bucket!r}", EXIT_USAGE)
    try:
        since_ts = parse_date(since) if since else None
        until_ts = parse_date(until) if until else None
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None
    if deploy_pattern is None and fixture is not None:
        from circleci_ds.inputs.fixture import load_config_value

        deploy_pattern = load_config_value(fixture, "deploy-pattern")
    try:
        re.compile(deploy_pattern or "")
    except re.error as exc:
        raise fail(f"not a regular expression: {deploy_pattern!r} ({exc})", EXIT_USAGE) from None
    if concurrency_cap is None and fixture is not None:
        concurrency_cap = _fixture_cap(fixture)
    cost_options = _cost_options(credit_rates, rightsize_min_runs, oversized_pct, starved_pct)
    if html is not None:
        # A path that can never be written, or that is an input (the database), fails before the work.
        inputs = [*database_files(db), *(p for p in (fixture, identities) if p is not None)]
        check_target(html, inputs)
    people_ids = _load_identities(identities)
    store = _open_store(db, create=False)
    try:
        run_report(
            store,
            project=project,
            since=since_ts,
            until=until_ts,
            branch=branch,
            fmt=fmt,
            html_path=html,
            console=Console(highlight=False),
            bucket=bucket,
            deploy_pattern=deploy_pattern,
            identities=people_ids,
            cost_options=cost_options,
            concurrency_cap=concurrency_cap,
        )
    finally:
        store.close()


def _fixture_cap(fixture: Path) -> int | None:
    from circleci_ds.inputs.fixture import load_config_value

    value = load_config_value(fixture, "concurrency-cap")  # FixtureError: one line, by `guarded`
    if value is None:
        return None
    try:
        cap = int(value)
    except ValueError:
        cap = 0
    if cap < 1:
        raise fail(
            f"{fixture}: concurrency-cap must be a whole number of 1 or more, not {value!r}", EXIT_USAGE
        )
    return cap


def _cost_options(rates_file: Path | None, min_runs: int, oversized: float, starved: float) -> CostOptions:
    rates = shipped_rates()
    if rates_file is not None:
        try:
            rates = rates.with_overrides(load_rates(rates_file), f"{rates.source} with {rates_file}")
        except RatesError as exc:
            raise fail(str(exc), EXIT_USAGE) from None
    return CostOptions(rates=rates, thresholds=Thresholds(min_runs, oversized, starved))


# -- simulator and demo ---------------------------------------------------------------------
@app.command()
@guarded
def simulate(
    port: Annotated[int, typer.Option(help="Port on 127.0.0.1 (0: any free port).")] = 8765,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic history.")] = 1,
    projects: Annotated[int, typer.Option(min=1, help="Number of projects.")] = 3,
    pipelines: Annotated[int, typer.Option(min=1, help="Pipelines per project.")] = 100,
    span_days: Annotated[float, typer.Option(help="Days of history before the clock.")] = 30.0,
    latency_ms: Annotated[float, typer.Option(help="Latency added to every request.")] = 0.0,
    jitter_ms: Annotated[float, typer.Option(help="Random +/- jitter on the latency.")] = 0.0,
    rate_limit: Annotated[
        float | None, typer.Option(help="Rate limit, requests per second (windows: x their length).")
    ] = None,
    rate_burst: Annotated[int, typer.Option(help="Token-bucket size.")] = 10,
    limiter: Annotated[
        str, typer.Option(help="Limiter shape: bucket, second or minute (fixed windows).")
    ] = "bucket",
    retry_after: Annotated[
        str, typer.Option(help="Retry-After on 429s: seconds, date, both (alternating) or none.")
    ] = "seconds",
    rate_headers: Annotated[
        str,
        typer.Option(
            help="Quota headers: none, ratelimit (RateLimit-*), x-ratelimit (X-RateLimit-*), both, or "
            "structured (the IETF draft's RateLimit and RateLimit-Policy fields).",
        ),
    ] = "none",
    limit_body: Annotated[str, typer.Option(help="429 bodies: json, text or both (alternating).")] = "both",
    fault_rate: Annotated[float, typer.Option(help="Share of requests answered 5xx.")] = 0.0,
    token: Annotated[str | None, typer.Option(help="Token that private projects require.")] = None,
    untested_share: Annotated[
        float,
        typer.Option(help="Share of the job names with a test suite whose jobs store no test results."),
    ] = 0.0,
) -> None:
    """Serve the built-in fake CircleCI API v2 on loopback until interrupted."""
    from circleci_ds.dev.simulator import SimConfig, SimProject, run_standalone

    sim_projects = [
        SimProject(f"gh/sim-org/project-{i}", pipelines=pipelines, private=bool(token) and i == projects - 1)
        for i in range(projects)
    ]
    try:
        cfg = SimConfig(
            seed=seed,
            projects=sim_projects,
            span_days=span_days,
            latency_ms=latency_ms,
            jitter_ms=jitter_ms,
            rate_limit_rps=rate_limit,
            rate_burst=rate_burst,
            limiter=limiter,
            retry_after=retry_after,
            rate_headers=rate_headers,
            limit_body=limit_body,
            fault_rate=fault_rate,
            token=token,
            untested_share=untested_share,
        )
    except ValueError as exc:
        raise fail(str(exc), EXIT_USAGE) from None

    def ready(url: str) -> None:
        admin = url.rsplit("/api/v2", 1)[0] + "/_sim/advance?seconds=N"
        print(f"simulator listening at {url}  (move its clock: POST {admin})")
        print("projects: " + ", ".join(p.slug for p in sim_projects), flush=True)

    async def serve() -> list[int]:
        # Signals through the loop: a handler raising inside an event-loop callback can be lost.
        with _stop_on_signals() as caught, contextlib.suppress(asyncio.CancelledError):
            await run_standalone(cfg, port=port, on_ready=ready)
        return caught

    caught = asyncio.run(serve())
    if caught:
        raise typer.Exit(128 + caught[0])


@app.command()
@guarded
def demo(
    directory: Annotated[Path, typer.Option("--dir", help="Where the demo fixture and database go.")] = Path(
        "circleci-ds-demo"
    ),
) -> None:
    """Collect from the built-in simulator twice (its clock moved a day between), then status and report."""
    from circleci_ds.dev.demo import run_demo

    raise typer.Exit(run_demo(directory))


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def _reader_gone(self: Console) -> None:
    """A reader that stopped early (`report | head -1`) is no failure: exit 0 quietly, as `export`
    does. Rich's default exits 1; its help output and our consoles all go through here."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())  # nothing is flushed into the closed pipe at exit
    raise SystemExit(EXIT_OK)


def main() -> None:
    signal.signal(signal.SIGTERM, _on_sigterm)  # SIGTERM ends a command as SIGINT does: one line
    Console.on_broken_pipe = _reader_gone  # type: ignore[method-assign]  # rich's hook
    app(prog_name="circleci-ds")


if __name__ == "__main__":
    main()
