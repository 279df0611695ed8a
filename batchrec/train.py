"""The training stage: `run(TrainConfig) -> checkpoint URL`, in one process or under torchrun (DDP).

    batchrec train --model sasrec --data DATA --out CKPT
    torchrun --nproc_per_node=2 -m batchrec train --model sasrec --data DATA --out CKPT

Each user's training history items[:train_len] is cut into max_len windows from its end.
Causal models (SASRec, GRU4Rec) predict the next item at every position that has an item
before it; BERT4Rec predicts cloze-masked items. After every epoch (or every `eval_every_steps`
steps) rank 0 computes validation NDCG@10 with full ranking under `exclude_seen` (the policy
the checkpoint then carries to evaluate and score), keeps the best weights, appends a line to
`{out}.metrics.jsonl`, and republishes `{out}` atomically: model.pt = best weights so far,
train_state.pt = the latest weights + optimizer + epoch + best metric + patience, which is
what `--resume` continues from. Randomness (shuffling, dropout, masks, negatives) is reseeded
from (seed, epoch, rank) at the start of every epoch, so a resumed run repeats exactly what
the uninterrupted one would have done.
"""

from __future__ import annotations

import copy
import json
import os
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from batchrec import checkpoint, log, storage, workspace
from batchrec.dataset import PreparedDataset
from batchrec.errors import UserError
from batchrec.evaluate import SplitData, evaluate_model, left_padded, resolve_device
from batchrec.models import SeqRecModel, build, model_class
from batchrec.models.losses import LOSSES, Loss
from batchrec.ranking import DEFAULT_SEEN_POLICY, check_seen_policy


@dataclass
class TrainConfig:
    model: str = "sasrec"
    data: str | None = None  # default: the workspace's latest prepared dataset
    out: str | None = None  # default: {workspace}/checkpoints/{model}/{stamp}
    loss: str = "ce"  # ce | bce | sampled | inbatch
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 128
    max_len: int | None = None  # None: the model's default (200)
    dim: int | None = None  # None: the model's default (64)
    dropout: float | None = None  # None: the model's default
    lr: float = 2e-3
    weight_decay: float = 0.0
    seed: int = 0
    n_negatives: int = 256  # `sampled` loss only
    exclude_seen: str = DEFAULT_SEEN_POLICY  # history | none: for validation, then evaluate/score
    model_config: dict[str, Any] = field(default_factory=dict)  # other model keys, e.g. n_layers, mask_prob
    patience: int | None = None  # evaluations without a better valid NDCG@10; None: 8 (BERT4Rec 40)
    eval_every_steps: int = 0  # 0: evaluate once per epoch
    eval_max_users: int = 20000  # validation users sampled per evaluation (full ranking each)
    compile: bool = False  # torch.compile the model
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    device: str = "auto"
    resume: bool = False  # continue from {out}/train_state.pt
    warm_start: str | None = None  # checkpoint whose item vectors seed this model, matched by external id
    stop_after_epochs: int | None = None  # stop this process after so many epochs (tests --resume)
    workspace: str | None = None

    def validate(self) -> list[str]:
        errs = check_seen_policy(self.exclude_seen)
        if self.loss not in LOSSES:
            errs.append(f"loss: {self.loss!r} is not one of {', '.join(LOSSES)}")
        for k in ("epochs", "batch_size", "patience", "n_negatives"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                errs.append(f"{k} must be ≥ 1")
        if self.lr < 0:
            errs.append("lr must be ≥ 0 (0 keeps the initial weights: a floor for the quality gate)")
        return errs


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def _init_distributed(device: str) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist()
    d = _Dist(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device in ("auto", "cuda") and torch.cuda.is_available()
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return d


def _broadcast(obj: Any, d: _Dist) -> Any:
    if d.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def model_config_for(cfg: TrainConfig) -> dict[str, Any]:
    cls = model_class(cfg.model)
    keys = {f for f in cls.Config.__dataclass_fields__}
    out = dict(cfg.model_config)
    for k in ("dim", "max_len", "dropout"):
        v = getattr(cfg, k)
        if v is not None and k in keys:
            out[k] = v
    return out


def training_matrix(ds: PreparedDataset, width: int, overlap: int) -> tuple[np.ndarray, np.ndarray]:
    """(windows, width) int64, left-padded, and each window's user row: every user's
    items[:train_len] cut into windows from the end, consecutive windows sharing `overlap` items,
    so every training item is predicted once per epoch even when histories are longer than the
    model's max_len."""
    _, offsets, items, train_len = ds.flat_sequences()
    return windows(items, offsets[:-1], train_len, width, overlap)


def windows(
    items: np.ndarray, starts: np.ndarray, lengths: np.ndarray, width: int, overlap: int
) -> tuple[np.ndarray, np.ndarray]:
    """`training_matrix` on flat arrays: history i is items[starts[i] : starts[i] + lengths[i]].

    A window of one item is dropped: its item would be a target with no input to predict it from."""
    step = width - overlap
    n_windows = np.maximum(np.ceil((lengths - overlap) / step).astype(np.int64), 0)
    user = np.repeat(np.arange(len(lengths)), n_windows)
    back = np.arange(n_windows.sum()) - np.repeat(np.cumsum(n_windows) - n_windows, n_windows)
    ends = starts[user] + lengths[user] - back * step
    begins = np.maximum(ends - width, starts[user])
    keep = ends - begins >= 2
    return left_padded(items, begins[keep], ends[keep], width), user[keep]


class Objective(nn.Module):
    """Model + loss as one module, so DDP sees one forward per step.

    `users` (B,) names each window's user row, for losses that draw negatives outside the user's
    own items. `trim_padding` drops the batch's all-padding columns (a large saving with short
    histories); it is off under torch.compile, where a data-dependent width would recompile
    every step."""

    def __init__(self, model: SeqRecModel, loss: Loss, trim_padding: bool = True):
        super().__init__()
        self.model, self.loss, self.trim_padding = model, loss, trim_padding

    def forward(
        self, batch: torch.Tensor, generator: torch.Generator, users: torch.Tensor | None = None
    ) -> torch.Tensor:
        pick, vecs, targets = self.targets(batch, generator)
        owners = users[:, None].expand_as(targets)[pick] if users is not None else None
        return self.loss(vecs[pick], targets[pick], self.model.item_embeddings(), generator, owners)

    def targets(self, batch: torch.Tensor, generator: torch.Generator | None = None):
        """(pick, vectors, targets): the positions trained on, (B, T) bool, and what they predict.

        A target needs an input: causally, a real item before it (a user's first item follows only
        padding); under cloze masking `mask_items` always leaves one item of a window unmasked."""
        if self.trim_padding:
            batch = batch[:, int((batch > 0).any(dim=0).to(torch.int8).argmax()) :]
        if self.model.causal:
            inputs, targets = batch[:, :-1], batch[:, 1:]
            vecs = self.model.sequence_vectors(inputs)
            pick = (targets > 0) & (inputs > 0)
        else:
            inputs, targets = self.model.mask_items(batch, generator)
            vecs = self.model.sequence_vectors(inputs)
            pick = targets > 0
        return pick, vecs, targets


def warm_start(model: SeqRecModel, url: str, ds: PreparedDataset) -> int:
    """Copy a checkpoint's weights into `model`; item rows matched by external id. Returns items carried."""
    old, meta = checkpoint.load(url)
    if meta["model"] != model.name:
        raise UserError(
            f"warm_start checkpoint is a {meta['model']} model, not {model.name}",
            where=url,
            fix="warm-start from a checkpoint of the same model",
        )
    old_ids = checkpoint.load_item_ids(url)
    if old_ids is None:
        raise UserError(
            "warm_start checkpoint has no item map", where=url, fix="retrain it with this batchrec"
        )
    new_of_old = ds.item_map.to_internal(old_ids, strict=False)  # (N_old,) -1 where the item vanished
    found = new_of_old > 0
    old_rows = torch.from_numpy(np.flatnonzero(found) + 1)
    new_rows = torch.from_numpy(new_of_old[found])
    old_state, new_state = old.state_dict(), model.state_dict()
    n_old, n_new = int(meta["n_items"]), ds.n_items
    for name, value in new_state.items():
        if name in getattr(model, "item_tables", ()):
            value[new_rows] = old_state[name][old_rows].to(value.dtype)
            value[0] = old_state[name][0]
            value[n_new + 1 :] = old_state[name][n_old + 1 :]  # special rows past the catalogue ([MASK])
        elif name in old_state and old_state[name].shape == value.shape:
            value.copy_(old_state[name])
    model.load_state_dict(new_state)
    return int(found.sum())


def _append_jsonl(url: str, record: dict[str, Any], history: list[dict[str, Any]]) -> None:
    history.append(record)
    storage.write_bytes(url, "".join(json.dumps(r) + "\n" for r in history).encode())


def run(cfg: TrainConfig) -> str:
    """Train `cfg.model` and publish its best checkpoint; returns the checkpoint URL."""
    d = _init_distributed(cfg.device)
    try:
        return _run(cfg, d)
    finally:
        if d.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def _run(cfg: TrainConfig, d: _Dist) -> str:
    log.set_stage("train")
    logger = log.get("train")
    ws = workspace.root(cfg.workspace)
    data_url = workspace.require_prepared(ws, cfg.data)
    out = _broadcast(cfg.out or storage.join(workspace.checkpoints_root(ws, cfg.model), workspace.stamp()), d)
    ds = PreparedDataset.open(data_url)
    device = resolve_device(cfg.device)
    if d.world > 1 and device.type == "cuda":
        device = torch.device("cuda", d.local_rank)
    torch.manual_seed(cfg.seed)
    model = build(cfg.model, ds.n_items, model_config_for(cfg))
    data_ref = ds.reference()
    save = dict(data=data_ref, train_config=asdict(cfg), item_ids=ds.item_map.external)
    valid = (
        SplitData.from_dataset(ds, "valid", max_users=cfg.eval_max_users, seed=cfg.seed) if d.main else None
    )

    if cfg.model == "pop":
        model.fit(ds.train_items())
        if d.main:
            metrics = evaluate_model(model, valid, [10, 20], policy=cfg.exclude_seen)
            checkpoint.save(out, model, metrics={"valid": metrics, "status": "done"}, **save)
            logger.info("popularity: valid NDCG@10 %.4f → %s", metrics["NDCG@10"], out)
        if d.world > 1:
            dist.barrier()
        return out

    causal = model.causal
    width = model.max_len + (1 if causal else 0)
    train_mat, train_users = training_matrix(ds, width, overlap=1 if causal else 0)
    if len(train_mat) == 0:
        raise UserError("no user has a training history long enough", where=data_url)
    counts = torch.from_numpy(np.bincount(train_mat.ravel(), minlength=ds.n_items + 1)[: ds.n_items + 1])
    # bce draws each negative outside the user's own training items, as the SASRec code does
    train_len = ds.flat_sequences()[3]
    own = (np.concatenate([[0], np.cumsum(train_len)]), ds.train_items()) if cfg.loss == "bce" else None
    loss_fn = Loss(cfg.loss, ds.n_items, cfg.n_negatives, counts, user_items=own)

    if cfg.warm_start and not cfg.resume:
        carried = warm_start(model, cfg.warm_start, ds)
        logger.info("warm start from %s: %d of %d items carried over", cfg.warm_start, carried, ds.n_items)
    model.to(device)
    objective: nn.Module = Objective(model, loss_fn, trim_padding=not cfg.compile).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    state = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": -1, "bad": 0, "history": [], "done": False,
             "best_record": {}}  # fmt: skip
    best_weights = copy.deepcopy(model.state_dict())
    if cfg.resume:
        saved = checkpoint.load_train_state(out, map_location=device) if storage.is_published(out) else None
        if saved is None:
            logger.info("--resume: nothing to resume at %s, starting fresh", out)
        else:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            best_weights = saved["best_model"]
            state = saved["state"]
            logger.info("resuming at epoch %d (best valid NDCG@10 %.4f)", state["epoch"], state["best"])
    if state["done"]:
        return out

    if cfg.compile:
        objective = torch.compile(objective)
    if d.world > 1:
        # The loss's buffers are constants of the data (log popularity, users' item sets), the same
        # on every rank: broadcasting them every step would only cost bandwidth.
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    # cloze training predicts ~mask_prob of the positions per epoch, so BERT4Rec improves more slowly
    patience = cfg.patience or (40 if cfg.model == "bert4rec" else 8)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16 else nullcontext()
    )
    sampler = torch.utils.data.DistributedSampler(
        range(len(train_mat)), num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed
    )
    metrics_url = out.rstrip("/") + ".metrics.jsonl"
    if d.main:
        logger.info(
            "%s/%s on %s: %d training windows, %d items, %d params, %s × %d process(es) → %s",
            cfg.model, cfg.loss, data_url, len(train_mat), ds.n_items,
            sum(p.numel() for p in model.parameters()), device, d.world, out,
        )  # fmt: skip

    def evaluate_and_save(epoch_loss: float, seqs_per_s: float) -> bool:
        """Rank 0: validate, keep the best, publish; every rank: whether to stop."""
        nonlocal best_weights
        stop = False
        if d.main:
            m = evaluate_model(model, valid, [10, 20], policy=cfg.exclude_seen, device=device)
            record = {"epoch": state["epoch"], "step": state["step"], "loss": epoch_loss,
                      "seqs_per_s": seqs_per_s, **{f"valid_{k}": v for k, v in m.items()}}  # fmt: skip
            if m["NDCG@10"] > state["best"]:
                state.update(best=m["NDCG@10"], best_epoch=state["epoch"], best_record=record, bad=0)
                best_weights = copy.deepcopy(model.state_dict())
            else:
                state["bad"] += 1
            stop = state["bad"] >= patience or state["epoch"] >= cfg.epochs
            state["done"] = stop
            _append_jsonl(metrics_url, record, state["history"])
            logger.info(
                "epoch %d: loss %.4f, valid NDCG@10 %.4f HR@10 %.4f (best %.4f @ %d)",
                state["epoch"], epoch_loss, m["NDCG@10"], m["HR@10"], state["best"], state["best_epoch"],
            )  # fmt: skip
            best_model = build(cfg.model, ds.n_items, model_config_for(cfg))
            best_model.load_state_dict(best_weights)
            train_state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                           "best_model": best_weights, "state": state}  # fmt: skip
            status = "done" if stop else "training"
            checkpoint.save(
                out, best_model, metrics={"valid": state["best_record"], "status": status},
                train_state=train_state, **save,
            )  # fmt: skip
        return bool(_broadcast(stop, d))

    stopped = False
    epochs_this_run = 0
    while not stopped and state["epoch"] < cfg.epochs:
        epoch = state["epoch"]
        torch.manual_seed(cfg.seed * 100_003 + epoch * 101 + d.rank)
        gen = torch.Generator(device).manual_seed(cfg.seed * 100_003 + epoch * 101 + d.rank)
        sampler.set_epoch(epoch)
        order = np.fromiter(iter(sampler), dtype=np.int64)
        objective.train()
        total, n_batches = 0.0, 0
        bar = log.Progress(len(order), desc=f"epoch {epoch + 1}", unit="seqs", enabled=d.main)
        for lo in range(0, len(order), cfg.batch_size):
            rows = order[lo : lo + cfg.batch_size]
            batch = torch.from_numpy(train_mat[rows]).to(device)
            users = torch.from_numpy(train_users[rows]).to(device)
            with autocast:
                loss = objective(batch, gen, users)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, n_batches = total + loss.item(), n_batches + 1
            state["step"] += 1
            bar.update(len(batch), loss=total / n_batches)
            if cfg.eval_every_steps and state["step"] % cfg.eval_every_steps == 0:
                stopped = evaluate_and_save(total / n_batches, bar.rate() * d.world)
                objective.train()
                if stopped:
                    break
        elapsed = bar.close()
        state["epoch"] = epoch + 1
        epochs_this_run += 1
        if not cfg.eval_every_steps or state["epoch"] >= cfg.epochs:
            stopped = stopped or evaluate_and_save(total / max(n_batches, 1), len(order) * d.world / elapsed)
        if cfg.stop_after_epochs and epochs_this_run >= cfg.stop_after_epochs:
            break
    if d.main:
        logger.info("best valid NDCG@10 %.4f at epoch %d → %s", state["best"], state["best_epoch"], out)
    if d.world > 1:
        dist.barrier()
    return out
