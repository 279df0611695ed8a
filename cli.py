"""The `batchrec` command: a thin Typer app composed of one module per command group.

Commands parse flags into stage configs and call the stage; they hold no logic. Heavy
imports (torch, ray, faiss) happen inside the commands so `batchrec --help` stays fast.
A `UserError` anywhere becomes one `error: …` line on stderr and exit code 2; a
`RetryableError` (a stalled scoring run) one line and exit code 75.
"""

from __future__ import annotations

import typer
from typer.core import TyperGroup

from batchrec.commands import data, evaluate, index, rayjob, run, score, train
from batchrec.errors import EXIT_RETRYABLE, EXIT_USER_ERROR, RetryableError, UserError


class _Group(TyperGroup):
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
    add_completion=False,
)
app.add_typer(data.app, name="data", help="Ingest interaction logs: prepare, stats, synth, download.")
app.command("train", help="Train a sequence model (one process, or DDP under torchrun).")(train.train)
app.command("evaluate", help="Full-ranking evaluation of a checkpoint: HR@k, NDCG@k, MRR, Coverage@k.")(
    evaluate.evaluate
)
app.command("score", help="Score every user with Ray Data: embeddings and top-k Parquet.")(score.score)
app.add_typer(index.app, name="index", help="FAISS index over exported item embeddings: build, query, eval.")
app.command("run")(run.run)
app.command(
    "rayjob", help="Create or resume the date's KubeRay RayJob and follow it (the CronJob's command)."
)(rayjob.rayjob)


@app.callback()
def _main(
    log_json: bool = typer.Option(
        False, "--log-json", envvar="BATCHREC_LOG_JSON", help="One JSON object per log line."
    ),
) -> None:
    from batchrec import log

    log.configure(json_format=True if log_json else None)


if __name__ == "__main__":
    app()
