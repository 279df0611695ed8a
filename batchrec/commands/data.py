"""`batchrec data prepare|stats|synth|download`: each config's fields are its flags → the stage."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from batchrec import flags
from batchrec.data import download, prepare, synth
from batchrec.data.download import DownloadConfig
from batchrec.data.prepare import PrepareConfig
from batchrec.data.synth import SynthConfig

app = typer.Typer(no_args_is_help=True)

Format = Annotated[
    str,
    typer.Option(
        "--format",
        help="auto, parquet, csv, tsv, movielens-100k, movielens-dat, recbole, playlist, sasrec-txt.",
    ),
]
UserCol = Annotated[str | None, typer.Option(help="User id column (default: detected).")]
ItemCol = Annotated[
    str | None, typer.Option(help="Item id column; several comma-separated make one composite item.")
]
TimeCol = Annotated[str | None, typer.Option(help="Timestamp column (default: detected).")]
RatingCol = Annotated[str | None, typer.Option(help="Rating column (default: detected).")]


app.command("prepare")(
    flags.command(
        PrepareConfig,
        lambda cfg: prepare.run(cfg),
        doc="Turn an interaction log into a prepared dataset: dense ids, time-ordered sequences, splits.",
        arguments=("input",),
    )
)


@app.command()
def stats(
    url: Annotated[str, typer.Argument(help="A prepared dataset or a raw interaction log (any format).")],
    as_json: flags.AS_JSON = False,
    format: Format = "auto",
    user_col: UserCol = None,
    item_col: ItemCol = None,
    time_col: TimeCol = None,
    rating_col: RatingCol = None,
) -> None:
    """Users, items, interactions, sequence lengths, density (and split sizes of prepared data)."""
    from batchrec.data import formats
    from batchrec.data import stats as data_stats

    cols = formats.Columns(user=user_col, item=item_col, time=time_col, rating=rating_col)
    result = data_stats.compute(url, format, cols)
    typer.echo(json.dumps(result, indent=2) if as_json else data_stats.table(result))


app.command("synth")(
    flags.command(
        SynthConfig,
        lambda cfg: synth.run(cfg),
        doc="Write synthetic interactions with learnable sequential structure (Parquet parts).",
    )
)
app.command("download")(
    flags.command(
        DownloadConfig,
        lambda cfg: download.run(cfg),
        doc="Download, verify, extract and cache an official MovieLens archive.",
        arguments=("name",),
        envvars={"base_url": "BATCHREC_MOVIELENS_BASE_URL"},
    )
)
