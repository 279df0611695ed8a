"""`batchrec run JOB.yaml`: flags → JobConfig → batchrec.pipeline.run_job; exit codes for CronJobs."""

from __future__ import annotations

from typing import Annotated

import typer


def run(
    job_file: Annotated[str, typer.Argument(metavar="JOB.yaml", help="Job file (see jobs/).")],
    set_: Annotated[
        list[str] | None,
        typer.Option("--set", help="Override a job key, e.g. --set train.epochs=3 (repeatable)."),
    ] = None,
    date: Annotated[
        str | None,
        typer.Option(
            envvar="BATCHREC_DATE", help="Run date YYYY-MM-DD. Default: the job's, else today (UTC)."
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Run every stage again, replacing outputs already published.")
    ] = False,
) -> None:
    """Run a job's stages in order, skipping those already published for this date.

    Exit codes: 0 done (or nothing left to do); 2 bad job file or input (do not retry);
    3 the quality gate refused to publish; anything else is transient (retry).
    """
    from batchrec import pipeline, storage, tracking

    job = pipeline.load(job_file, set_, date)
    try:
        report = pipeline.run_job(job, force=force)
    except pipeline.GateFailed as e:
        typer.echo(e.report.summary())
        typer.echo(f"error: quality gate: {e} — nothing was scored or published", err=True)
        raise typer.Exit(pipeline.EXIT_GATE) from e
    finally:  # whatever the outcome: tracked, and the report beside the run manifest
        run_dir = pipeline.paths_of(job).run
        tracking.job(storage.join(run_dir, pipeline.RUN_MANIFEST))
        _report(run_dir)
    typer.echo(report.summary())


def _report(run_dir: str) -> None:
    """The run's HTML report; a report that cannot be drawn never fails the run."""
    from batchrec import distributed, log
    from batchrec import report as report_stage

    if not distributed.is_main():
        return
    try:
        report_stage.run(report_stage.ReportConfig(run=run_dir))
    except Exception as e:
        log.get("report").warning("the run's report could not be written: %s", e)
