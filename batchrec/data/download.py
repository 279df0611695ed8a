"""`batchrec data download`: the official MovieLens archives, verified, extracted and cached.

MovieLens may not be redistributed, so batchrec fetches it from GroupLens for its users.
Each archive is streamed to a temporary file (with progress), checked — the byte count against
Content-Length, the zip's CRCs, and the MD5 GroupLens archives are known to have — then
extracted into `{dest}/{name}/` with its top-level folder stripped (ml-100k/u.data →
{dest}/ml-100k/u.data) and published with `_SUCCESS` and `_download.json` (URL, size,
sha256, md5). A published folder is a cache hit: nothing is downloaded again.

`BATCHREC_MOVIELENS_BASE_URL` (or `--base-url`) points at a mirror. Pinned MD5s apply only to
the official server, since a mirror may repackage; size and zip integrity are always checked.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass

from batchrec import log, storage, workspace
from batchrec.errors import UserError

_log = log.get("data.download")

OFFICIAL_BASE_URL = "https://files.grouplens.org/datasets/movielens"
BASE_URL_ENV = "BATCHREC_MOVIELENS_BASE_URL"
MANIFEST = "_download.json"
# name → (archive, MD5 of the official archive or None where none is pinned)
DATASETS = {
    "movielens-100k": ("ml-100k.zip", "0e33842e24a9c977be4e0107933c0723"),
    "movielens-1m": ("ml-1m.zip", "c4d9eecfca2ab87c1945afe126590906"),
    "movielens-10m": ("ml-10m.zip", "ce571fd55effeba0271552578f2648bd"),
    "movielens-20m": ("ml-20m.zip", "cd245b17a1ae2cc31bb14903e1204af3"),
    "movielens-25m": ("ml-25m.zip", "6b51fb2759a8657d3bfcbfc42b592ada"),
    "movielens-32m": ("ml-32m.zip", None),
}
_CHUNK = 1 << 20


@dataclass
class DownloadConfig:
    # movielens-100k, movielens-1m, movielens-10m, movielens-20m, movielens-25m or movielens-32m
    name: str
    dest: str | None = None  # destination; default: {workspace}/raw/movielens
    base_url: str | None = None  # mirror of the GroupLens datasets folder; default: GroupLens
    workspace: str | None = None  # workspace for default locations
    timeout_s: float = 60.0  # seconds without data before the download fails


def _fetch(url: str, path: str, timeout_s: float) -> tuple[int, str, str]:
    """Stream `url` to `path`; returns (bytes, sha256, md5). Short reads are errors."""
    sha, md5, n = hashlib.sha256(), hashlib.md5(), 0
    try:
        resp = urllib.request.urlopen(url, timeout=timeout_s)
    except urllib.error.HTTPError as e:
        raise UserError(
            f"download failed: HTTP {e.code} {e.reason}",
            where=url,
            fix=f"check the dataset name or {BASE_URL_ENV}",
        ) from e
    except (urllib.error.URLError, OSError) as e:
        raise UserError(
            f"cannot reach the download server: {getattr(e, 'reason', e)}",
            where=url,
            fix=f"check the network, or point {BASE_URL_ENV} at a reachable mirror",
        ) from e
    total = int(resp.headers.get("Content-Length") or 0) or None
    try:
        bar = log.Progress(total, f"download {os.path.basename(path)}", unit="B", every=5.0)
        with resp, open(path, "wb") as out, bar:
            while chunk := resp.read(_CHUNK):
                out.write(chunk)
                sha.update(chunk)
                md5.update(chunk)
                n += len(chunk)
                bar.update(len(chunk))
    except http.client.IncompleteRead as e:
        n += len(e.partial)
    if total is not None and n != total:
        raise UserError(
            f"download incomplete: got {n:,} of {total:,} bytes", where=url, fix="run the command again"
        )
    return n, sha.hexdigest(), md5.hexdigest()


def _extract(archive: str, into: str, url: str) -> list[str]:
    """Extract with the top-level folder stripped; returns the relative file names."""
    try:
        with zipfile.ZipFile(archive) as z:
            bad = z.testzip()
            if bad:
                raise UserError(
                    f"corrupt archive: CRC error in {bad}", where=url, fix="run the command again"
                )
            names = []
            for info in z.infolist():
                parts = info.filename.split("/")
                rel = "/".join(parts[1:]) if len(parts) > 1 else parts[0]
                if info.is_dir() or not rel or ".." in parts or rel.startswith("/"):
                    continue
                target = os.path.join(into, rel)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                with z.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(_CHUNK):
                        dst.write(chunk)
                names.append(rel)
    except zipfile.BadZipFile as e:
        raise UserError(f"not a valid zip archive: {e}", where=url, fix="run the command again") from e
    return names


def run(cfg: DownloadConfig) -> str:
    """Download, verify and extract dataset `cfg.name`; returns its folder URL (cached when present)."""
    if cfg.name not in DATASETS:
        raise UserError(f"unknown dataset {cfg.name!r}", fix=f"use one of: {', '.join(DATASETS)}")
    archive, pinned_md5 = DATASETS[cfg.name]
    base = (cfg.base_url or os.environ.get(BASE_URL_ENV) or OFFICIAL_BASE_URL).rstrip("/")
    dest = cfg.dest or storage.join(workspace.root(cfg.workspace), "raw", "movielens")
    folder = storage.join(dest, archive.removesuffix(".zip"))
    if storage.is_published(folder) and storage.exists(storage.join(folder, MANIFEST)):
        _log.info(f"{cfg.name}: already downloaded at {folder}")
        return folder
    url = f"{base}/{archive}"
    with tempfile.TemporaryDirectory(prefix="batchrec-download-") as tmp:
        zpath = os.path.join(tmp, archive)
        _log.info(f"downloading {url}")
        n, sha256, md5 = _fetch(url, zpath, cfg.timeout_s)
        if pinned_md5 and base == OFFICIAL_BASE_URL and md5 != pinned_md5:
            raise UserError(
                f"checksum mismatch: md5 {md5}, expected {pinned_md5}", where=url, fix="run the command again"
            )
        files = _extract(zpath, os.path.join(tmp, "x"), url)
        with storage.staged_dir(folder) as stage:
            for rel in files:
                storage.upload(os.path.join(tmp, "x", rel), storage.join(stage, rel))
            storage.write_json(
                storage.join(stage, MANIFEST),
                {"dataset": cfg.name, "url": url, "bytes": n, "sha256": sha256, "md5": md5, "files": files},
            )
    _log.info(f"{cfg.name}: {len(files)} files ({n:,} bytes, sha256 {sha256[:12]}…) at {folder}")
    return folder
