"""MovieLens-100K → prepared dataset, the protocol of the issue-3 quality bars.

Exactly `batchrec data prepare u.data --split loo --min-user-count 0 --min-item-count 0`:
leave-one-out, no k-core (943 users, 1,682 items), each user's events in time order with ties
kept in file order. Shared by bench/bench_train.py and the data-marked tests.
"""

from __future__ import annotations

from pathlib import Path


def prepare_ml100k(u_data: Path | str, out: str) -> str:
    from batchrec.data.prepare import PrepareConfig, run

    cfg = PrepareConfig(
        input=str(u_data), out=out, split="loo", min_user_count=0, min_item_count=0, force=True
    )
    return run(cfg)
