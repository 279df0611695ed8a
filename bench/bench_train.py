"""Issue-3 quality and speed on MovieLens-100K: train each model with its defaults, evaluate on TEST.

    python bench/bench_train.py --runs sasrec:ce:0 bert4rec:ce:0 --out /tmp/bench-train

Protocol (bench/ml100k.py): LOO, ties in time kept in file order, no k-core, full ranking,
the checkpoint's seen-item policy (default `history`), ties counted against the model, model
selected on VALID NDCG@10 (early stopping), reported on TEST.
Each finished run appends one JSON line to {out}/results.jsonl (so a long sweep can be polled),
and the script ends with a table: mean over seeds per model/loss, with the popularity baseline.
`to_best_s` is the wall time from the start of `train` (setup included) until the kept checkpoint
was published, i.e. what a run with perfect early stopping would have taken.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", nargs="+", default=["sasrec:ce:0"], help="model:loss:seed, e.g. sasrec:ce:0")
    p.add_argument("--out", default="/tmp/bench-train")
    p.add_argument("--u-data", default=str(SHARED / "ml-100k" / "u.data"))
    p.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides key=value for every run")
    args = p.parse_args()

    from ml100k import prepare_ml100k

    from batchrec import config
    from batchrec.evaluate import EvaluateConfig
    from batchrec.evaluate import run as evaluate
    from batchrec.train import TrainConfig
    from batchrec.train import run as train

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = prepare_ml100k(args.u_data, str(out / "ml100k"))
    results = out / "results.jsonl"
    for spec in args.runs:
        model, loss, seed = spec.split(":")
        ckpt = str(out / f"{model}-{loss}-{seed}")
        values = config.merge({"model": model, "loss": loss, "seed": int(seed), "data": data, "out": ckpt},
                              config.parse_overrides(args.set))  # fmt: skip
        t0 = time.perf_counter()
        train(config.from_dict(TrainConfig, values))
        train_s = time.perf_counter() - t0
        report = evaluate(EvaluateConfig(checkpoint=ckpt, data=data, split="test"))
        history = [json.loads(line) for line in Path(ckpt + ".metrics.jsonl").read_text().splitlines()]
        best = max(history, key=lambda r: r["valid_NDCG@10"])
        # the kept checkpoint was published once its evaluation ended: setup + fit up to there
        to_best_s = train_s - (history[-1]["seconds"] - best["seconds"])
        row = {"model": model, "loss": loss, "seed": int(seed), "train_s": round(train_s, 1),
               "to_best_s": round(to_best_s, 1), "epochs": len(history), "best_epoch": best["epoch"],
               "seqs_per_s": round(sum(r["seqs_per_s"] for r in history) / len(history), 1),
               "test": report["metrics"], "pop": report["baseline"]["metrics"]}  # fmt: skip
        with results.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
    summarize(results)


def summarize(results: Path) -> None:
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["model"], r["loss"])].append(r)
    pop = rows[0]["pop"]
    print(
        f"{'model':<18}{'seeds':>6}{'NDCG@10':>10}{'HR@10':>9}{'MRR':>8}{'×pop':>7}{'train s':>9}{'to best s':>11}"
        f"{'epochs':>8}"
    )
    print(f"{'pop':<18}{'':>6}{pop['NDCG@10']:>10.4f}{pop['HR@10']:>9.4f}{pop['MRR']:>8.4f}{1:>7.2f}")
    for (model, loss), rs in groups.items():
        mean = {k: sum(r["test"][k] for r in rs) / len(rs) for k in ("NDCG@10", "HR@10", "MRR")}
        t = sum(r["train_s"] for r in rs) / len(rs)
        to_best = sum(r["to_best_s"] for r in rs) / len(rs)
        ep = sum(r["epochs"] for r in rs) / len(rs)
        print(f"{model + '/' + loss:<18}{len(rs):>6}{mean['NDCG@10']:>10.4f}{mean['HR@10']:>9.4f}"
              f"{mean['MRR']:>8.4f}{mean['NDCG@10'] / pop['NDCG@10']:>7.2f}{t:>9.0f}{to_best:>11.1f}{ep:>8.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
