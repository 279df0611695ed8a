"""`batchrec data prepare|stats|synth|download`: flags → stage config → stage."""

from __future__ import annotations

import json
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True)

Workspace = Annotated[
    str | None,
    typer.Option("--workspace", envvar="BATCHREC_WORKSPACE", help="Workspace URL for default locations."),
]
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


@app.command()
def prepare(
    input: Annotated[
        str, typer.Argument(help="Interactions: a file, a Parquet directory or a MovieLens folder.")
    ],
    out: Annotated[
        str | None, typer.Option(help="Destination URL (default: {workspace}/prepared/{input name}).")
    ] = None,
    format: Format = "auto",
    user_col: UserCol = None,
    item_col: ItemCol = None,
    time_col: TimeCol = None,
    rating_col: RatingCol = None,
    min_rating: Annotated[
        float | None, typer.Option(help="Keep only events rated at least this (implicit feedback).")
    ] = None,
    repeats: Annotated[
        str, typer.Option(help="Repeated (user, item) events: keep, drop-consecutive or first.")
    ] = "keep",
    min_user_count: Annotated[int, typer.Option(help="k-core: minimum events per user (0 disables).")] = 5,
    min_item_count: Annotated[int, typer.Option(help="k-core: minimum events per item (0 disables).")] = 5,
    split: Annotated[str, typer.Option(help="loo (leave-one-out), time (global quantiles) or full.")] = "loo",
    valid_quantile: Annotated[
        float, typer.Option(help="--split time: valid targets after this quantile.")
    ] = 0.8,
    test_quantile: Annotated[
        float, typer.Option(help="--split time: test targets after this quantile.")
    ] = 0.9,
    overwrite: Annotated[bool, typer.Option(help="Replace a different dataset at --out.")] = False,
    workspace: Workspace = None,
) -> None:
    """Turn an interaction log into a prepared dataset: dense ids, time-ordered sequences, splits."""
    options = {k: v for k, v in locals().items() if v is not None}
    from batchrec.config import from_dict
    from batchrec.data.prepare import PrepareConfig, run

    cfg = from_dict(PrepareConfig, options, where="command line")
    typer.echo(run(cfg))


@app.command()
def stats(
    url: Annotated[str, typer.Argument(help="A prepared dataset or a raw interaction log (any format).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
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


@app.command()
def synth(
    out: Annotated[str | None, typer.Option(help="Destination URL (default: {workspace}/raw/synth).")] = None,
    users: Annotated[int, typer.Option(help="Number of users.")] = 5000,
    items: Annotated[int, typer.Option(help="Number of items.")] = 1000,
    avg_len: Annotated[float, typer.Option(help="Average events per user (minimum 5).")] = 40.0,
    seed: Annotated[int, typer.Option(help="Random seed; same seed, same data.")] = 0,
    workspace: Workspace = None,
) -> None:
    """Write synthetic interactions with learnable sequential structure (Parquet parts)."""
    options = {k: v for k, v in locals().items() if v is not None}
    from batchrec.config import from_dict
    from batchrec.data.synth import SynthConfig, run

    cfg = from_dict(SynthConfig, options, where="command line")
    typer.echo(run(cfg))


@app.command()
def download(
    name: Annotated[
        str,
        typer.Argument(
            help="movielens-100k, movielens-1m, movielens-10m, movielens-20m, movielens-25m or movielens-32m."
        ),
    ],
    dest: Annotated[
        str | None, typer.Option(help="Destination URL (default: {workspace}/raw/movielens).")
    ] = None,
    base_url: Annotated[
        str | None,
        typer.Option(envvar="BATCHREC_MOVIELENS_BASE_URL", help="Mirror of the GroupLens datasets folder."),
    ] = None,
    workspace: Workspace = None,
) -> None:
    """Download, verify, extract and cache an official MovieLens archive."""
    from batchrec.data.download import DownloadConfig, run

    folder = run(DownloadConfig(name=name, dest=dest, base_url=base_url, workspace=workspace))
    typer.echo(folder)
