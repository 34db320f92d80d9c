"""vLLM's socket files go to a directory of the process's own, emptied and removed."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path

import pytest

from inference.engines import vllm_sockets


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> None:
    """No directory claimed yet in this process, and the environment restored after
    (set first, so that monkeypatch records a variable that was not there at all)."""
    monkeypatch.setattr(vllm_sockets, "_directory", None)
    monkeypatch.setattr(vllm_sockets, "_engines", 0)
    for name in (vllm_sockets.BASE_ENV, vllm_sockets.OWNER_ENV):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def bind(directory: Path) -> socket.socket:
    """What vLLM's ZeroMQ ``ipc://`` endpoint leaves: a bound Unix socket's file."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(directory / "3f1c9a2e-5b7d-4e8f-9a0b-1c2d3e4f5a6b"))
    return listener


@pytest.mark.usefixtures("fresh")
def test_the_files_go_once_the_last_engine_closes() -> None:
    first = vllm_sockets.claim()
    assert first is not None and first.parent == Path(tempfile.gettempdir())
    assert os.environ[vllm_sockets.BASE_ENV] == str(first)
    assert vllm_sockets.claim() == first  # a second engine: the same directory
    listener = bind(first)
    try:
        vllm_sockets.release()
        assert len(list(first.iterdir())) == 1  # the other engine still runs
        vllm_sockets.release()
        assert list(first.iterdir()) == []  # the sockets' files are gone
        assert os.environ[vllm_sockets.BASE_ENV] == str(first)  # kept: vLLM caches it
    finally:
        listener.close()
        first.rmdir()


@pytest.mark.usefixtures("fresh")
def test_an_operators_setting_is_kept_and_a_parents_is_not(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(vllm_sockets.BASE_ENV, str(tmp_path))
    assert vllm_sockets.claim() is None
    listener = bind(tmp_path)
    vllm_sockets.release()
    assert len(list(tmp_path.iterdir())) == 1  # not ours to clean
    listener.close()

    monkeypatch.setattr(vllm_sockets, "_engines", 0)
    monkeypatch.setenv(vllm_sockets.OWNER_ENV, str(os.getppid()))  # inherited
    own = vllm_sockets.claim()
    assert own is not None and own != tmp_path
    assert os.environ[vllm_sockets.OWNER_ENV] == str(os.getpid())
    own.rmdir()
