"""`companion models pull` over real HTTP on loopback: progress, checksum, nothing half-written.

`url:` sources come from a plain file server. `hf:` sources go through
huggingface_hub, which here talks to a fake hub: the two calls hf_hub_download
makes (HEAD, then GET, on /OWNER/REPO/resolve/REVISION/FILE) answered with the
headers it reads (X-Repo-Commit, ETag, Content-Length), Range requests, and
the hub's error codes for missing files and gated repositories. Each pull runs
the real command in a subprocess with its own HF_HOME; the suite runs with
HF_HUB_OFFLINE=1, so hub pulls that should go online say HF_HUB_OFFLINE=0.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest

COMPANION = [sys.executable, "-c", "from server.cli import main; main()"]
ONLINE = {"HF_HUB_OFFLINE": "0"}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]  # names in lower case


@dataclass
class FakeHub:
    """What the hub serves, and what it was asked."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)  # "/OWNER/REPO/resolve/REV/FILE"
    tokens: dict[str, str] = field(default_factory=dict)  # gated repo id -> the token it takes
    requests: list[Request] = field(default_factory=list)
    cut_next_get_at: int | None = None  # drop the connection after this many body bytes, once

    def add(self, repo_id: str, filename: str, data: bytes, revision: str = "main") -> None:
        self.files[f"/{repo_id}/resolve/{revision}/{filename}"] = data

    def file_requests(self) -> list[Request]:
        """Requests for files (the library also asks the hub other things, such as telemetry)."""
        return [r for r in self.requests if "/resolve/" in r.path]

    def gets(self) -> list[Request]:
        return [r for r in self.file_requests() if r.method == "GET"]


class HubHandler(http.server.BaseHTTPRequestHandler):
    """HTTP/1.0: the connection closes after each answer, so a short body reads as cut off."""

    hub: FakeHub

    def do_HEAD(self) -> None:
        self.answer(body=False)

    def do_GET(self) -> None:
        self.answer(body=True)

    def answer(self, body: bool) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        self.hub.requests.append(Request(self.command, self.path, headers))
        repo_id = "/".join(self.path.split("/")[1:3])
        token = self.hub.tokens.get(repo_id)
        if token and self.headers.get("Authorization") != f"Bearer {token}":
            self.refuse(401, "GatedRepo")
            return
        data = self.hub.files.get(self.path)
        if data is None:
            self.refuse(404, "EntryNotFound")
            return
        start = int(self.headers.get("Range", "bytes=0-").removeprefix("bytes=").split("-")[0])
        self.send_response(206 if start else 200)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        if body:
            self.wfile.write(data[start : self.cut(len(data))])

    def cut(self, end: int) -> int:
        at, self.hub.cut_next_get_at = self.hub.cut_next_get_at, None
        return end if at is None else at

    def refuse(self, status: int, code: str) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Repo-Commit", COMMIT)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def serve(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    served = tmp_path / "served"
    served.mkdir()
    (served / "weights.gguf").write_bytes(os.urandom(3 << 20))
    with serve(partial(http.server.SimpleHTTPRequestHandler, directory=str(served))) as url:
        yield url


@pytest.fixture
def hub() -> Iterator[FakeHub]:
    fake = FakeHub()
    with serve(type("Handler", (HubHandler,), {"hub": fake})) as fake.url:
        yield fake


def pull(
    data_dir: Path, model_id: str, hub: str = "http://127.0.0.1:9", **env: str
) -> subprocess.CompletedProcess[str]:
    """The command, with the hub at `hub`."""
    return subprocess.run(
        [*COMPANION, "models", "pull", model_id],
        env=hub_env(data_dir, COMPANION_DATA_DIR=str(data_dir), HF_ENDPOINT=hub, **env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def hub_env(data_dir: Path, **env: str) -> dict[str, str]:
    """The suite's environment with the library's cache and login under the test's dir."""
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    inherited["HF_HUB_OFFLINE"] = os.environ.get("HF_HUB_OFFLINE", "1")
    return {**inherited, "HF_HOME": str(data_dir.parent / "hf"), **env}


def catalog(data_dir: Path, url: str, sha256: str) -> None:
    (data_dir / "models.toml").write_text(
        f'[models.tiny]\nrole = "chat"\nbackend = "llamacpp"\n'
        f'source = "url:{url}/weights.gguf"\nsha256 = "{sha256}"\n'
    )


def hub_entry(data_dir: Path, model_id: str, source: str, data: bytes, extra: str = "") -> None:
    (data_dir / "models.toml").write_text(
        f'[models.{model_id}]\nrole = "chat"\nbackend = "llamacpp"\n'
        f'source = "hf:{source}"\nsha256 = "{hashlib.sha256(data).hexdigest()}"\n{extra}'
    )


def blobs(tmp_path: Path, repo_id: str) -> list[Path]:
    """The files of `repo_id` in the library's cache."""
    folder = tmp_path / "hf" / "hub" / f"models--{repo_id.replace('/', '--')}" / "blobs"
    return sorted(folder.iterdir()) if folder.exists() else []


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    path = tmp_path / "data"
    path.mkdir()
    return path


def test_pull_downloads_and_verifies(tmp_path: Path, data_dir: Path, file_server: str) -> None:
    expected = hashlib.sha256((tmp_path / "served" / "weights.gguf").read_bytes()).hexdigest()
    catalog(data_dir, file_server, expected)
    result = pull(data_dir, "tiny")  # HF_HUB_OFFLINE=1 (the suite's) is for the hub only
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == data_dir / "models" / "tiny" / "weights.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected
    assert "pulling tiny" in result.stderr  # the progress bar


def test_a_wrong_checksum_leaves_nothing_behind(data_dir: Path, file_server: str) -> None:
    catalog(data_dir, file_server, "0" * 64)
    result = pull(data_dir, "tiny")
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr
    assert not any((data_dir / "models" / "tiny").iterdir())


def test_pull_from_a_hub_repository(tmp_path: Path, data_dir: Path, hub: FakeHub) -> None:
    weights = os.urandom(2 << 20)
    hub.add("someone/tiny-GGUF", "q4/tiny.Q4_0.gguf", weights, revision="v2")
    hub_entry(data_dir, "hubbed", "someone/tiny-GGUF/q4/tiny.Q4_0.gguf", weights, 'revision = "v2"')
    result = pull(data_dir, "hubbed", hub=hub.url, **ONLINE)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == data_dir / "models" / "hubbed" / "tiny.Q4_0.gguf"
    assert path.read_bytes() == weights
    assert "pulling hubbed" in result.stderr
    assert [(r.method, r.path) for r in hub.file_requests()] == [
        ("HEAD", "/someone/tiny-GGUF/resolve/v2/q4/tiny.Q4_0.gguf"),
        ("GET", "/someone/tiny-GGUF/resolve/v2/q4/tiny.Q4_0.gguf"),
    ]
    # the library's cache holds the file; the models dir has a hard link to it
    (blob,) = blobs(tmp_path, "someone/tiny-GGUF")
    assert blob.stat().st_ino == path.stat().st_ino
    assert not list(path.parent.glob("*.partial"))

    hub_entry(data_dir, "hubbed", "someone/tiny-GGUF/missing.gguf", b"")
    missing = pull(data_dir, "hubbed", hub=hub.url, **ONLINE)
    assert missing.returncode == 1 and "404" in missing.stderr


def test_a_wrong_checksum_from_the_hub_leaves_nothing_behind(
    tmp_path: Path, data_dir: Path, hub: FakeHub
) -> None:
    hub.add("someone/tiny-GGUF", "tiny.gguf", os.urandom(1 << 20))
    hub_entry(data_dir, "hubbed", "someone/tiny-GGUF/tiny.gguf", b"other bytes")
    result = pull(data_dir, "hubbed", hub=hub.url, **ONLINE)
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr
    assert not any((data_dir / "models" / "hubbed").iterdir())
    assert blobs(tmp_path, "someone/tiny-GGUF") == []  # the next pull downloads it again


_PULL_WITH_PROGRESS = """
import json, sys
from pathlib import Path
from models.catalog import load_catalog, pull
reports = []
catalog = load_catalog(Path(sys.argv[1]), hub_url=sys.argv[2])
pull(catalog, "hubbed", fetch=None, progress=lambda done, total: reports.append((done, total)))
print(json.dumps(reports))
"""


def test_a_broken_transfer_resumes_where_it_stopped(data_dir: Path, hub: FakeHub) -> None:
    # The library writes in blocks of 10 MiB: cut after more than one of them.
    weights = os.urandom(24 << 20)
    hub.add("someone/big-GGUF", "big.gguf", weights)
    hub_entry(data_dir, "hubbed", "someone/big-GGUF/big.gguf", weights)
    hub.cut_next_get_at = cut = 15 << 20
    result = subprocess.run(
        [sys.executable, "-c", _PULL_WITH_PROGRESS, str(data_dir), hub.url],
        env=hub_env(data_dir, **ONLINE),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (data_dir / "models" / "hubbed" / "big.gguf").read_bytes() == weights
    first, second = hub.gets()
    assert "range" not in first.headers
    resumed_at = int(second.headers["range"].removeprefix("bytes=").rstrip("-"))
    assert 0 < resumed_at <= cut
    reports = json.loads(result.stdout)
    done = [d for d, _ in reports]
    assert done == sorted(done)  # the bar does not count the resumed part twice
    assert reports[-1] == [len(weights), len(weights)]


def test_a_gated_repository_takes_the_token(data_dir: Path, hub: FakeHub) -> None:
    weights = os.urandom(1 << 20)
    hub.add("someone/gated", "tiny.gguf", weights)
    hub.tokens["someone/gated"] = "hf_secret"
    hub_entry(data_dir, "hubbed", "someone/gated/tiny.gguf", weights)

    refused = pull(data_dir, "hubbed", hub=hub.url, **ONLINE)
    assert refused.returncode == 1 and "gated" in refused.stderr
    assert all("authorization" not in r.headers for r in hub.file_requests())

    before = len(hub.file_requests())
    by_env = pull(data_dir, "hubbed", hub=hub.url, HF_TOKEN="hf_secret", **ONLINE)
    assert by_env.returncode == 0, by_env.stderr
    sent = {r.headers.get("authorization") for r in hub.file_requests()[before:]}
    assert sent == {"Bearer hf_secret"}


def test_the_login_token_is_used_too(data_dir: Path, hub: FakeHub) -> None:
    weights = os.urandom(1 << 20)
    hub.add("someone/gated", "tiny.gguf", weights)
    hub.tokens["someone/gated"] = "hf_stored"
    hub_entry(data_dir, "hubbed", "someone/gated/tiny.gguf", weights)
    (data_dir.parent / "hf").mkdir()
    (data_dir.parent / "hf" / "token").write_text("hf_stored")  # where `hf auth login` puts it
    result = pull(data_dir, "hubbed", hub=hub.url, **ONLINE)
    assert result.returncode == 0, result.stderr


def test_offline_a_pull_only_takes_what_the_cache_has(
    tmp_path: Path, data_dir: Path, hub: FakeHub
) -> None:
    weights = os.urandom(1 << 20)
    hub.add("someone/tiny-GGUF", "tiny.gguf", weights)
    hub_entry(data_dir, "hubbed", "someone/tiny-GGUF/tiny.gguf", weights)

    offline = pull(data_dir, "hubbed", hub=hub.url, HF_HUB_OFFLINE="1")
    assert offline.returncode == 1 and "HF_HUB_OFFLINE" in offline.stderr
    assert hub.requests == []
    assert not (data_dir / "models" / "hubbed" / "tiny.gguf").exists()

    assert pull(data_dir, "hubbed", hub=hub.url, **ONLINE).returncode == 0
    requests = len(hub.requests)
    other = tmp_path / "other"  # another data dir, the same HF_HOME
    other.mkdir()
    hub_entry(other, "hubbed", "someone/tiny-GGUF/tiny.gguf", weights)
    cached = pull(other, "hubbed", hub=hub.url, HF_HUB_OFFLINE="1")
    assert cached.returncode == 0, cached.stderr
    assert Path(cached.stdout.strip()).read_bytes() == weights
    assert len(hub.requests) == requests
