"""Interaction-log readers: every supported format becomes one polars frame with standard columns.

The frame has `user_id`, `item_id`, `timestamp` (Int64) and, when the source has one, `rating`
(Float64), in input row order. Formats without timestamps (SASRec text, playlists) use the row
number as the timestamp: file order is time there. External ids keep the type the source gives
them (RecBole's typed header decides: `:token` columns stay strings).

`detect()` picks a format from the name and the first bytes; `read()` reads a URL in a format.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from batchrec import storage
from batchrec.errors import UserError
from batchrec.schema import ITEM_COL, RATING_COL, TIME_COL, USER_COL

FORMATS = (
    "parquet",
    "csv",
    "tsv",
    "movielens-100k",
    "movielens-dat",
    "recbole",
    "playlist",
    "sasrec-txt",
)
# File names inside an extracted MovieLens archive, in the order they are looked for.
MOVIELENS_FILES = (("u.data", "movielens-100k"), ("ratings.dat", "movielens-dat"), ("ratings.csv", "csv"))

# Header names tried, in order, when a column name is not given explicitly.
CANDIDATES = {
    "user": ("user_id", "userId", "userid", "UserID", "user", "uid", "session_id"),
    "item": ("item_id", "movieId", "itemId", "itemid", "MovieID", "item", "iid", "product_id", "track_id"),
    "time": ("timestamp", "Timestamp", "ts", "time", "datetime", "event_time", "date"),
    "rating": ("rating", "Rating", "score", "weight"),
    "artist": ("artist_name", "artistname", "artist"),
    "track": ("track_name", "trackname", "track", "song"),
}
PLAYLIST_ITEM_SEP = " - "
_SAMPLE_BYTES = 65536  # what detection reads of a file


@dataclass
class Columns:
    """Source column names; None = find one of `CANDIDATES`. `item` may list several, comma-separated."""

    user: str | None = None
    item: str | None = None
    time: str | None = None
    rating: str | None = None


@dataclass
class Interactions:
    frame: pl.DataFrame
    format: str
    has_time: bool  # False: `timestamp` is the row number


def _head(url: str) -> bytes:
    with storage.open_url(url, "rb") as f:
        return f.read(_SAMPLE_BYTES)


def _check_exists(url: str) -> None:
    try:
        found = storage.exists(url)
    except (OSError, PermissionError) as e:
        raise UserError(f"cannot read the input: {e}", where=url, fix="check the URL and credentials") from e
    if not found:
        raise UserError("input not found", where=url, fix="check the path or URL")


def resolve(url: str) -> str:
    """A MovieLens folder (as `data download` leaves it) stands for its ratings file."""
    if storage.isdir(url):
        names = storage.ls(url)
        for fname, _ in MOVIELENS_FILES:
            if fname in names:
                return storage.join(url, fname)
    return url


def detect(url: str) -> str:
    """The format of `url` from its name and first bytes; UserError when it cannot tell."""
    _check_exists(url)
    if storage.isdir(url):
        return "parquet"
    name = storage.basename(url)
    ext = os.path.splitext(name)[1].lower()
    for fname, fmt in MOVIELENS_FILES:
        if name == fname:
            return fmt
    if ext in (".parquet", ".pq"):
        return "parquet"
    if ext == ".inter":
        return "recbole"
    try:
        head = _head(url)
    except OSError as e:
        raise UserError(f"cannot read the input: {e}", where=url, fix="check the URL and permissions") from e
    if head.startswith(b"PAR1"):
        return "parquet"
    if not head.strip():
        raise _undetectable(url, "the file is empty")
    if len(head) == _SAMPLE_BYTES and b"\n" in head:
        head = head[: head.rindex(b"\n")]  # the sample may end mid-line (or mid-character)
    text = head.decode("utf-8", errors="replace")
    if "\x00" in text or "\ufffd" in text:
        raise _undetectable(url, "it is not UTF-8 text")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    first = lines[0]
    if "::" in first:
        return "movielens-dat"
    if "\t" in first and all(re.fullmatch(r"\S+:[a-z_]+", f) for f in first.split("\t")):
        return "recbole"
    if all(re.fullmatch(r"-?\d+ -?\d+", ln) for ln in lines[:20]):
        return "sasrec-txt"
    sep = "\t" if first.count("\t") >= first.count(",") and "\t" in first else ","
    fields = first.split(sep)
    if len(fields) < 2:
        raise _undetectable(url)
    numeric = all(re.fullmatch(r"-?[\d.]+", f.strip()) for f in fields)
    if sep == "\t" and numeric and len(fields) == 4:
        return "movielens-100k"
    if numeric:
        raise _undetectable(url, "it has no header naming the columns")
    header = {_clean(f) for f in fields}
    if not header & set(CANDIDATES["time"]) and _find(header, "artist") and _find(header, "track"):
        return "playlist"
    return "tsv" if sep == "\t" else "csv"


def _undetectable(url: str, why: str = "") -> UserError:
    return UserError(
        "cannot detect the input format" + (f": {why}" if why else ""),
        where=url,
        fix=f"pass --format with one of: {', '.join(FORMATS)}",
    )


def _clean(name: str) -> str:
    # Some published CSVs (the Spotify playlist dump) quote and space-pad their header names.
    return name.strip().strip('"').strip()


def _find(names: set[str] | list[str], role: str) -> str | None:
    return next((c for c in CANDIDATES[role] if c in names), None)


def _read_csv(path: str, url: str, **kwargs) -> pl.DataFrame:
    kwargs.setdefault("infer_schema_length", 100_000)
    kwargs.setdefault("glob", False)  # a path is a path, even with [ or * in its name
    try:
        return pl.read_csv(path, **kwargs)
    except (pl.exceptions.ComputeError, pl.exceptions.NoDataError, OSError) as e:
        raise UserError(
            f"cannot parse the input as {kwargs.get('separator', ',')!r}-separated text: {str(e).splitlines()[0]}",
            where=url,
            fix="check the file, or pass the right --format",
        ) from e


def _read_raw(url: str, fmt: str) -> pl.DataFrame:
    """The source table with its own column names (fixed-layout formats get standard names)."""
    if fmt == "parquet":
        try:
            table = storage.read_parquet(url)
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(
                f"cannot read Parquet: {e}", where=url, fix="check the file or pass --format"
            ) from e
        return pl.from_arrow(table)
    with storage.local_path(url) as path:
        if fmt == "movielens-100k":
            return _read_csv(
                path,
                url,
                separator="\t",
                has_header=False,
                new_columns=[USER_COL, ITEM_COL, RATING_COL, TIME_COL],
            )
        if fmt == "movielens-dat":
            # `a::b::c::d` read with ':' as the separator leaves empty columns between the fields.
            df = _read_csv(path, url, separator=":", has_header=False, columns=[0, 2, 4, 6])
            return df.rename(dict(zip(df.columns, [USER_COL, ITEM_COL, RATING_COL, TIME_COL], strict=True)))
        if fmt == "sasrec-txt":
            return _read_csv(path, url, separator=" ", has_header=False, new_columns=[USER_COL, ITEM_COL])
        if fmt == "recbole":
            with open(path, encoding="utf-8") as f:
                typed = f.readline().rstrip("\r\n").split("\t")
            names = [t.split(":", 1)[0] for t in typed]
            types = {
                n: pl.Float64 if t.endswith(":float") else pl.String
                for n, t in zip(names, typed, strict=True)
            }
            return _read_csv(
                path,
                url,
                separator="\t",
                has_header=True,
                new_columns=names,
                schema_overrides=types,
                quote_char=None,
            )
        sep = "\t" if fmt == "tsv" else ","
        df = _read_csv(path, url, separator=sep, has_header=True)
        return df.rename({c: _clean(c) for c in df.columns if _clean(c) != c})


def _pick(df: pl.DataFrame, role: str, given: str | None, url: str, required: bool = True) -> str | None:
    if given:
        if given not in df.columns:
            raise UserError(
                f"column {given!r} (--{role}-col) not found; found columns: {', '.join(df.columns)}",
                where=url,
                fix=f"pass --{role}-col with one of the found columns",
            )
        return given
    found = _find(df.columns, role)
    if found is None and required:
        raise UserError(
            f"no {role} column: expected one of {', '.join(CANDIDATES[role])}; "
            f"found columns: {', '.join(df.columns)}",
            where=url,
            fix=f"name the column with --{role}-col",
        )
    return found


def _item_expr(df: pl.DataFrame, names: list[str]) -> pl.Expr:
    if len(names) == 1:
        return pl.col(names[0])
    # A composite item (artist, track) becomes one readable string id; a null part stays null.
    return pl.concat_str([pl.col(n).cast(pl.String) for n in names], separator=PLAYLIST_ITEM_SEP)


def _timestamps(col: pl.Series, url: str) -> pl.Series:
    """Seconds since the epoch as Int64, from integers, floats, dates or date strings."""
    dtype = col.dtype
    if dtype.is_integer():
        out = col.cast(pl.Int64)
    elif dtype.is_float():
        out = col.floor().cast(pl.Int64, strict=False)
    elif isinstance(dtype, pl.Datetime):
        out = col.dt.epoch("s")
    elif dtype == pl.Date:
        out = col.cast(pl.Datetime("us")).dt.epoch("s")
    elif dtype == pl.String:
        as_num = col.str.strip_chars().cast(pl.Float64, strict=False)
        if as_num.null_count() == col.null_count():
            out = as_num.floor().cast(pl.Int64)
        else:
            try:
                out = col.str.strip_chars().str.to_datetime(strict=False, time_unit="us").dt.epoch("s")
            except pl.exceptions.ComputeError:  # no date format fits: the numbers are all there is
                out = as_num.floor().cast(pl.Int64)
    else:
        out = pl.Series(col.name, [None] * len(col), dtype=pl.Int64)
    bad = out.is_null() & ~col.is_null()
    if bad.any():
        row = int(bad.arg_true()[0])
        raise UserError(
            f"{int(bad.sum())} unparsable timestamp(s) in column {col.name!r}, e.g. {col[row]!r} (row {row})",
            where=url,
            fix="use Unix seconds or ISO-8601 date-times, or name another column with --time-col",
        )
    if col.null_count():
        row = int(col.is_null().arg_true()[0])
        raise UserError(
            f"{col.null_count()} missing timestamp(s) in column {col.name!r} (first at row {row})",
            where=url,
            fix="drop those rows or fill them in",
        )
    return out


def has_time(fmt: str, columns: Columns) -> bool:
    """Whether events of this format carry timestamps (else `timestamp` is the row number)."""
    return columns.time is not None or fmt not in ("playlist", "sasrec-txt")


def _resolve_format(url: str, fmt: str) -> tuple[str, str]:
    _check_exists(url)
    url = resolve(url)
    if fmt == "auto":
        fmt = detect(url)
    elif fmt not in FORMATS:
        raise UserError(f"unknown format {fmt!r}", fix=f"use auto or one of: {', '.join(FORMATS)}")
    return url, fmt


def read(url: str, fmt: str = "auto", columns: Columns | None = None) -> Interactions:
    """Read interactions at `url` (file, directory or MovieLens folder) into standard columns."""
    url, fmt = _resolve_format(url, fmt)
    raw = _read_raw(url, fmt)
    if raw.height == 0:
        raise UserError("the input holds no interactions", where=url, fix="check the file")
    return _standard(raw, fmt, columns or Columns(), url, first_row=0)


@dataclass(frozen=True)
class Piece:
    """What one worker reads of the input: a file, or some row groups of a Parquet file."""

    url: str
    first_row: int  # the number of its first row in the whole input (files in order, then rows)
    rows: int
    row_groups: tuple[int, ...] | None = None  # Parquet: only these; None: the whole file


def pieces(url: str, fmt: str = "auto", max_rows: int = 4_000_000) -> tuple[str, list[Piece]]:
    """(format, pieces) of the input, in input order: each Parquet file cut into runs of row
    groups of about `max_rows` rows, any other file whole (text cannot be split by row safely).
    A directory's files come in the order `read` reads them."""
    import pyarrow.dataset as pds
    import pyarrow.parquet as pq

    url, fmt = _resolve_format(url, fmt)
    if fmt != "parquet":
        return fmt, [Piece(url, 0, -1)]
    fs, path = storage.url_to_fs(url)
    files = pds.dataset(path, filesystem=fs, format="parquet").files
    out, first = [], 0
    for file in files:
        file_url = f"{url.split('://')[0]}://{file}" if "://" in url else file
        try:
            with fs.open(file, "rb") as f:
                meta = pq.ParquetFile(f).metadata
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"cannot read Parquet: {e}", where=file_url, fix="check the file") from e
        group, rows = [], 0
        for g in range(meta.num_row_groups):
            group.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= max_rows or g == meta.num_row_groups - 1:
                out.append(Piece(file_url, first, rows, tuple(group)))
                first, group, rows = first + rows, [], 0
    return fmt, out


def read_piece(piece: Piece, fmt: str, columns: Columns) -> Interactions:
    """One piece of the input, in standard columns (`read` of the whole input, cut)."""
    import pyarrow.parquet as pq

    if fmt == "parquet":
        try:
            with storage.open_url(piece.url) as f:
                table = pq.ParquetFile(f).read_row_groups(list(piece.row_groups or ()))
        except (pa.ArrowInvalid, OSError) as e:
            raise UserError(f"cannot read Parquet: {e}", where=piece.url, fix="check the file") from e
        raw = pl.from_arrow(table)
    else:
        raw = _read_raw(piece.url, fmt)
    return _standard(raw, fmt, columns, piece.url, first_row=piece.first_row)


def _standard(raw: pl.DataFrame, fmt: str, columns: Columns, url: str, first_row: int) -> Interactions:
    user = _pick(raw, "user", columns.user, url)
    if columns.item:
        item_names = [c.strip() for c in columns.item.split(",") if c.strip()]
        for n in item_names:
            _pick(raw, "item", n, url)
    elif fmt == "playlist":
        item_names = [_pick(raw, "artist", None, url), _pick(raw, "track", None, url)]
    else:
        item_names = [_pick(raw, "item", None, url)]
    timed = has_time(fmt, columns)
    time = _pick(raw, "time", columns.time, url) if timed else None
    rating = _pick(raw, "rating", columns.rating, url, required=False)

    frame = raw.select(pl.col(user).alias(USER_COL), _item_expr(raw, item_names).alias(ITEM_COL))
    for col, label in ((USER_COL, user), (ITEM_COL, " + ".join(item_names))):
        nulls = frame[col].null_count()
        if nulls:
            row = int(frame[col].is_null().arg_true()[0])
            raise UserError(
                f"{nulls} null id(s) in column {label!r} (first at row {first_row + row})",
                where=url,
                fix="drop or fill those rows before preparing",
            )
    if time:
        ts = _timestamps(raw[time], url)
    else:
        ts = pl.int_range(first_row, first_row + raw.height, dtype=pl.Int64, eager=True)
    frame = frame.with_columns(ts.alias(TIME_COL))
    if rating:
        frame = frame.with_columns(raw[rating].cast(pl.Float64, strict=False).alias(RATING_COL))
    return Interactions(frame=frame, format=fmt, has_time=timed)
