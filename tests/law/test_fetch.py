"""`moorelab data fetch`: real HTTP on 127.0.0.1 serving the shared files at their GitHub URL
paths; sha256 manifest; cache reuse; --from; failures."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote

import pytest
from typer.testing import CliRunner

from moorelab.errors import DataError, MoorelabError
from moorelab.law.fetch import MANIFEST, fetch_dataset
from moorelab.law.sources import FILES, dataset_files


@pytest.fixture
def github_like_server(trends_dir):
    """Serve ../shared/data/trends at raw.githubusercontent.com-style paths
    (/<owner>/<repo>/<commit>/<upstream path>) on 127.0.0.1."""
    routes = {f"/{f.repo}/{f.commit}/{f.upstream_path}": trends_dir / f.folder / f.file
              for f in FILES.values()}
    hits = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            path = routes.get(unquote(self.path))
            hits.append(unquote(self.path))
            if path is None or not path.is_file():
                self.send_error(404)
                return
            body = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    th = threading.Thread(target=srv.serve_forever, daemon=True)
    th.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", hits
    srv.shutdown()
    srv.server_close()


def test_fetch_over_http_records_sha256_and_reuses_cache(github_like_server, tmp_path,
                                                          trends_dir):
    base, hits = github_like_server
    res = fetch_dataset("hardware", base_url=base, dest=tmp_path)
    assert [r.status for r in res] == ["downloaded", "downloaded"]
    assert {r.relpath for r in res} == {"epoch-training-cost-trends/Chip_dataset-Grid_view.csv",
                                        "epoch-training-cost-trends/Hardware_prices.csv"}
    # URL carries the pinned commit and the upstream name with its spaces (quoted)
    assert any("/263c40a159307e917213d1dc433c617e47d55bfe/data/Chip dataset-Grid view.csv" in h
               for h in hits)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    for r in res:
        local = trends_dir / r.relpath
        want = hashlib.sha256(local.read_bytes()).hexdigest()
        assert r.sha256 == want == manifest[r.relpath]["sha256"]
        assert r.matches_reference is True
        assert (tmp_path / r.relpath).read_bytes() == local.read_bytes()
        assert manifest[r.relpath]["origin"].startswith(base)
    n_hits = len(hits)
    again = fetch_dataset("hardware", base_url=base, dest=tmp_path)
    assert [r.status for r in again] == ["cached", "cached"] and len(hits) == n_hits
    # a corrupted cached file is fetched again
    (tmp_path / res[0].relpath).write_text("tampered")
    third = fetch_dataset("hardware", base_url=base, dest=tmp_path)
    assert third[0].status == "downloaded" and third[0].sha256 == res[0].sha256
    # the fetched cache is a valid --data directory
    from moorelab.law.data import load_chips

    assert load_chips(tmp_path).n_input == 5775


def test_fetch_http_error_names_url(github_like_server, tmp_path):
    base, _ = github_like_server
    with pytest.raises(MoorelabError, match=r"download failed: http://127\.0\.0\.1.*HTTP 404"):
        fetch_dataset("chinchilla", base_url=base + "/nothing-here", dest=tmp_path)
    assert not list((tmp_path / "epoch-chinchilla-replication").glob("*"))  # no partial file


def test_fetch_from_local_copy(tmp_path, trends_dir):
    res = fetch_dataset("chinchilla", from_path=trends_dir, dest=tmp_path / "c")
    assert res[0].status == "copied" and res[0].matches_reference is True
    # the same copy again: verified against the manifest, not copied again
    again = fetch_dataset("chinchilla", from_path=trends_dir, dest=tmp_path / "c")
    assert again[0].status == "cached" and again[0].sha256 == res[0].sha256
    # a different copy is copied (and recorded)
    changed = tmp_path / "changed.csv"
    changed.write_bytes((trends_dir / res[0].relpath).read_bytes() + b"\n")
    assert fetch_dataset("chinchilla", from_path=changed, dest=tmp_path / "c")[0].status == "copied"
    assert fetch_dataset("chinchilla", from_path=changed, dest=tmp_path / "c", force=True)[0].status == "copied"
    single = fetch_dataset("chinchilla",
                           from_path=trends_dir / "epoch-chinchilla-replication"
                           / "svg_extracted_data.csv", dest=tmp_path / "d")
    assert single[0].sha256 == res[0].sha256
    with pytest.raises(DataError, match="no local copy"):
        fetch_dataset("hardware", from_path=tmp_path / "c", dest=tmp_path / "e")
    with pytest.raises(MoorelabError, match="unknown dataset 'nope'"):
        fetch_dataset("nope", dest=tmp_path)


def test_every_shared_file_has_a_pinned_source(trends_dir):
    assert len(dataset_files("all")) == len(FILES)
    held = {str(p.relative_to(trends_dir)) for p in trends_dir.rglob("*")
            if p.is_file() and p.name != "SOURCES.md"}
    assert held == set(FILES)
    for f in FILES.values():
        assert len(f.commit) == 40 and f.url().startswith("https://raw.githubusercontent.com/")


def test_cli_fetch(github_like_server, tmp_path, monkeypatch):
    from moorelab.cli import app

    base, _ = github_like_server
    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path))
    r = CliRunner().invoke(app, ["data", "fetch", "chinchilla", "--base-url", base, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out["files"][0]["status"] == "downloaded"
    assert (tmp_path / "trends" / "epoch-chinchilla-replication" / "svg_extracted_data.csv").is_file()
    r = CliRunner().invoke(app, ["data", "list", "--json"])
    assert r.exit_code == 0 and any(d["name"] == "notable-models" for d in json.loads(r.stdout))


def test_default_data_dir_is_the_fetch_cache(tmp_path, monkeypatch, trends_dir):
    from moorelab.cli import app

    monkeypatch.setenv("MOORELAB_CACHE", str(tmp_path))
    monkeypatch.delenv("MOORELAB_DATA", raising=False)
    r = CliRunner().invoke(app, ["data", "fetch", "notable-models", "--from", str(trends_dir)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["trend", "compute", "--json", "--no-plot", "--n-boot", "100"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["fit"]["n"] == 428
