"""The storage seam: every byte batchrec reads or writes goes through this module.

Paths are fsspec URLs — plain paths, file://, s3://, gs://, memory:// — so a stage never
knows where it runs. Credentials come from each backend's standard environment
(AWS_ACCESS_KEY_ID…, GOOGLE_APPLICATION_CREDENTIALS). S3-compatible stores (MinIO, moto,
Ceph) are reached by setting an endpoint: `BATCHREC_S3_ENDPOINT_URL`, or the standard
`AWS_ENDPOINT_URL`, or `configure(s3_endpoint_url=...)` from a job config.

Publishing is all or nothing: outputs are written under a staging prefix beside their
destination and moved into place only once complete (`staged_dir`), with `_SUCCESS`
written last. Readers trust a directory only when its `_SUCCESS` exists.
"""

from __future__ import annotations

import contextlib
import json
import os
import posixpath
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from batchrec.errors import UserError

SUCCESS = "_SUCCESS"
_STAGING_PREFIX = "_staging-"
_INSTALL_HINT = {"s3": "s3fs", "s3a": "s3fs", "gs": "gcsfs", "gcs": "gcsfs", "az": "adlfs", "abfs": "adlfs"}
_settings: dict[str, Any] = {"s3_endpoint_url": None}


def configure(*, s3_endpoint_url: str | None = None) -> None:
    """Set process-wide storage options (a job config's `storage:` section)."""
    if s3_endpoint_url:
        _settings["s3_endpoint_url"] = s3_endpoint_url


def _protocol(url: str) -> str:
    return url.split("://", 1)[0] if "://" in url else "file"


def is_local(url: str) -> bool:
    return _protocol(url) in ("file", "local")


def storage_options(url: str) -> dict[str, Any]:
    """fsspec options for `url`: endpoint override and retries for object stores."""
    if _protocol(url) not in ("s3", "s3a"):
        return {}
    endpoint = (
        _settings["s3_endpoint_url"]
        or os.environ.get("BATCHREC_S3_ENDPOINT_URL")
        or os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
    )
    opts: dict[str, Any] = {
        # Transient S3 errors (throttling, 5xx, dropped connections) are retried with
        # backoff by botocore; s3fs retries its own calls on top of that.
        "config_kwargs": {"retries": {"max_attempts": 10, "mode": "adaptive"}},
    }
    if endpoint:
        opts["client_kwargs"] = {"endpoint_url": endpoint}
    return opts


def url_to_fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem and the backend-specific path for a URL."""
    try:
        return fsspec.core.url_to_fs(url, **storage_options(url))
    except ImportError as e:
        pkg = _INSTALL_HINT.get(_protocol(url), f"the fsspec backend for {_protocol(url)}://")
        raise UserError(
            f"no storage backend for {_protocol(url)}:// URLs", where=url, fix=f"pip install {pkg}"
        ) from e
    except ValueError as e:
        raise UserError(
            f"not a usable storage URL: {e}",
            where=url,
            fix="use a path or file://, s3://, gs://, memory:// URL",
        ) from e


def absolute(url: str) -> str:
    """`url` with a local path made absolute: what another process (a Ray worker) can open."""
    return os.path.abspath(url) if is_local(url) and "://" not in url else url


def arrow_fs(url: str | list[str]):
    """(pyarrow filesystem, path or paths) for readers that take one (Ray Data): None for local
    paths. A list of URLs must share one filesystem."""
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    first = url[0] if isinstance(url, list) else url
    fs, _ = url_to_fs(first)
    path = [url_to_fs(u)[1] for u in url] if isinstance(url, list) else url_to_fs(url)[1]
    return (None if is_local(first) else PyFileSystem(FSSpecHandler(fs))), path


def join(base: str, *parts: str) -> str:
    base = base.rstrip("/")
    return "/".join([base, *(p.strip("/") for p in parts if p)])


def parent(url: str) -> str:
    if "://" in url:
        proto, rest = url.split("://", 1)
        return f"{proto}://{posixpath.dirname(rest.rstrip('/'))}"
    return os.path.dirname(os.path.abspath(url.rstrip("/")))


def basename(url: str) -> str:
    return posixpath.basename(url.rstrip("/"))


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def isdir(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.isdir(path)


def ls(url: str) -> list[str]:
    """Names (not URLs) directly under a directory URL; [] when it does not exist."""
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        return []
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False))


def size(url: str) -> int:
    fs, path = url_to_fs(url)
    return int(fs.size(path))


def open_url(url: str, mode: str = "rb", **kwargs: Any):
    fs, path = url_to_fs(url)
    if "w" in mode and is_local(url):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return fs.open(path, mode, **kwargs)


def read_bytes(url: str) -> bytes:
    with open_url(url, "rb") as f:
        return f.read()


def write_bytes(url: str, data: bytes) -> None:
    """Write a whole object atomically: a reader sees the old bytes or the new, never half."""
    fs, path = url_to_fs(url)
    if is_local(url):
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
    else:
        # A single PUT to an object store is atomic.
        fs.pipe_file(path, data)


def read_json(url: str) -> Any:
    return json.loads(read_bytes(url))


def write_json(url: str, obj: Any) -> None:
    write_bytes(url, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_parquet(url: str | list[str], columns: list[str] | None = None) -> pa.Table:
    """A Parquet file, a directory of Parquet files or a list of files (on one filesystem), as
    one Arrow table."""
    if isinstance(url, list):
        fs, _ = url_to_fs(url[0])
        paths = [url_to_fs(u)[1] for u in url]
        return pq.ParquetDataset(paths, filesystem=fs).read(columns=columns)
    fs, path = url_to_fs(url)
    return pq.read_table(path, columns=columns, filesystem=fs)


def write_parquet(table: pa.Table, url: str, **kwargs: Any) -> None:
    fs, path = url_to_fs(url)
    if is_local(url):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    kwargs.setdefault("compression", "zstd")
    pq.write_table(table, path, filesystem=fs, **kwargs)


def remove(url: str) -> None:
    fs, path = url_to_fs(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


@contextlib.contextmanager
def local_path(url: str) -> Iterator[str]:
    """A local file path holding the object at `url` (downloaded to a temp file if remote)."""
    if is_local(url):
        _, path = url_to_fs(url)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="batchrec-") as d:
        dst = os.path.join(d, basename(url) or "object")
        fs, path = url_to_fs(url)
        fs.get(path, dst)
        yield dst


def upload(local: str, url: str) -> None:
    """Copy a local file to `url` (atomically for a single object)."""
    if is_local(url):
        _, path = url_to_fs(url)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + f".tmp-{uuid.uuid4().hex[:8]}"
        shutil.copyfile(local, tmp)
        os.replace(tmp, path)
    else:
        fs, path = url_to_fs(url)
        fs.put_file(local, path)


def is_published(url: str, *files: str) -> bool:
    """Whether `url` is a published directory (its `_SUCCESS` exists) holding every one of `files`."""
    return exists(join(url, SUCCESS)) and all(exists(join(url, f)) for f in files)


def staging_url(final_url: str) -> str:
    """A fresh staging prefix beside `final_url`; `_`-prefixed so Hive-style readers skip it."""
    return join(parent(final_url), f"{_STAGING_PREFIX}{basename(final_url)}-{uuid.uuid4().hex[:12]}")


def publish(staging: str, final_url: str, *, success_marker: bool = True) -> None:
    """Move a complete staging directory to `final_url`, replacing what was there.

    The old `_SUCCESS` disappears first and the new one is written last, so a reader that
    gates on `_SUCCESS` never sees a mix of two runs. On a local filesystem the swap is two
    directory renames; on an object store it is a server-side copy.
    """
    fs, final = url_to_fs(final_url)
    _, stage = url_to_fs(staging)
    if is_local(final_url):
        old = None
        if os.path.exists(final):
            old = final.rstrip("/") + f".__old-{uuid.uuid4().hex[:8]}"
            os.rename(final, old)
        os.makedirs(os.path.dirname(os.path.abspath(final)), exist_ok=True)
        os.rename(stage, final)
        if old:
            shutil.rmtree(old, ignore_errors=True)
    else:
        if fs.exists(final):
            with contextlib.suppress(FileNotFoundError):
                fs.rm(posixpath.join(final, SUCCESS))
            fs.rm(final, recursive=True)
        fs.copy(stage.rstrip("/") + "/", final.rstrip("/") + "/", recursive=True)
        fs.rm(stage, recursive=True)
    if success_marker:
        write_bytes(join(final_url, SUCCESS), b"")


@contextlib.contextmanager
def staging(final_url: str) -> Iterator[str]:
    """Yield a fresh staging URL beside `final_url`, removed if the block raises; the block
    itself publishes it (`publish`) or discards it (`remove`)."""
    stage = staging_url(final_url)
    if is_local(stage):
        os.makedirs(url_to_fs(stage)[1], exist_ok=True)
    try:
        yield stage
    except BaseException:
        with contextlib.suppress(Exception):
            remove(stage)
        raise


@contextlib.contextmanager
def staged_dir(
    final_url: str, *, success_marker: bool = True, publisher: Callable[..., None] | None = None
) -> Iterator[str]:
    """Yield a staging URL to write a whole output into; publish it only if the block succeeds
    (with `publisher(staging, final_url, success_marker=…)`, by default `publish`).

    On any exception the staging prefix is removed and `final_url` is left as it was.
    """
    with staging(final_url) as stage:
        yield stage
        (publisher or publish)(stage, final_url, success_marker=success_marker)
