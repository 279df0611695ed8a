"""Artifact layouts and Arrow schemas: the contract between stages and with downstream readers.

Stages never import each other; they meet only through the artifacts described here.

Internal ids
------------
Items get dense internal ids 1..N in first-appearance order; 0 is padding and never
recommended. Any tensor of item vectors is indexed by internal id and has N + 1 rows (row 0 =
padding). Users get dense internal ids 0..U-1. External ids (int or string, original type)
live only in the id maps and in exported tables.

Prepared dataset (output of `batchrec data prepare`), under DATA/:
    metadata.json     format version, source, parameters, statistics, fingerprint, and `parts`:
                      the files of each per-user table below, in user order
    item_map.parquet  item_idx int32 (1..N), item_id <original type>
    user_map/part-NNNNN.parquet   user_idx int32, user_id <original type>
    sequences/part-NNNNN.parquet  user_idx int32, items list<int32>, timestamps list<int64>,
                      train_len int32 — each user's FULL time-ordered history (what nightly
                      scoring uses); items[:train_len] is the part training may see.
    targets/part-NNNNN.parquet    user_idx int32, split string ('valid'|'test'), position int32,
                      item_idx int32 — an evaluation target is items[position] with history
                      items[:position]; the items seen before it are items[:position] too.
    _SUCCESS
Part i of user_map, sequences and targets covers the same users, a consecutive range of user_idx
(so a reader takes any subset of parts and has everything about those users); a part holds at
most PART_EVENTS events with the local engine, one hash partition of users with the Ray engine.
Format version 1 (before sharding) had one file per table (user_map.parquet, sequences.parquet,
targets.parquet) and no `parts`; it still opens.

Checkpoint (output of `batchrec train`), under CKPT/:
    checkpoint.json   model name, model config, data reference (URL, fingerprint, item-map
                      fingerprint, n_items), metrics, training config, batchrec version
    model.pt          state_dict, loaded with torch.load(weights_only=True)
    train_state.pt    optimizer/scheduler/epoch state for --resume (optional)
    _SUCCESS

Scoring output (`batchrec score`), under OUT/ = {workspace}/outputs/{model}/ by default: three
tables partitioned by date, laid out the way Hive, Spark, Athena/BigQuery external tables, DuckDB
and pyarrow discover partitions (each table's directory is one table with a `dt` column), and
one record per date:
    topk/dt=DATE/part-*.parquet             user_id, item_ids list<item type>, scores list<float32>
                                            (rank order), source string — or, exploded: user_id,
                                            rank int32, item_id, score float32, source string.
                                            source: "model", or "fallback" for a user whose
                                            history has no item the model knows: the date's most
                                            popular items, score null (no model score exists)
    user_embeddings/dt=DATE/part-*.parquet  user_id, embedding fixed_size_list<float32>[d]
    item_embeddings/dt=DATE/part-*.parquet  item_id, embedding fixed_size_list<float32>[d]
    index/dt=DATE/                          optional FAISS index of that date's item embeddings
    _runs/dt=DATE/manifest.json             the run: see MANIFEST_KEYS
    _runs/dt=DATE/_SUCCESS                  written last: the date is complete
A date is complete, every table's partition from one run, only once `_runs/dt=DATE/_SUCCESS`
exists: a run of the date removes it before it replaces any partition and writes it after the
last (each partition also gets its own `_SUCCESS`). Readers skip `_`-prefixed names, so neither
the run records nor a staging directory ever shows up in a table. The run's URL (what `score`
prints, `index build --run` takes) is OUT/_runs/dt=DATE.
Schema version 2; version 1 put the date above the tables (OUT/dt=DATE/{table}/), which no
warehouse can mount as one partitioned table.

FAISS index (output of `batchrec index build`), under INDEX/:
    index.faiss       faiss.write_index output (CPU index)
    ids.parquet       row int64, item_id <original type>
    metadata.json     factory, metric, d, n, build time, batchrec version
    _SUCCESS
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa


def created_at() -> str:
    """The `created_at` every artifact's metadata carries (and "newest" compares): UTC, ISO seconds."""
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def check_date(key: str, value: str | None) -> list[str]:
    """Config validation errors for a run date (the `dt=` of a run's directory)."""
    if value is None:
        return []
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return [f"{key}: {value!r} is not a date YYYY-MM-DD"]
    return []


SCHEMA_VERSION = 2  # 2: {table}/dt=DATE/ partitions (1: dt=DATE/{table}/)
PREPARED_FORMAT_VERSION = 2  # 2: per-user tables in parts listed by metadata.json
PREPARED_FORMAT_VERSIONS = (1, 2)  # what this version reads

# Prepared dataset
METADATA = "metadata.json"
ITEM_MAP = "item_map.parquet"
PART_TABLES = ("user_map", "sequences", "targets")  # per-user tables, written in aligned parts
SINGLE_FILES = {
    "user_map": "user_map.parquet",
    "sequences": "sequences.parquet",
    "targets": "targets.parquet",
}
PART_EVENTS = 4_000_000  # the local engine's bound on one part's events (~20-40 MB of Parquet)
PAD = 0
SPLITS = ("valid", "test")

# Raw interaction columns after ingest (internal, before id mapping)
USER_COL, ITEM_COL, TIME_COL, RATING_COL = "user_id", "item_id", "timestamp", "rating"

SEQUENCES_SCHEMA = pa.schema(
    [
        ("user_idx", pa.int32()),
        ("items", pa.list_(pa.int32())),
        ("timestamps", pa.list_(pa.int64())),
        ("train_len", pa.int32()),
    ]
)
TARGETS_SCHEMA = pa.schema(
    [
        ("user_idx", pa.int32()),
        ("split", pa.string()),
        ("position", pa.int32()),
        ("item_idx", pa.int32()),
    ]
)

# Checkpoint
CHECKPOINT_META = "checkpoint.json"
CHECKPOINT_WEIGHTS = "model.pt"
CHECKPOINT_TRAIN_STATE = "train_state.pt"

# Scoring run
USER_EMBEDDINGS = "user_embeddings"
ITEM_EMBEDDINGS = "item_embeddings"
TOPK = "topk"
TABLES = (USER_EMBEDDINGS, ITEM_EMBEDDINGS, TOPK)
MANIFEST = "manifest.json"
RUNS_DIR = "_runs"
INDEX_DIR = "index"
INDEX_METRICS = ("ip", "l2")  # inner product, Euclidean: the `metric` of an index's metadata.json
MANIFEST_KEYS = (
    "schema_version",
    "batchrec_version",
    "run_id",
    "model",
    "checkpoint",
    "checkpoint_fingerprint",
    "data",
    "data_fingerprint",
    "date",
    "k",
    "d",
    "topk_layout",
    "retrieval",
    "exclude_seen",
    "tables",
    "vocabulary",
    "rows",
    "timings_s",
)

# FAISS index
INDEX_FILE = "index.faiss"
INDEX_IDS = "ids.parquet"


def embedding_type(d: int) -> pa.DataType:
    return pa.list_(pa.float32(), d)


def user_embeddings_schema(user_id_type: pa.DataType, d: int) -> pa.Schema:
    return pa.schema([("user_id", user_id_type), ("embedding", embedding_type(d))])


def item_embeddings_schema(item_id_type: pa.DataType, d: int) -> pa.Schema:
    return pa.schema([("item_id", item_id_type), ("embedding", embedding_type(d))])


def topk_schema(user_id_type: pa.DataType, item_id_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [
            ("user_id", user_id_type),
            ("item_ids", pa.list_(item_id_type)),
            ("scores", pa.list_(pa.float32())),
            ("source", pa.string()),
        ]
    )


def topk_exploded_schema(user_id_type: pa.DataType, item_id_type: pa.DataType) -> pa.Schema:
    return pa.schema(
        [
            ("user_id", user_id_type),
            ("rank", pa.int32()),
            ("item_id", item_id_type),
            ("score", pa.float32()),
            ("source", pa.string()),
        ]
    )
