"""`batchrec index build|query|eval`: flags → stage config → `batchrec.index`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from batchrec import flags
from batchrec import index as index_stage
from batchrec.index import IndexBuildConfig

app = typer.Typer(no_args_is_help=True)

IndexUrl = Annotated[
    str, typer.Option("--index", help="A published index directory (e.g. {out}/index/dt=DATE).")
]
K = Annotated[int, typer.Option("--k", min=1, help="How many results.")]
Embeddings = Annotated[
    str | None,
    typer.Option("--embeddings", help="item_embeddings/ table (default: the one the index was built from)."),
]


app.command("build")(
    flags.command(
        IndexBuildConfig,
        lambda cfg: index_stage.build(cfg),
        doc="Build a FAISS index over a scoring run's item embeddings and publish it atomically.",
    )
)


@app.command()
def query(
    index: IndexUrl,
    item: Annotated[str | None, typer.Option(help="External item id: find similar items.")] = None,
    user: Annotated[
        str | None, typer.Option(help="External user id: recommend items (needs --user-embeddings).")
    ] = None,
    user_embeddings: Annotated[str | None, typer.Option(help="A user_embeddings/ table.")] = None,
    data: Annotated[
        str | None, typer.Option(help="Prepared dataset: exclude the items the user has already seen.")
    ] = None,
    embeddings: Embeddings = None,
    k: K = 10,
    as_json: flags.AS_JSON = False,
) -> None:
    """Similar items for --item, or recommendations for --user, with external ids and scores."""
    from batchrec.errors import UserError
    from batchrec.index import Index, recommend, similar_items

    if (item is None) == (user is None):
        raise UserError(
            "give exactly one of --item or --user", fix="e.g. --item 42, or --user 7 --user-embeddings URL"
        )
    if user is not None and not user_embeddings:
        raise UserError("--user needs --user-embeddings", fix="pass the run's user_embeddings/ table URL")
    idx = Index.open(index)
    if item is not None:
        results = similar_items(idx, item, k, embeddings)
    else:
        results = recommend(idx, user, user_embeddings, k, data)
    if as_json:
        typer.echo(json.dumps({"item" if item is not None else "user": item or user, "results": results}))
        return
    for rank, r in enumerate(results, 1):
        typer.echo(f"{rank}\t{r['item_id']}\t{r['score']:.4f}")


@app.command("eval")
def eval_(
    index: IndexUrl,
    queries: Annotated[str, typer.Option(help="A user_embeddings/ table to sample queries from.")],
    embeddings: Embeddings = None,
    k: K = 10,
    sample: Annotated[int, typer.Option(min=1, help="How many user queries to sample.")] = 10_000,
    as_json: flags.AS_JSON = False,
) -> None:
    """recall@k against exact search, and queries per second of the index and of exact search."""
    from batchrec.index import Index, evaluate

    result = evaluate(Index.open(index), queries, k, sample, embeddings)
    if as_json:
        typer.echo(json.dumps(result))
        return
    for key, value in result.items():
        typer.echo(f"{key}\t{value}")
