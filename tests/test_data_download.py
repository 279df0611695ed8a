"""`batchrec data download` against a MovieLens-shaped zip served from 127.0.0.1 (no internet)."""

from __future__ import annotations

import hashlib
import http.server
import io
import threading
import zipfile

import pytest
from typer.testing import CliRunner

from batchrec import storage
from batchrec.data import download
from batchrec.dataset import PreparedDataset
from cli import app

runner = CliRunner()
U_DATA = "".join(
    f"{u}\t{i}\t{1 + (u + i) % 5}\t{1000 + 10 * i + u}\n" for u in range(1, 6) for i in range(1, 8)
)


def _zip() -> bytes:
    # A fixed timestamp: `writestr(name, …)` stamps the current second, so two calls that straddle
    # a second boundary would build different bytes (and different checksums).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, text in [
            ("ml-100k/", ""),
            ("ml-100k/u.data", U_DATA),
            ("ml-100k/README", "MovieLens-shaped test archive"),
        ]:
            z.writestr(zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0)), text, zipfile.ZIP_DEFLATED)
    return buf.getvalue()


class _Server:
    """Serves `files` (name → bytes); `lie_about_length` announces more bytes than it sends."""

    def __init__(self, files: dict[str, bytes]):
        self.files, self.requests, self.lie_about_length = files, [], False
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests.append(self.path)
                body = server.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body) + (100 if server.lie_about_length else 0)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/movielens"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    s = _Server({"movielens/ml-100k.zip": _zip()})
    monkeypatch.setenv("BATCHREC_MOVIELENS_BASE_URL", s.url)
    yield s
    s.close()


def test_download_extracts_verifies_and_caches(tmp_path, server):
    dest = str(tmp_path / "ml")
    res = runner.invoke(app, ["data", "download", "movielens-100k", "--dest", dest])
    assert res.exit_code == 0, res.output
    folder = storage.join(dest, "ml-100k")
    assert res.output.strip().splitlines()[-1] == folder
    assert (tmp_path / "ml" / "ml-100k" / "u.data").read_text() == U_DATA
    manifest = storage.read_json(storage.join(folder, download.MANIFEST))
    assert manifest["sha256"] == hashlib.sha256(_zip()).hexdigest()
    assert manifest["bytes"] == len(_zip()) and sorted(manifest["files"]) == ["README", "u.data"]
    assert storage.is_published(folder)
    # Cached: a second call makes no request.
    assert runner.invoke(app, ["data", "download", "movielens-100k", "--dest", dest]).exit_code == 0
    assert len(server.requests) == 1
    # The folder is a valid `data prepare` input.
    out = str(tmp_path / "prepared")
    res = runner.invoke(app, ["data", "prepare", folder, "--out", out, "--min-item-count", "0"])
    assert res.exit_code == 0, res.output
    assert PreparedDataset.open(out).metadata["stats"]["interactions"] == 35


def test_workspace_default_dest(tmp_path, server):
    res = runner.invoke(app, ["data", "download", "movielens-100k", "--workspace", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "raw" / "movielens" / "ml-100k" / "u.data").exists()


def _fails(tmp_path, *args: str) -> str:
    res = runner.invoke(app, ["data", "download", *args, "--dest", str(tmp_path / "ml")])
    assert res.exit_code == 2, res.output
    assert not (tmp_path / "ml").exists() or not storage.ls(str(tmp_path / "ml"))
    return res.output


def test_missing_archive_is_a_clear_error(tmp_path, server):
    assert "HTTP 404" in _fails(tmp_path, "movielens-1m")


def test_truncated_download_is_rejected(tmp_path, server):
    server.lie_about_length = True
    assert "download incomplete" in _fails(tmp_path, "movielens-100k")


def test_corrupt_archive_is_rejected(tmp_path, server):
    server.files["movielens/ml-100k.zip"] = b"PK\x03\x04 this is not a zip"
    assert "not a valid zip archive" in _fails(tmp_path, "movielens-100k")


def test_pinned_md5_checked_on_the_official_server(tmp_path, server, monkeypatch):
    monkeypatch.setattr(download, "OFFICIAL_BASE_URL", server.url)
    out = _fails(tmp_path, "movielens-100k")
    assert "checksum mismatch" in out and "0e33842e24a9c977be4e0107933c0723" in out


def test_unreachable_server(tmp_path, monkeypatch):
    monkeypatch.setenv("BATCHREC_MOVIELENS_BASE_URL", "http://127.0.0.1:9/movielens")
    assert "cannot reach the download server" in _fails(tmp_path, "movielens-100k")
