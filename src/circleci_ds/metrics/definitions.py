"""Every metric's definition, written once: rendered into `report --help`, the JSON `definitions`
object and the HTML footer. Names shared with CircleCI Insights follow its glossary exactly;
metrics of our own carry names of their own.
"""

from __future__ import annotations

from dataclasses import dataclass

WINDOW_DAYS = 30
DEFAULT_DEPLOY_PATTERN = "deploy"


@dataclass(frozen=True)
class Definition:
    key: str  # the JSON name
    name: str  # as shown
    text: str


DEFINITIONS: tuple[Definition, ...] = (
    Definition(
        "window",
        "Window",
        f"One window for the whole report: runs created in [since, until). Default until: the UTC "
        f"midnight after the newest stored run (runs dated in the future ignored); default since: "
        f"{WINDOW_DAYS} days before until. Jobs follow their workflow run.",
    ),
    Definition(
        "branch",
        "Branch",
        "A pipeline's branch is the first of vcs.branch, vcs.tag, trigger_parameters.git.branch, "
        "trigger_parameters.git.tag it has. By default each project's default branch is measured "
        "(all branches when it is unknown); runs without any branch are counted as such.",
    ),
    Definition(
        "runs", "Runs", "Insights: every workflow run created in the window, any status, reruns included."
    ),
    Definition(
        "success_rate",
        "Success rate",
        "Insights: successful runs / (all runs - cancelled runs).",
    ),
    Definition("throughput", "Throughput", "Runs per day of the window (the same days for every row)."),
    Definition(
        "duration",
        "Duration",
        "Insights: stopped_at - created_at of completed runs (success, failed, error, cancelled), wall "
        "clock, approval waits included; percentiles interpolate linearly between closest ranks; "
        "standard deviation is the population one.",
    ),
    Definition(
        "active_duration",
        "Active duration",
        "Duration less the approval waits of the run; the trend charts show it, so waits do not "
        "flatten the other lines.",
    ),
    Definition(
        "mttr",
        "MTTR",
        "Insights' mean time to recovery, on the order in which runs finished: from the end of the "
        "first failed (or error) run after a success to the end of the next successful run of the "
        "same workflow on the same branch. Never negative. Mean and median over recoveries.",
    ),
    Definition(
        "first_pass_success_rate",
        "First-pass success",
        "First runs (not reruns) that succeeded / first runs that were not cancelled.",
    ),
    Definition(
        "time_to_green",
        "Time to green",
        "Per branch, all workflows together in finish order: from the end of the first failed run "
        "while every workflow was green to the end of the success that leaves no workflow red.",
    ),
    Definition(
        "rerun_rate",
        "Rerun rate",
        "Share of pipeline-and-workflow executions rerun at least once (a rerun is a new workflow of "
        "the same name in the same pipeline).",
    ),
    Definition(
        "rerun_kind",
        "Rerun causes",
        "auto: CircleCI's automatic rerun; from_failed: the rerun executed fewer jobs than the run it "
        "repeats; whole: the whole workflow ran again. Top failed jobs before a rerun are listed.",
    ),
    Definition(
        "time_lost",
        "Time lost",
        "Wall-clock duration of failed and error runs, and of reruns.",
    ),
    Definition(
        "job_runs",
        "Job runs",
        "Executions only: build jobs that started; not_run, blocked, on-hold and approval jobs are "
        "not runs. Failure rate = failed / (successful + failed) job runs (failed: failed, "
        "infrastructure_fail, timedout, terminated-unknown).",
    ),
    Definition("queue_time", "Queue time", "started_at - queued_at of executed build jobs (job details)."),
    Definition(
        "approval_wait",
        "Approval wait",
        "From an approval job going on hold to its approval; shown apart from durations.",
    ),
    Definition(
        "flaky_job",
        "Flaky job",
        "A job that both failed and succeeded on the same commit in the window, on any branch.",
    ),
    Definition(
        "flaky_test",
        "Flaky test",
        "A test (classname and name in a job) that both passed and failed on the same commit.",
    ),
    Definition(
        "slowest_tests",
        "Slowest tests",
        "p50 and p95 of run_time over passed and failed results, interpolated between ranks.",
    ),
    Definition(
        "critical_path",
        "Critical path",
        "In the latest successful run of a workflow: from the job that stopped last, back through the "
        "dependency that stopped last, to a job without dependencies.",
    ),
    Definition(
        "delivery",
        "Delivery",
        "Deploy runs: runs of workflows whose name, or one of whose job names, matches the deploy "
        "pattern (--deploy-pattern or the fixture's deploy-pattern config entry; a case-insensitive "
        f"regular expression, default {DEFAULT_DEPLOY_PATTERN!r}). Deployment frequency = successful "
        "deploy runs per day; change failure rate = failed / (successful + failed) deploy runs; time "
        "to restore = MTTR of deploy runs; lead time = from the pipeline's trigger to the end of the "
        "successful deploy run (median).",
    ),
    Definition(
        "cost_source",
        "Cost source",
        "usage-export: the organisation's Usage API rows (one per job run) in the window, by when the "
        "job started (else queued, else its run day). estimate: without such rows, credits per minute of "
        "the job's resource class (a dated table of CircleCI's price list, --credit-rates to override) x "
        "duration in minutes x parallelism, over executed jobs of workflow runs in the window; every "
        "estimated figure says so. Cost covers every branch unless --branch names one.",
    ),
    Definition(
        "credits",
        "Credits",
        "TOTAL_CREDITS - USER_CREDITS of each job run (user credits are seat charges, shown apart); "
        "summed by project (projects of the usage data outside the fixture included and marked), "
        "workflow, job, branch, resource class and week (Monday, UTC). Default-branch share: credits "
        "on each project's default branch / credits of projects whose default branch is known.",
    ),
    Definition(
        "credits_lost",
        "Credits lost",
        "Credits of failed job runs (failed, infrastructure_fail, timedout, terminated-unknown); of "
        "job runs in reruns; of the failed runs of flaky jobs on their flaky commits; of jobs that "
        "failed only on flaky tests. A run may count in several. Usage rows meet the collected job "
        "facts on workflow id and job name.",
    ),
    Definition(
        "cost_per_green_pipeline",
        "Cost per successful default-branch pipeline",
        "Credits spent on a project's default branch / its default-branch pipelines in the window "
        "whose every workflow's last run succeeded.",
    ),
    Definition(
        "rightsizing",
        "Right-sizing",
        "Usage export only. Per project, workflow, job and resource class with at least 5 runs whose "
        "utilisation was sampled (--rightsize-min-runs): oversized when the p95 of the maximum CPU and "
        "of the maximum RAM are both at most 40% (--oversized-pct): the next smaller class of its "
        "family is suggested, with the credits it would have saved at the same run times (credits x "
        "(1 - its rate / the current rate)); starved when the median of the maximum CPU is at least "
        "95% (--starved-pct).",
    ),
    Definition(
        "concurrency",
        "Concurrency",
        "Job runs at once, from the [started_at, stopped_at) of executed build jobs (one per job "
        "whatever its parallelism) of workflow runs in the window, every branch; per resource class and "
        "for the organisation. Peak; p95 of daily peaks (UTC days of the window, idle days count as "
        "0); minutes at or above the concurrency cap (--concurrency-cap or the fixture's "
        "concurrency-cap); queue time p50/p95 of jobs queued while at the cap against below it.",
    ),
    Definition(
        "health",
        "Health",
        "Projects are sorted by success rate, lowest first (no completed run last), then by MTTR.",
    ),
)


def as_dict() -> dict[str, str]:
    return {d.key: d.text for d in DEFINITIONS}


def help_text() -> str:
    """The definitions for `report --help`, one paragraph each."""
    return "\n\n".join(f"{d.name}: {d.text}" for d in DEFINITIONS)


MARKDOWN_INTRO = """\
# Metric definitions

What each metric of `circleci-ds report` means, one section per metric, with its key in the JSON
`definitions` object. The same texts are shown by `report --help` and in the HTML report's footer.
This file is generated from `src/circleci_ds/metrics/definitions.py`, the one place they are
written: do not edit it; run `python -m circleci_ds.metrics.definitions > docs/metrics.md` after
changing a definition (a test fails while the two differ). How the report is computed and what it
shows (window, branches, outputs, test and people sections) is in [report.md](report.md).
"""


def markdown() -> str:
    """docs/metrics.md: the fixed introduction, then every definition under its name and key."""
    sections = (f"## {d.name} (`{d.key}`)\n\n{d.text}\n" for d in DEFINITIONS)
    return "\n".join((MARKDOWN_INTRO, *sections))


if __name__ == "__main__":
    print(markdown(), end="")
