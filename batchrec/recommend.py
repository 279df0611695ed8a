"""`batchrec recommend`: one user's recent history and top-k at the terminal, with titles.

    batchrec recommend --run RUN --user 196 [--k 10] [--items ml-100k/u.item] [--json]
    batchrec recommend --checkpoint CKPT --history 242,302,377 [--k 10] [--items FILE]

From a published scoring run (the URL `batchrec score` prints, `{out}/_runs/dt=DATE`): the
user's list exactly as published (their row of that date's `topk` partition) and the last
`recent` items of their history in the run's prepared dataset. From a checkpoint: a history
given on the command line in external item ids, oldest first, encoded by the model (sequence
models are inductive: any history can be scored) and ranked over the catalogue with the
checkpoint's seen-item policy; items the model does not know are dropped and named.

Titles come from `items`: MovieLens `u.item` (id|title|…) or `movies.dat` (id::title::…),
a RecBole `.item` file (tab-separated, an `item_id:token` column and a `…title…` column), or
any CSV/Parquet with an id column (`item_id`, else the first whose name contains "id") and a
title column (the first whose name contains "title", else "name"). Ids are matched as text.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from batchrec import log, schema, storage
from batchrec.errors import UserError
from batchrec.ids import IdMap, parse_id

_log = log.get("recommend")


@dataclass
class RecommendConfig:
    run: str | None = None  # a published scoring run ({out}/_runs/dt=DATE), as `batchrec score` prints it
    user: str | None = None  # the user's external id (with --run)
    checkpoint: str | None = None  # score --history with this checkpoint instead of reading a run
    history: str | None = None  # comma-separated external item ids, oldest first (with --checkpoint)
    k: int = 10  # items to show
    items: str | None = None  # item side file with titles: u.item, movies.dat, RecBole .item, CSV, Parquet
    recent: int = 10  # history items to show, most recent last

    def validate(self) -> list[str]:
        errs = []
        if (self.run is None) == (self.checkpoint is None):
            errs.append("give either run (a published scoring run) or checkpoint (with history)")
        if self.run is not None and self.user is None:
            errs.append("user: required with run")
        if self.checkpoint is not None and not self.history:
            errs.append("history: required with checkpoint (comma-separated item ids)")
        if self.k < 1 or self.recent < 0:
            errs.append("k must be ≥ 1 and recent ≥ 0")
        return errs


def run(cfg: RecommendConfig) -> dict[str, Any]:
    """{"user", "from", "source", "history": [{item_id, title}], "recommendations": [{rank, item_id,
    score, title}]}; `source` is "fallback" for a user the model could not score (popular items)."""
    result = from_run(cfg) if cfg.run else from_checkpoint(cfg)
    titles = read_titles(cfg.items) if cfg.items else {}
    for row in (*result["history"], *result["recommendations"]):
        row["title"] = titles.get(str(row["item_id"]))
    return result


def from_run(cfg: RecommendConfig) -> dict[str, Any]:
    from batchrec.dataset import PreparedDataset

    if not storage.is_published(cfg.run):
        raise UserError(
            "no published scoring run here", where=cfg.run, fix="pass the URL `batchrec score` printed"
        )
    manifest = storage.read_json(storage.join(cfg.run, schema.MANIFEST))
    topk = _rows(manifest["tables"][schema.TOPK], "user_id", cfg.user)
    if topk.num_rows == 0:
        raise UserError(
            f"user {cfg.user!r} has no list in this run", where=cfg.run, fix="check the id (external user id)"
        )
    source = topk.column("source")[0].as_py() if "source" in topk.column_names else "model"
    if manifest["topk_layout"] == "exploded":
        topk = topk.sort_by("rank")
        items, scores = topk.column("item_id").to_pylist(), topk.column("score").to_pylist()
    else:
        items, scores = topk.column("item_ids")[0].as_py(), topk.column("scores")[0].as_py()
    ds = PreparedDataset.open(manifest["data"])
    user_idx = int(ds.user_map.to_internal([parse_id(cfg.user, ds.user_map.type, "user")])[0])
    seq = _rows(ds.part_urls("sequences"), "user_idx", str(user_idx), pa.int64())
    history = seq.column("items")[0].as_py() if seq.num_rows else []
    recent = ds.item_map.to_external(np.asarray(history[-cfg.recent :] if cfg.recent else [], dtype=np.int64))
    return {
        "user": cfg.user,
        "from": cfg.run,
        "source": source,
        "history": [{"item_id": i} for i in recent.to_pylist()],
        "recommendations": [
            {"rank": r + 1, "item_id": i, "score": s}
            for r, (i, s) in enumerate(zip(items[: cfg.k], scores, strict=False))
        ],
    }


def from_checkpoint(cfg: RecommendConfig) -> dict[str, Any]:
    from batchrec import checkpoint, ranking
    from batchrec.scorer import Scorer

    ids = checkpoint.load_item_ids(cfg.checkpoint)
    if ids is None:
        raise UserError(
            "the checkpoint has no item map", where=cfg.checkpoint, fix="retrain it with this batchrec"
        )
    vocab = IdMap(ids, offset=1)
    given = [t.strip() for t in cfg.history.split(",") if t.strip()]
    internal = vocab.to_internal([parse_id(t, vocab.type, "item") for t in given], strict=False)
    unknown = [t for t, i in zip(given, internal, strict=True) if i <= 0]
    if unknown:
        _log.warning("items the model does not know, left out of the history: %s", ", ".join(unknown))
    known = internal[internal > 0].astype(np.int64)
    if not len(known):
        raise UserError(
            "no item of the history is known to the model",
            where=cfg.checkpoint,
            fix="give item ids it was trained on",
        )
    meta = checkpoint.read_meta(cfg.checkpoint)
    policy = ranking.seen_policy(None, meta.get("train_config"))
    out = Scorer(cfg.checkpoint, k=cfg.k, device="cpu", exclude_seen=policy)(
        {"user_idx": [0], "items": [known]}
    )
    pairs = [
        (int(i), float(s))
        for i, s in zip(out["topk_items"][0], out["topk_scores"][0], strict=True)
        if np.isfinite(s)
    ]
    external = vocab.to_external(np.asarray([i for i, _ in pairs], dtype=np.int64)).to_pylist()
    recent = vocab.to_external(known[-cfg.recent :] if cfg.recent else known[:0]).to_pylist()
    return {
        "user": None,
        "from": cfg.checkpoint,
        "source": "model",
        "history": [{"item_id": i} for i in recent],
        "recommendations": [
            {"rank": r + 1, "item_id": i, "score": s}
            for r, (i, (_, s)) in enumerate(zip(external, pairs, strict=True))
        ],
    }


def _rows(url: str | list[str], column: str, value: str, type_: pa.DataType | None = None) -> pa.Table:
    """The rows of a Parquet table (a file, a partition directory or a list of parts) where
    `column` equals `value`, read with a filter rather than whole."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pds

    fs, path = storage.url_to_fs(url) if isinstance(url, str) else storage.arrow_fs(url)
    data = pds.dataset(path, filesystem=fs, format="parquet", exclude_invalid_files=True)
    key = parse_id(value, type_ or data.schema.field(column).type, column)
    return data.to_table(filter=pc.field(column) == key)


def read_titles(url: str) -> dict[str, str]:
    """{item id as text: title} from an item side file (see the module's docstring)."""
    import pyarrow.csv as pcsv

    if not storage.exists(url):
        raise UserError("no item file here", where=url, fix="pass --items with the path of an item side file")
    name = storage.basename(url).lower()
    raw = storage.read_bytes(url)
    if name == "u.item" or name.endswith(".dat"):
        sep = "|" if name == "u.item" else "::"
        rows = [line.split(sep) for line in raw.decode("latin-1").splitlines() if line.strip()]
        return {r[0]: r[1] for r in rows if len(r) > 1}
    if name.endswith(".parquet"):
        table = storage.read_parquet(url)
    else:
        delimiter = "\t" if name.endswith((".item", ".tsv")) else ","
        table = pcsv.read_csv(
            io.BytesIO(raw),
            parse_options=pcsv.ParseOptions(
                delimiter=delimiter, quote_char=False if delimiter == "\t" else '"'
            ),
            convert_options=pcsv.ConvertOptions(column_types={}, strings_can_be_null=False),
        )
    columns = [c.lower() for c in table.column_names]
    id_col = next((i for i, c in enumerate(columns) if c.split(":")[0] == "item_id"), None)
    if id_col is None:
        id_col = next((i for i, c in enumerate(columns) if "id" in c), None)
    title_col = next((i for i, c in enumerate(columns) if "title" in c), None)
    if title_col is None:
        title_col = next((i for i, c in enumerate(columns) if "name" in c and i != id_col), None)
    if id_col is None or title_col is None:
        raise UserError(
            f"no id and title columns among {table.column_names}",
            where=url,
            fix="give a file with an item id column and a title (or name) column",
        )
    ids = table.column(id_col).cast(pa.string()).to_pylist()
    return dict(zip(ids, table.column(title_col).cast(pa.string()).to_pylist(), strict=True))


def format_table(result: dict[str, Any]) -> str:
    """The result as two plain-text tables, for the terminal."""
    who = f"user {result['user']}" if result["user"] is not None else "the given history"
    lines = [f"{who} — recent history (most recent last):"]
    for row in result["history"]:
        lines.append(f"        {row['item_id']!s:>10}  {row['title'] or ''}")
    what = (
        "the fallback list: popular items, the model knows none of the history"
        if result["source"] == "fallback"
        else "model"
    )
    lines.append(f"top {len(result['recommendations'])} ({what}; {result['from']}):")
    lines.append(f"  rank  {'item':>10}  {'score':>8}  title")
    for row in result["recommendations"]:
        lines.append(
            f"  {row['rank']:>4}  {row['item_id']!s:>10}  {row['score']:>8.3f}  {row['title'] or ''}"
        )
    return "\n".join(lines)
