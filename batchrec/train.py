"""The training stage: `run(TrainConfig) -> checkpoint URL`, in one process or under torchrun (DDP).

    batchrec train --model sasrec --data DATA --out CKPT
    torchrun --nproc_per_node=2 -m batchrec train --model sasrec --data DATA --out CKPT

Read top to bottom: `run` = `setup` (data, model, windows, loss, optimizer) → `resume` (when
asked) → `fit` (the epoch loop) → `validate_and_publish` after each epoch; `TrainState` is all
that changes while training. No model is named here: the model says how its windows are cut
(`window()`), what each window trains on (`train_batch`), its patience, and whether it is fit
without gradients (`fit`, the popularity baseline) — see `batchrec/models/base.py`.

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
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from batchrec import batching, distributed, log, storage, workspace
from batchrec.errors import UserError
from batchrec.models import LOSSES, check_model, model_class
from batchrec.ranking import DEFAULT_SEEN_POLICY, SplitData, check_seen_policy, evaluate_model

if TYPE_CHECKING:
    import torch

    from batchrec.dataset import PreparedDataset
    from batchrec.models.base import SeqRecModel

_log = log.get("train")


@dataclass
class TrainConfig:
    model: str = "sasrec"  # sasrec | bert4rec | gru4rec | pop
    data: str | None = None  # default: the workspace's latest prepared dataset
    out: str | None = None  # default: {workspace}/checkpoints/{model}/{stamp}
    loss: str = "ce"  # ce | bce | sampled | inbatch
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 128  # sequences per step (per process under DDP)
    max_len: int | None = None  # longest history the model reads; None: the model's default
    dim: int | None = None  # embedding size; None: the model's default (64)
    dropout: float | None = None  # None: the model's default
    lr: float = 2e-3  # AdamW learning rate
    weight_decay: float = 0.0  # AdamW weight decay
    seed: int = 0  # runs are deterministic given it
    n_negatives: int = 256  # `sampled` loss only
    exclude_seen: str = DEFAULT_SEEN_POLICY  # history | none: for validation, then evaluate/score
    model_config: dict[str, Any] = field(default_factory=dict)  # other model keys, e.g. n_layers, mask_prob
    patience: int | None = None  # evaluations without a better valid NDCG@10; None: the model's default
    eval_every_steps: int = 0  # 0: evaluate once per epoch
    eval_max_users: int = 20000  # validation users sampled per evaluation (full ranking each)
    compile: bool = False  # torch.compile the model
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    device: str = "auto"  # auto | cpu | cuda
    resume: bool = False  # continue an interrupted run from {out}/train_state.pt
    warm_start: str | None = None  # checkpoint whose item vectors seed this model, matched by external id
    stop_after_epochs: int | None = None  # stop this process after so many epochs (tests --resume)
    workspace: str | None = None  # workspace for default locations

    def validate(self) -> list[str]:
        errs = check_model(self.model) + check_seen_policy(self.exclude_seen)
        if self.loss not in LOSSES:
            errs.append(f"loss: {self.loss!r} is not one of {', '.join(LOSSES)}")
        for k in ("epochs", "batch_size", "patience", "n_negatives"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                errs.append(f"{k} must be ≥ 1")
        if self.lr < 0:
            errs.append("lr must be ≥ 0 (0 keeps the initial weights: a floor for the quality gate)")
        return errs


@dataclass
class TrainState:
    """Where training stands; saved with every checkpoint, so `--resume` continues from it."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    best: float = -1.0  # best valid NDCG@10 so far
    best_epoch: int = -1
    bad: int = 0  # evaluations since the best
    done: bool = False
    best_record: dict[str, Any] = field(default_factory=dict)  # the metrics line of the best evaluation
    history: list[dict[str, Any]] = field(default_factory=list)  # every metrics line


@dataclass
class Setup:
    """Everything `fit` needs, built once by `setup`."""

    cfg: TrainConfig
    group: distributed.Group
    out: str
    data_url: str
    ds: PreparedDataset
    device: torch.device
    model: SeqRecModel
    valid: SplitData | None  # rank 0 only
    patience: int
    save: dict[str, Any]  # what every checkpoint of this run records besides the weights
    windows: np.ndarray | None = None  # (W, width) training windows
    window_users: np.ndarray | None = None  # (W,) each window's user row
    objective: Any = None  # model + loss, compiled and/or wrapped in DDP as asked
    optimizer: Any = None
    best_weights: dict[str, Any] | None = None

    @property
    def metrics_url(self) -> str:
        return self.out.rstrip("/") + ".metrics.jsonl"


def run(cfg: TrainConfig) -> str:
    """Train `cfg.model` and publish its best checkpoint; returns the checkpoint URL."""
    log.set_stage("train")
    group = distributed.Group.start(cfg.device)
    try:
        s = setup(cfg, group)
        if not s.model.trained_by_gradient:
            return fit_without_gradients(s)
        state = resume(s) if cfg.resume else TrainState()
        if not state.done:
            fit(s, state)
        return s.out
    finally:
        group.stop()


def setup(cfg: TrainConfig, group: distributed.Group) -> Setup:
    """Data, model, validation split; for gradient-trained models the windows, loss and optimizer."""
    import torch

    from batchrec.dataset import PreparedDataset
    from batchrec.models import build
    from batchrec.models.losses import Loss, Objective

    ws = workspace.root(cfg.workspace)
    data_url = workspace.require_prepared(ws, cfg.data)
    out = group.broadcast(
        cfg.out or storage.join(workspace.checkpoints_root(ws, cfg.model), workspace.stamp())
    )
    ds = PreparedDataset.open(data_url)
    torch.manual_seed(cfg.seed)
    model = build(cfg.model, ds.n_items, model_config_for(cfg))
    s = Setup(
        cfg=cfg,
        group=group,
        out=out,
        data_url=data_url,
        ds=ds,
        device=group.device(cfg.device),
        model=model,
        valid=SplitData.from_dataset(ds, "valid", max_users=cfg.eval_max_users, seed=cfg.seed)
        if group.main
        else None,
        patience=cfg.patience or model.patience,
        save=dict(data=ds.reference(), train_config=asdict(cfg), item_ids=ds.item_map.external),
    )
    if not model.trained_by_gradient:
        return s

    width, overlap = model.window()
    _, offsets, items, train_len = ds.flat_sequences()
    s.windows, s.window_users = batching.windows(items, offsets[:-1], train_len, width, overlap)
    if len(s.windows) == 0:
        raise UserError("no user has a training history long enough", where=data_url)
    counts = torch.from_numpy(np.bincount(s.windows.ravel(), minlength=ds.n_items + 1)[: ds.n_items + 1])
    # bce draws each negative outside the user's own training items, as the SASRec code does
    own = (np.concatenate([[0], np.cumsum(train_len)]), ds.train_items()) if cfg.loss == "bce" else None
    loss = Loss(cfg.loss, ds.n_items, cfg.n_negatives, counts, user_items=own)
    if cfg.warm_start and not cfg.resume:
        carried = warm_start(model, cfg.warm_start, ds)
        _log.info("warm start from %s: %d of %d items carried over", cfg.warm_start, carried, ds.n_items)
    model.to(s.device)
    s.objective = Objective(model, loss, trim_padding=not cfg.compile).to(s.device)
    s.optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    s.best_weights = copy.deepcopy(model.state_dict())
    return s


def fit_without_gradients(s: Setup) -> str:
    """A model fit in one pass (popularity): fit, validate once, publish."""
    s.model.fit(s.ds.train_items())
    if s.group.main:
        metrics = evaluate_model(s.model, s.valid, [10, 20], policy=s.cfg.exclude_seen)
        _save(s, s.model, {"valid": metrics, "status": "done"})
        _log.info("%s: valid NDCG@10 %.4f → %s", s.model.name, metrics["NDCG@10"], s.out)
    s.group.barrier()
    return s.out


def resume(s: Setup) -> TrainState:
    """The state saved with `{out}`, its weights and optimizer loaded; a fresh state when none is."""
    from batchrec import checkpoint

    saved = checkpoint.load_train_state(s.out, map_location=s.device) if storage.is_published(s.out) else None
    if saved is None:
        _log.info("--resume: nothing to resume at %s, starting fresh", s.out)
        return TrainState()
    s.model.load_state_dict(saved["model"])
    s.optimizer.load_state_dict(saved["optimizer"])
    s.best_weights = saved["best_model"]
    state = TrainState(**saved["state"])
    _log.info("resuming at epoch %d (best valid NDCG@10 %.4f)", state.epoch, state.best)
    return state


def fit(s: Setup, state: TrainState) -> None:
    """The training loop: epochs of shuffled windows, validate-and-publish after each (or every
    `eval_every_steps` steps), until patience runs out or `epochs` is reached."""
    import torch
    from torch import nn

    cfg, group, device = s.cfg, s.group, s.device
    objective = torch.compile(s.objective) if cfg.compile else s.objective
    if group.world > 1:
        # The loss's buffers are constants of the data (log popularity, users' item sets), the same
        # on every rank: broadcasting them every step would only cost bandwidth.
        objective = nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
        )
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" and cfg.bf16 else nullcontext()
    )
    sampler = torch.utils.data.DistributedSampler(
        range(len(s.windows)), num_replicas=group.world, rank=group.rank, shuffle=True, seed=cfg.seed
    )
    if group.main:
        _log.info(
            "%s/%s on %s: %d training windows, %d items, %d params, %s × %d process(es) → %s",
            cfg.model, cfg.loss, s.data_url, len(s.windows), s.ds.n_items,
            sum(p.numel() for p in s.model.parameters()), device, group.world, s.out,
        )  # fmt: skip

    stopped, epochs_this_run = False, 0
    while not stopped and state.epoch < cfg.epochs:
        # reseeded from (seed, epoch, rank): a resumed run repeats what the uninterrupted one did
        seed = cfg.seed * 100_003 + state.epoch * 101 + group.rank
        torch.manual_seed(seed)
        gen = torch.Generator(device).manual_seed(seed)
        sampler.set_epoch(state.epoch)
        order = np.fromiter(iter(sampler), dtype=np.int64)
        objective.train()
        total, n_batches = 0.0, 0
        bar = log.Progress(len(order), desc=f"epoch {state.epoch + 1}", unit="seqs", enabled=group.main)
        for lo in range(0, len(order), cfg.batch_size):
            rows = order[lo : lo + cfg.batch_size]
            batch = torch.from_numpy(s.windows[rows]).to(device)
            users = torch.from_numpy(s.window_users[rows]).to(device)
            with autocast:
                loss = objective(batch, gen, users)
            s.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            s.optimizer.step()
            total, n_batches = total + loss.item(), n_batches + 1
            state.step += 1
            bar.update(len(batch), loss=total / n_batches)
            if cfg.eval_every_steps and state.step % cfg.eval_every_steps == 0:
                stopped = validate_and_publish(s, state, total / n_batches, bar.rate() * group.world)
                objective.train()
                if stopped:
                    break
        elapsed = bar.close()
        state.epoch += 1
        epochs_this_run += 1
        if not cfg.eval_every_steps or state.epoch >= cfg.epochs:
            rate = len(order) * group.world / elapsed
            stopped = stopped or validate_and_publish(s, state, total / max(n_batches, 1), rate)
        if cfg.stop_after_epochs and epochs_this_run >= cfg.stop_after_epochs:
            break
    if group.main:
        _log.info("best valid NDCG@10 %.4f at epoch %d → %s", state.best, state.best_epoch, s.out)
    group.barrier()


def validate_and_publish(s: Setup, state: TrainState, epoch_loss: float, seqs_per_s: float) -> bool:
    """Rank 0: validate, keep the best weights, publish `{out}`; every rank: whether to stop."""
    from batchrec.models import build

    stop = False
    if s.group.main:
        m = evaluate_model(s.model, s.valid, [10, 20], policy=s.cfg.exclude_seen, device=s.device)
        record = {"epoch": state.epoch, "step": state.step, "loss": epoch_loss, "seqs_per_s": seqs_per_s,
                  **{f"valid_{k}": v for k, v in m.items()}}  # fmt: skip
        if m["NDCG@10"] > state.best:
            state.best, state.best_epoch, state.best_record, state.bad = m["NDCG@10"], state.epoch, record, 0
            s.best_weights = copy.deepcopy(s.model.state_dict())
        else:
            state.bad += 1
        stop = state.done = state.bad >= s.patience or state.epoch >= s.cfg.epochs
        _append_jsonl(s.metrics_url, record, state.history)
        _log.info(
            "epoch %d: loss %.4f, valid NDCG@10 %.4f HR@10 %.4f (best %.4f @ %d)",
            state.epoch, epoch_loss, m["NDCG@10"], m["HR@10"], state.best, state.best_epoch,
        )  # fmt: skip
        best_model = build(s.cfg.model, s.ds.n_items, model_config_for(s.cfg))
        best_model.load_state_dict(s.best_weights)
        train_state = {"model": s.model.state_dict(), "optimizer": s.optimizer.state_dict(),
                       "best_model": s.best_weights, "state": asdict(state)}  # fmt: skip
        metrics = {"valid": state.best_record, "status": "done" if stop else "training"}
        _save(s, best_model, metrics, train_state=train_state)
    return bool(s.group.broadcast(stop))


def _save(s: Setup, model: SeqRecModel, metrics: dict[str, Any], **extra: Any) -> None:
    from batchrec import checkpoint

    checkpoint.save(s.out, model, metrics=metrics, **s.save, **extra)


def model_config_for(cfg: TrainConfig) -> dict[str, Any]:
    """The model's config keys: `model_config`, plus the top-level dim / max_len / dropout it has."""
    keys = {f for f in model_class(cfg.model).Config.__dataclass_fields__}
    out = dict(cfg.model_config)
    for k in ("dim", "max_len", "dropout"):
        v = getattr(cfg, k)
        if v is not None and k in keys:
            out[k] = v
    return out


def warm_start(model: SeqRecModel, url: str, ds: PreparedDataset) -> int:
    """Copy a checkpoint's weights into `model`; item rows matched by external id. Returns items carried."""
    import torch

    from batchrec import checkpoint

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
        if name in model.item_tables:
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
