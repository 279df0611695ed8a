"""Each reader on a tiny literal file, and `--format auto` detection."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchrec.data import formats
from batchrec.errors import UserError


def _write(path, text: str):
    path.write_text(text)
    return str(path)


def _rows(url: str, fmt: str = "auto", **cols) -> tuple[str, list[tuple]]:
    data = formats.read(url, fmt, formats.Columns(**cols))
    return data.format, data.frame.select("user_id", "item_id", "timestamp").rows()


def test_movielens_100k_u_data(tmp_path):
    url = _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n")
    data = formats.read(url)
    assert data.format == "movielens-100k" and data.has_time
    assert data.frame.rows() == [(196, 242, 881250949, 3.0), (186, 302, 891717742, 3.0)]


def test_movielens_100k_detected_by_content(tmp_path):
    url = _write(tmp_path / "interactions", "1\t10\t4\t100\n2\t11\t5\t101\n")
    assert formats.detect(url) == "movielens-100k"


def test_movielens_dat(tmp_path):
    url = _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    assert _rows(url) == ("movielens-dat", [(1, 1193, 978300760), (1, 661, 978302109)])
    other = _write(tmp_path / "r.txt", "1::1193::5::978300760\n")
    assert formats.detect(other) == "movielens-dat"


def test_movielens_ratings_csv(tmp_path):
    url = _write(
        tmp_path / "ratings.csv",
        "userId,movieId,rating,timestamp\n1,296,5.0,1147880044\n1,306,3.5,1147868817\n",
    )
    fmt, rows = _rows(url)
    assert fmt == "csv" and rows == [(1, 296, 1147880044), (1, 306, 1147868817)]


def test_movielens_folder_resolves_to_ratings_file(tmp_path):
    (tmp_path / "ml-100k").mkdir()
    _write(tmp_path / "ml-100k" / "u.data", "1\t2\t3\t4\n")
    _write(tmp_path / "ml-100k" / "u.item", "junk")
    assert _rows(str(tmp_path / "ml-100k")) == ("movielens-100k", [(1, 2, 4)])


def test_recbole_inter_keeps_token_ids_as_strings(tmp_path):
    url = _write(
        tmp_path / "x.inter",
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n196\t242\t3\t881250949\n",
    )
    data = formats.read(url)
    assert data.format == "recbole"
    assert data.frame.rows() == [("196", "242", 881250949, 3.0)]
    assert formats.detect(_write(tmp_path / "noext", (tmp_path / "x.inter").read_text())) == "recbole"


def test_sasrec_txt_uses_file_order_as_time(tmp_path):
    url = _write(tmp_path / "ml-1m.txt", "1 5\n1 3\n2 5\n1 9\n")
    data = formats.read(url)
    assert data.format == "sasrec-txt" and not data.has_time
    assert data.frame.rows() == [(1, 5, 0), (1, 3, 1), (2, 5, 2), (1, 9, 3)]


def test_playlist_csv_with_padded_quoted_header(tmp_path):
    url = _write(
        tmp_path / "spotify.csv",
        '"user_id", "artistname", "trackname", "playlistname"\n'
        '"u1","Elvis Costello","Alison","HARD ROCK"\n'
        '"u1","The Cars","Drive","HARD ROCK"\n'
        '"u2","Elvis Costello","Alison","Mix"\n',
    )
    data = formats.read(url)
    assert data.format == "playlist" and not data.has_time
    assert data.frame.select("user_id", "item_id", "timestamp").rows() == [
        ("u1", "Elvis Costello - Alison", 0),
        ("u1", "The Cars - Drive", 1),
        ("u2", "Elvis Costello - Alison", 2),
    ]


def test_generic_csv_with_named_columns_and_iso_times(tmp_path):
    url = _write(
        tmp_path / "events.csv",
        "who,what,when,stars\nalice,book,2024-01-02T10:00:00,4\nbob,pen,2024-01-01 09:00:00,2\n",
    )
    data = formats.read(url, "csv", formats.Columns(user="who", item="what", time="when", rating="stars"))
    assert data.frame.rows() == [("alice", "book", 1704189600, 4.0), ("bob", "pen", 1704099600, 2.0)]


def test_tsv_with_header(tmp_path):
    url = _write(tmp_path / "e.tsv", "user_id\titem_id\ttimestamp\na\tx\t5\n")
    assert _rows(url) == ("tsv", [("a", "x", 5)])


def test_parquet_file_and_partitioned_directory(tmp_path):
    t = pa.table({"user_id": [1, 2], "item_id": ["a", "b"], "timestamp": [10, 20]})
    pq.write_table(t, tmp_path / "one.parquet")
    assert _rows(str(tmp_path / "one.parquet")) == ("parquet", [(1, "a", 10), (2, "b", 20)])
    for day, part in (("2024-01-01", t.slice(0, 1)), ("2024-01-02", t.slice(1, 1))):
        (tmp_path / "dir" / f"dt={day}").mkdir(parents=True)
        pq.write_table(part, tmp_path / "dir" / f"dt={day}" / "part-0.parquet")
    (tmp_path / "dir" / "_SUCCESS").write_text("")
    fmt, rows = _rows(str(tmp_path / "dir"))
    assert fmt == "parquet" and sorted(rows) == [(1, "a", 10), (2, "b", 20)]


def test_reads_any_fsspec_url():
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/fmt-test/u.data", b"7\t8\t1\t99\n")
    assert _rows("memory://fmt-test/u.data") == ("movielens-100k", [(7, 8, 99)])


def test_composite_item_columns(tmp_path):
    url = _write(tmp_path / "e.csv", "user_id,a,b,timestamp\n1,x,y,5\n")
    assert _rows(url, item="a,b") == ("csv", [(1, "x - y", 5)])


def test_float_timestamps_are_floored(tmp_path):
    url = _write(tmp_path / "e.csv", "user_id,item_id,timestamp\n1,2,10.7\n")
    assert _rows(url) == ("csv", [(1, 2, 10)])


def test_undetectable_binary(tmp_path):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(UserError, match="cannot detect the input format"):
        formats.detect(str(path))


def test_detection_samples_large_files(tmp_path):
    url = _write(tmp_path / "big", "".join(f"{u} {i}\n" for u in range(1, 2001) for i in range(1, 6)))
    assert formats.detect(url) == "sasrec-txt"


def test_parquet_datetime_timestamps(tmp_path):
    import datetime as dt

    ts = pa.array([dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)], pa.timestamp("ms", tz="UTC"))
    pq.write_table(pa.table({"user_id": [1], "item_id": [2], "timestamp": ts}), tmp_path / "t.parquet")
    assert _rows(str(tmp_path / "t.parquet")) == ("parquet", [(1, 2, 1704067200)])
