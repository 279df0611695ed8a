"""The `batchrec` command: a thin Typer app composed of one module per command group.

Commands parse flags into stage configs and call the stage; they hold no logic. Heavy
imports (torch, ray, faiss) happen inside the commands so `batchrec --help` stays fast.
A `UserError` anywhere becomes one `error: …` line on stderr and exit code 2; a
`RetryableError` (a stalled scoring run) one line and exit code 75.

Global options (`--log-format`, `--quiet`, `--verbose`, `--version`) may come before or after
the subcommand: `batchrec score … --log-format json` is `batchrec --log-format json score …`.
"""

from __future__ import annotations

import os
from enum import Enum

import typer
from typer.core import TyperGroup

from batchrec.commands import data, evaluate, index, rayjob, recommend, report, run, score, train
from batchrec.errors import EXIT_RETRYABLE, EXIT_USER_ERROR, RetryableError, UserError

# Global options and whether each takes a value; they are moved before the subcommand.
GLOBAL = {
    "--log-format": True,
    "--mlflow": True,
    "--quiet": False,
    "-q": False,
    "--verbose": False,
    "-v": False,
    "--version": False,
}


def hoist_globals(args: list[str]) -> list[str]:
    """`args` with the global options found after the subcommand moved in front of it."""
    front, rest, i = [], [], 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            rest += args[i:]
            break
        name = arg.split("=", 1)[0]
        if name in GLOBAL:
            takes = GLOBAL[name] and "=" not in arg
            front += args[i : i + 1 + takes]
            i += 1 + takes
            continue
        rest.append(arg)
        i += 1
    return front + rest


class _Group(TyperGroup):
    def parse_args(self, ctx, args):
        return super().parse_args(ctx, hoist_globals(list(args)))

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as e:
            typer.echo(f"error: {e}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except RetryableError as e:
            typer.echo(f"error: {e}", err=True)
            ctx.exit(EXIT_RETRYABLE)


app = typer.Typer(
    cls=_Group,
    name="batchrec",
    help="Batch scoring and embedding export for sequential recommenders.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(data.app, name="data", help="Ingest interaction logs: prepare, stats, synth, download.")
app.command("train", help="Train a sequence model (one process, or DDP under torchrun).")(train.train)
app.command("evaluate", help="Full-ranking evaluation of a checkpoint: HR@k, NDCG@k, MRR, Coverage@k.")(
    evaluate.evaluate
)
app.command("score", help="Score every user with Ray Data: embeddings and top-k Parquet.")(score.score)
app.command("report", help="A run's HTML report: curves, metrics at k=1..50, lists, stability.")(
    report.report
)
app.command("recommend", help="One user's history and top-k at the terminal, with titles.")(
    recommend.recommend
)
app.add_typer(index.app, name="index", help="FAISS index over exported item embeddings: build, query, eval.")
app.command("run")(run.run)
app.command(
    "rayjob", help="Create or resume the date's KubeRay RayJob and follow it (the CronJob's command)."
)(rayjob.rayjob)


class LogFormat(str, Enum):
    text = "text"
    json = "json"


def _version(value: bool) -> None:
    if value:
        from batchrec import __version__

        typer.echo(f"batchrec {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    log_format: LogFormat = typer.Option(
        LogFormat.text,
        "--log-format",
        envvar="BATCHREC_LOG_FORMAT",
        help="json: one JSON object per log line.",
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Warnings and errors only."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug lines too (Ray's own among them)."),
    mlflow: str | None = typer.Option(
        None, "--mlflow", envvar="MLFLOW_TRACKING_URI", help="Log runs to this MLflow tracking URI."
    ),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    import logging

    from batchrec import log

    if quiet and verbose:
        raise typer.BadParameter("--quiet and --verbose exclude each other")
    if mlflow:  # read by batchrec.tracking, and by MLflow itself
        os.environ["MLFLOW_TRACKING_URI"] = mlflow
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    log.configure(json_format=log_format is LogFormat.json, level=level)


if __name__ == "__main__":
    app()
