"""Default locations inside a workspace, so `batchrec score --model sasrec` needs no flags.

The workspace is `--workspace`, else `BATCHREC_WORKSPACE`, else `./batchrec-workspace`, and
may be any fsspec URL. Layout:
    {ws}/raw/synth/                      `batchrec data synth` default output
    {ws}/prepared/{name}/                prepared datasets (`data prepare` default: name of the input)
    {ws}/checkpoints/{model}/{stamp}/    `batchrec train` default output
    {ws}/outputs/{model}/dt={date}/      `batchrec score` default output
"Latest" means the published artifact with the newest `created_at` in its metadata.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable

from batchrec import schema, storage
from batchrec.errors import UserError

DEFAULT = "./batchrec-workspace"


def root(workspace: str | None = None) -> str:
    ws = workspace or os.environ.get("BATCHREC_WORKSPACE") or DEFAULT
    return ws.rstrip("/")


def raw_synth(ws: str) -> str:
    return storage.join(ws, "raw", "synth")


def prepared_root(ws: str) -> str:
    return storage.join(ws, "prepared")


def checkpoints_root(ws: str, model: str) -> str:
    return storage.join(ws, "checkpoints", model)


def outputs_root(ws: str, model: str) -> str:
    return storage.join(ws, "outputs", model)


def run_dir(out_root: str, date: str) -> str:
    return storage.join(out_root, f"dt={date}")


def stamp() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")


def latest(parent_url: str, meta_file: str, *, skip: Callable[[dict], bool] | None = None) -> str | None:
    """The published child of `parent_url` whose `meta_file` has the newest `created_at`.

    Children whose metadata satisfies `skip` are passed over.
    """
    best: tuple[str, str] | None = None
    for name in storage.ls(parent_url):
        if name.startswith(("_", ".")):
            continue
        child = storage.join(parent_url, name)
        meta = storage.join(child, meta_file)
        if not storage.is_published(child) or not storage.exists(meta):
            continue
        info = storage.read_json(meta)
        if skip is not None and skip(info):
            continue
        created = str(info.get("created_at", ""))
        if best is None or (created, child) > best:
            best = (created, child)
    return best[1] if best else None


def latest_prepared(ws: str) -> str | None:
    return latest(prepared_root(ws), schema.METADATA)


def latest_checkpoint(ws: str, model: str) -> str | None:
    # Training republishes its best-so-far checkpoint every epoch with status "training";
    # defaults must only ever pick a finished one.
    return latest(
        checkpoints_root(ws, model),
        schema.CHECKPOINT_META,
        skip=lambda meta: meta.get("metrics", {}).get("status") == "training",
    )


def require_prepared(ws: str, data: str | None = None) -> str:
    """`data` if given, else the workspace's latest prepared dataset, else one clear error."""
    url = data or latest_prepared(ws)
    if url is None:
        raise UserError(
            "no prepared dataset in the workspace",
            where=prepared_root(ws),
            fix="run `batchrec data prepare` first, or pass --data URL",
        )
    return url


def require_checkpoint(ws: str, model: str, checkpoint: str | None = None) -> str:
    """`checkpoint` if given, else the latest of `model` in the workspace, else one clear error."""
    url = checkpoint or latest_checkpoint(ws, model)
    if url is None:
        raise UserError(
            f"no checkpoint for model {model!r}",
            where=checkpoints_root(ws, model),
            fix=f"train one with `batchrec train --model {model}`, or pass --checkpoint URL",
        )
    return url
