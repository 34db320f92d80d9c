"""`companion models pull` over real HTTP on loopback: progress, checksum, nothing half-written."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

COMPANION = [sys.executable, "-c", "from server.cli import main; main()"]


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[str]:
    served = tmp_path / "served"
    served.mkdir()
    (served / "weights.gguf").write_bytes(os.urandom(3 << 20))
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def pull(
    data_dir: Path, model_id: str, hub: str = "http://127.0.0.1:9"
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COMPANION_DATA_DIR": str(data_dir), "HF_ENDPOINT": hub}
    return subprocess.run(
        [*COMPANION, "models", "pull", model_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def catalog(data_dir: Path, url: str, sha256: str) -> None:
    (data_dir / "models.toml").write_text(
        f'[models.tiny]\nrole = "chat"\nbackend = "llamacpp"\n'
        f'source = "url:{url}/weights.gguf"\nsha256 = "{sha256}"\n'
    )


def test_pull_downloads_and_verifies(tmp_path: Path, file_server: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    expected = hashlib.sha256((tmp_path / "served" / "weights.gguf").read_bytes()).hexdigest()
    catalog(data_dir, file_server, expected)
    result = pull(data_dir, "tiny")
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == data_dir / "models" / "tiny" / "weights.gguf"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == expected
    assert "pulling tiny" in result.stderr  # the progress bar


def test_a_wrong_checksum_leaves_nothing_behind(tmp_path: Path, file_server: str) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    catalog(data_dir, file_server, "0" * 64)
    result = pull(data_dir, "tiny")
    assert result.returncode == 1
    assert "checksum mismatch" in result.stderr
    assert not any((data_dir / "models" / "tiny").iterdir())


def test_pull_from_a_hub_repository(tmp_path: Path, file_server: str) -> None:
    # the hub's layout: <hub>/OWNER/REPO/resolve/REVISION/FILE
    resolved = tmp_path / "served" / "someone" / "tiny-GGUF" / "resolve" / "v2" / "q4"
    resolved.mkdir(parents=True)
    weights = os.urandom(2 << 20)
    (resolved / "tiny.Q4_0.gguf").write_bytes(weights)
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "models.toml").write_text(
        '[models.hubbed]\nrole = "chat"\nbackend = "llamacpp"\n'
        'source = "hf:someone/tiny-GGUF/q4/tiny.Q4_0.gguf"\nrevision = "v2"\n'
        f'sha256 = "{hashlib.sha256(weights).hexdigest()}"\n'
    )
    result = pull(data_dir, "hubbed", hub=file_server)
    assert result.returncode == 0, result.stderr
    path = Path(result.stdout.strip())
    assert path == data_dir / "models" / "hubbed" / "tiny.Q4_0.gguf"
    assert path.read_bytes() == weights
    assert "pulling hubbed" in result.stderr

    (data_dir / "models.toml").write_text(
        '[models.hubbed]\nrole = "chat"\nbackend = "llamacpp"\n'
        'source = "hf:someone/tiny-GGUF/missing.gguf"\nsha256 = "00"\n'
    )
    missing = pull(data_dir, "hubbed", hub=file_server)
    assert missing.returncode == 1 and "404" in missing.stderr
