"""The training stage: `run(TrainConfig) -> checkpoint URL`, in one process, under torchrun, or on
the workers of a Ray cluster (PyTorch DDP in the last two).

    batchrec train --model sasrec --data DATA --out CKPT
    torchrun --nproc_per_node=2 -m batchrec train --model sasrec --data DATA --out CKPT
    batchrec train --model sasrec --workers 4 --gpus-per-worker 1     # Ray Train, local or RAY_ADDRESS

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

On Ray (`--workers N`, `run_on_ray`): a Ray Train `TorchTrainer` runs `train_in` on N workers.
Each receives its share of the training users as a Ray Data stream (`get_dataset_shard`) and
cuts its own windows, so no process holds every user's windows; every worker runs the same
number of steps per epoch (a worker with fewer windows repeats some of its own, as
DistributedSampler pads). The driver samples the validation users and hands them to rank 0,
which validates on its own device and publishes. A worker lost mid-run restarts the group
(`max_failures`), and the restarted workers continue from the checkpoint rank 0 last
published — never from scratch; a new `batchrec train` without `--resume` starts fresh.
Under `--workers`, `bce` draws negatives outside the items of the worker's own users, as in
one process.
"""

from __future__ import annotations

import copy
import json
import math
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field, replace
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from batchrec import batching, distributed, log, storage, workspace
from batchrec.distributed import Device
from batchrec.errors import UserError
from batchrec.models import LossName, check_model, model_class
from batchrec.ranking import DEFAULT_SEEN_POLICY, SeenPolicy, SplitData, evaluate_model

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
    loss: LossName = "ce"  # full softmax, one negative per position, sampled softmax, in-batch + logQ
    epochs: int | None = None  # upper bound; early stopping usually ends sooner; None: the model's default
    batch_size: int = 128  # sequences per step (per process under DDP)
    max_len: int | None = None  # longest history the model reads; None: the model's default
    dim: int | None = None  # embedding size; None: the model's default (64)
    dropout: float | None = None  # None: the model's default
    lr: float | None = None  # AdamW learning rate (the peak one under `cosine`); None: the model's default
    # cosine: one epoch of linear warmup, then a half cosine down to 0 at `epochs`; None: the model's default
    lr_schedule: Literal["constant", "cosine"] | None = None
    weight_decay: float = 0.0  # AdamW weight decay
    seed: int = 0  # runs are deterministic given it
    n_negatives: int = 256  # `sampled` loss only
    exclude_seen: SeenPolicy = DEFAULT_SEEN_POLICY  # for validation, then evaluate/score
    model_config: dict[str, Any] = field(default_factory=dict)  # other model keys, e.g. n_layers, mask_prob
    patience: int | None = None  # evaluations without a better valid NDCG@10; None: the model's default
    eval_every_steps: int = 0  # 0: evaluate once per epoch
    eval_max_users: int = 20000  # validation users sampled per evaluation (full ranking each)
    compile: bool = False  # torch.compile the model
    bf16: bool = True  # bf16 autocast on CUDA (ignored on CPU)
    device: Device = "auto"  # auto: CUDA when visible
    resume: bool = False  # continue an interrupted run from {out}/train_state.pt
    warm_start: str | None = None  # checkpoint whose item vectors seed this model, matched by external id
    stop_after_epochs: int | None = None  # stop this process after so many epochs (tests --resume)
    workspace: str | None = None  # workspace for default locations
    workers: int = 0  # Ray Train DDP workers on a local Ray or RAY_ADDRESS; 0: this process (or torchrun's)
    gpus_per_worker: float | None = None  # with workers: default 1 when the cluster has GPUs, else 0
    # with workers: default 1, less when that would leave the cluster no CPU to read the data with
    cpus_per_worker: float | None = None
    ray_address: str | None = None  # Ray cluster to join; default: RAY_ADDRESS, else a local Ray
    max_failures: int = 3  # with workers: restarts after a lost worker, each from the last checkpoint
    # Test-only fault injection under workers: "kill-once:PATH" kills rank 1 once the first
    # checkpoint is published, while PATH does not exist (and creates it).
    fault: str | None = None

    def validate(self) -> list[str]:
        errs = check_model(self.model)
        if self.workers < 0 or self.max_failures < 0:
            errs.append("workers and max_failures must be ≥ 0")
        for k in ("gpus_per_worker", "cpus_per_worker"):
            if getattr(self, k) is not None and getattr(self, k) < 0:
                errs.append(f"{k} must be ≥ 0")
        for k in ("epochs", "batch_size", "patience", "n_negatives"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                errs.append(f"{k} must be ≥ 1")
        if self.lr is not None and self.lr < 0:
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
    attempt: str = ""  # under Ray: the `batchrec train` call that wrote it; its restarts resume it
    resumed_at: list[int] = field(default_factory=list)  # epochs at which training resumed
    seconds: float = 0.0  # wall seconds spent in `fit` up to the last evaluation, over every resume
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
    windows: np.ndarray | None = None  # (W, width) training windows (under Ray: this worker's)
    window_users: np.ndarray | None = None  # (W,) each window's user row
    rows_per_epoch: int | None = None  # under Ray: windows every worker trains per epoch
    objective: Any = None  # model + loss, compiled and/or wrapped in DDP as asked
    optimizer: Any = None
    best_weights: dict[str, Any] | None = None
    clock: float = 0.0  # perf_counter() at which `fit` would have started had it never been interrupted

    @property
    def metrics_url(self) -> str:
        return self.out.rstrip("/") + ".metrics.jsonl"


def run(cfg: TrainConfig) -> str:
    """Train `cfg.model` and publish its best checkpoint; returns the checkpoint URL."""
    log.set_stage("train")
    if cfg.workers and model_class(cfg.model).trained_by_gradient:
        return run_on_ray(cfg)
    group = distributed.Group.start(cfg.device)
    try:
        return train_in(cfg, group)
    finally:
        group.stop()


def train_in(cfg: TrainConfig, group: distributed.Group, shard=None, valid=None, attempt: str = "") -> str:
    """Train in this process, one rank of `group`; `shard` (a Ray Data iterator) holds this
    worker's users when not every process reads the whole dataset."""
    s = setup(cfg, group, shard, valid)
    if not s.model.trained_by_gradient:
        return fit_without_gradients(s)
    state = resume(s, attempt) if cfg.resume or attempt else TrainState()
    if not state.done:
        fit(s, state)
    return s.out


def setup(cfg: TrainConfig, group: distributed.Group, shard=None, valid: SplitData | None = None) -> Setup:
    """Data, model, validation split; for gradient-trained models the windows, loss and optimizer."""
    import torch

    from batchrec.dataset import PreparedDataset, flatten
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
    unset = {k: v for k, v in model.training_defaults(cfg.loss).items() if getattr(cfg, k) is None}
    cfg = replace(cfg, **unset)  # the checkpoint records the values the run used
    if valid is None and group.main:
        valid = SplitData.from_dataset(ds, "valid", max_users=cfg.eval_max_users, seed=cfg.seed)
    s = Setup(
        cfg=cfg,
        group=group,
        out=out,
        data_url=data_url,
        ds=ds,
        device=group.device(cfg.device),
        model=model,
        valid=valid,
        patience=cfg.patience or model.patience,
        save=dict(data=ds.reference(), train_config=asdict(cfg), item_ids=ds.item_map.external),
    )
    if not model.trained_by_gradient:
        return s

    width, overlap = model.window()
    if shard is None:
        _, offsets, items, train_len = ds.flat_sequences()
    else:
        import pyarrow as pa

        from batchrec import schema

        # a worker Ray Data gave no block to has no rows, not an Arrow error: the checks below say so
        mine = list(shard.iter_batches(batch_format="pyarrow"))
        table = pa.concat_tables(mine) if mine else schema.SEQUENCES_SCHEMA.empty_table()
        _, offsets, items, train_len = flatten(table)
    s.windows, s.window_users = batching.windows(items, offsets[:-1], train_len, width, overlap)
    counts = torch.from_numpy(np.bincount(s.windows.ravel(), minlength=ds.n_items + 1)[: ds.n_items + 1])
    if shard is not None:
        counts = group.sum(counts)  # popularity over every worker's windows, as in one process
        s.rows_per_epoch = group.max(len(s.windows))
        if s.rows_per_epoch and group.max(int(len(s.windows) == 0)):  # every rank stops, none waits
            raise UserError(
                "a training worker received no user with a training history",
                where=data_url,
                fix="use fewer workers than the dataset has users",
            )
    if len(s.windows) == 0:
        raise UserError("no user has a training history long enough", where=data_url)
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


def resume(s: Setup, attempt: str = "") -> TrainState:
    """The state saved with `{out}`, its weights and optimizer loaded; a fresh state when none is.

    Under Ray, `attempt` names this `batchrec train` call: a restart after a lost worker resumes
    what the same call saved, and a new call resumes only when `--resume` asks it to."""
    from batchrec import checkpoint

    saved = checkpoint.load_train_state(s.out, map_location=s.device) if storage.is_published(s.out) else None
    if saved is None or not (s.cfg.resume or saved["state"].get("attempt") == attempt):
        if s.cfg.resume:
            _log.info("--resume: nothing to resume at %s, starting fresh", s.out)
        return TrainState(attempt=attempt)
    s.model.load_state_dict(saved["model"])
    s.optimizer.load_state_dict(saved["optimizer"])
    s.best_weights = saved["best_model"]
    state = TrainState(**{**saved["state"], "attempt": attempt})
    state.resumed_at.append(state.epoch)
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

    s.clock = time.perf_counter() - state.seconds
    stopped, epochs_this_run = False, 0
    while not stopped and state.epoch < cfg.epochs:
        # reseeded from (seed, epoch, rank): a resumed run repeats what the uninterrupted one did
        seed = cfg.seed * 100_003 + state.epoch * 101 + group.rank
        torch.manual_seed(seed)
        gen = torch.Generator(device).manual_seed(seed)
        if s.rows_per_epoch is None:  # every process holds every window: the sampler splits them
            sampler.set_epoch(state.epoch)
            order = np.fromiter(iter(sampler), dtype=np.int64)
        else:  # this worker holds its users' windows only: its own shuffle, cycled to the common length
            order = np.resize(np.random.default_rng(seed).permutation(len(s.windows)), s.rows_per_epoch)
        objective.train()
        total, n_batches = 0.0, 0
        bar = log.Progress(len(order), desc=f"epoch {state.epoch + 1}", unit="seqs", enabled=group.main)
        steps_per_epoch = -(-len(order) // cfg.batch_size)
        for lo in range(0, len(order), cfg.batch_size):
            rows = order[lo : lo + cfg.batch_size]
            for g in s.optimizer.param_groups:
                g["lr"] = cfg.lr * lr_factor(cfg.lr_schedule, state.step, steps_per_epoch, cfg.epochs)
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


def lr_factor(schedule: str, step: int, steps_per_epoch: int, epochs: int) -> float:
    """The learning rate at optimizer step `step` (0-based), as a fraction of `lr`. A function of the
    step alone, so a resumed run follows the same curve."""
    if schedule == "constant":
        return 1.0
    warmup, total = steps_per_epoch, steps_per_epoch * epochs
    return min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))


def run_on_ray(cfg: TrainConfig) -> str:
    """Train on `cfg.workers` Ray Train workers (DDP) of the local Ray or RAY_ADDRESS cluster."""
    import os
    import tempfile
    import uuid

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from batchrec import cluster
    from batchrec.dataset import PreparedDataset

    ws = storage.absolute(workspace.root(cfg.workspace))
    data_url = storage.absolute(workspace.require_prepared(ws, cfg.data))
    out = storage.absolute(
        cfg.out or storage.join(workspace.checkpoints_root(ws, cfg.model), workspace.stamp())
    )
    # the workers run elsewhere (another node, another working directory): absolute URLs only
    cfg = replace(cfg, data=data_url, out=out, workspace=ws)
    ds = PreparedDataset.open(data_url)
    if cfg.workers > ds.n_users:
        raise UserError(
            f"{cfg.workers} training workers for {ds.n_users} users: a worker would have no data",
            where=data_url,
            fix="use at most as many workers as users",
        )
    valid = SplitData.from_dataset(ds, "valid", cfg.eval_max_users, cfg.seed)
    attempt = uuid.uuid4().hex
    with cluster.session(cfg.ray_address):
        total = ray.cluster_resources()
        gpus = cfg.gpus_per_worker if cfg.gpus_per_worker is not None else (1.0 if total.get("GPU") else 0.0)
        # Ray Data reads the users while the workers wait for them: leave it a CPU to do so
        cpus = cfg.cpus_per_worker or min(1.0, (total.get("CPU", 0.0) - 1) / cfg.workers)
        if cpus <= 0:
            raise UserError(
                f"{cfg.workers} training workers leave no CPU of the cluster's {total.get('CPU', 0):g} "
                "to read data with",
                fix="use fewer workers, or set cpus_per_worker",
            )
        ray.data.DataContext.get_current().enable_progress_bars = False
        fs, path = storage.arrow_fs(ds.part_urls("sequences"))
        users = ray.data.read_parquet(path, filesystem=fs).select_columns(["user_idx", "items", "train_len"])
        # blocks of a few thousand users, not one per file: workers take whole blocks
        per_block = max(1, min(8192, -(-ds.n_users // (8 * cfg.workers))))
        users = users.repartition(target_num_rows_per_block=per_block)
        trainer = TorchTrainer(
            _ray_worker,
            train_loop_config={"cfg": cfg, "valid": ray.put(valid), "attempt": attempt},
            scaling_config=ScalingConfig(
                num_workers=cfg.workers,
                use_gpu=gpus > 0,
                resources_per_worker={"CPU": cpus, **({"GPU": gpus} if gpus else {})},
            ),
            datasets={"train": users},
            dataset_config=_every_user(),
            run_config=RunConfig(
                name=f"batchrec-train-{attempt[:8]}",
                storage_path=os.path.join(tempfile.gettempdir(), "batchrec-ray-train"),
                failure_config=FailureConfig(max_failures=cfg.max_failures),
            ),
        )
        _log.info(
            "%s/%s on Ray Train: %d workers × (%g CPU, %g GPU) → %s",
            cfg.model, cfg.loss, cfg.workers, cpus, gpus, out,
        )  # fmt: skip
        with _following(out.rstrip("/") + ".metrics.jsonl"):
            try:
                trainer.fit()
            except ray.train.TrainingFailedError as e:
                raise _worker_cause(e) from e
    return out


def _ray_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: `train_in` on this worker's shard of the users."""
    import ray
    import ray.train
    import torch

    cfg: TrainConfig = config["cfg"]
    log.set_stage("train")
    group = distributed.Group.ray_worker()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker or 1)))
    if cfg.fault and group.rank == 1:
        _kill_once_published(cfg.fault, cfg.out)
    valid = ray.get(config["valid"]) if group.main else None
    train_in(cfg, group, ray.train.get_dataset_shard("train"), valid, config["attempt"])


def _every_user():
    """Ray Train's DataConfig, but splitting the users unevenly rather than dropping up to
    workers − 1 of them as its equal split does (`fit` evens out the steps per epoch)."""
    from ray.train import DataConfig

    class EveryUser(DataConfig):
        def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
            hints = worker_node_ids if self._enable_shard_locality else None
            out = [{} for _ in range(world_size)]
            for name, ds in datasets.items():
                ds = ds.copy(ds)
                ds.context.execution_options = self._resolve_execution_options(name)
                for i, split in enumerate(ds.streaming_split(world_size, equal=False, locality_hints=hints)):
                    out[i][name] = split
            return out

    return EveryUser()


def _worker_cause(e: Exception) -> Exception:
    """The error a worker raised, when it is the user's to fix; else the training failure."""
    for failure in getattr(e, "worker_failures", {}).values():
        if isinstance(failure, UserError):
            return UserError(failure.what, where=failure.where, fix=failure.fix)
    return e


def _kill_once_published(fault: str, out: str) -> None:
    """Test-only: exit this worker abruptly once `{out}` has a checkpoint, unless PATH exists."""
    import os
    import threading
    import time

    kind, _, path = fault.partition(":")
    if kind != "kill-once" or os.path.exists(path):
        return

    def watch() -> None:
        while not storage.is_published(out):
            time.sleep(0.2)
        open(path, "w").close()
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


@contextmanager
def _following(metrics_url: str, every_s: float = 2.0):
    """Log each epoch's line as rank 0 appends it to `{out}.metrics.jsonl`: the workers' own logs
    stay on their nodes, the driver's log tells the run's progress."""
    import threading

    stop, seen = threading.Event(), [0]

    def show() -> None:
        lines = storage.read_bytes(metrics_url).decode().splitlines() if storage.exists(metrics_url) else []
        for line in lines[seen[0] :]:
            r = json.loads(line)
            _log.info(
                "epoch %d: loss %.4f, valid NDCG@10 %.4f HR@10 %.4f, %.0f seqs/s",
                r["epoch"], r["loss"], r["valid_NDCG@10"], r["valid_HR@10"], r["seqs_per_s"],
            )  # fmt: skip
        seen[0] = max(seen[0], len(lines))

    def loop() -> None:
        while not stop.wait(every_s):
            show()

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        show()


def validate_and_publish(s: Setup, state: TrainState, epoch_loss: float, seqs_per_s: float) -> bool:
    """Rank 0: validate, keep the best weights, publish `{out}`; every rank: whether to stop."""
    from batchrec.models import build

    stop = False
    if s.group.main:
        m = evaluate_model(s.model, s.valid, [10, 20], policy=s.cfg.exclude_seen, device=s.device)
        state.seconds = time.perf_counter() - s.clock
        record = {"epoch": state.epoch, "step": state.step, "loss": epoch_loss, "seqs_per_s": seqs_per_s,
                  "seconds": round(state.seconds, 3),
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
