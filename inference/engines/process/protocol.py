"""What the API process and an engine process say to each other, and how it is framed.

One stream socket (a socketpair: no path on disk, nobody else can connect)
carries length-prefixed msgpack frames, each one of the tagged structs below.
The first frame is the API's `Start`; the engine answers `Ready` (or
`LoadFailed`), then both sides stream: requests and aborts one way; text,
endings, errors, stats snapshots and finished-request observations the other.

Engine types (`GenerationRequest`, `Finished`, `EngineStats`) cross as they
are: msgspec encodes dataclasses natively, so nothing is copied field by field.
"""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path
from typing import Any

import msgspec

from inference import errors
from inference.config import ChatEngineConfig
from inference.stats import EngineStats
from inference.types import Finished, GenerationRequest, PromptSize

_HEADER = struct.Struct("!I")
MAX_FRAME = 64 << 20  # a json_schema or a long prompt fits many times over


class _Message(msgspec.Struct, tag=True, array_like=True):
    """Every frame: a tagged array (compact; the tag picks the type)."""


class Start(_Message):
    config: ChatEngineConfig


class Ready(_Message):
    pid: int


class LoadFailed(_Message):
    message: str


class Submit(_Message):
    request: GenerationRequest


class Abort(_Message):
    request_id: str


class Measure(_Message):
    """Measure the request's prompt (`Engine.measure`); answered by `Measured` or `Failed`."""

    request: GenerationRequest


class Measured(_Message):
    request_id: str
    size: PromptSize | None


class Forget(_Message):
    """Drop a user's cached KV (`Engine.forget`); answered by `Forgotten` or `Failed`."""

    request_id: str
    user_id: str


class Forgotten(_Message):
    request_id: str


class Delta(_Message):
    request_id: str
    text: str


class Done(_Message):
    request_id: str
    finished: Finished


class Failed(_Message):
    """An `InferenceError` the engine raised for one request, by class name."""

    request_id: str
    kind: str
    message: str
    retry_after_s: float = 1.0


class Stats(_Message):
    stats: EngineStats


class Observed(_Message):
    """A finished request, for the API process's latency histograms (`EngineObserver`)."""

    model_id: str
    finished: Finished
    inter_token_s: list[float]


ToEngine = Start | Submit | Abort | Measure | Forget
FromEngine = Ready | LoadFailed | Delta | Done | Failed | Stats | Observed | Measured | Forgotten

# The errors a request can fail with, by the name that crosses the wire; any other
# `InferenceError` crosses as its nearest base here (at worst `EngineUnavailable`).
_ERRORS: dict[str, type[errors.InferenceError]] = {
    kind.__name__: kind
    for kind in (
        errors.InvalidRequest,
        errors.ContextLengthExceeded,
        errors.EngineOverloaded,
        errors.DeadlineExceeded,
        errors.EngineUnavailable,
    )
}


def failed(request_id: str, error: errors.InferenceError) -> Failed:
    retry = error.retry_after_s if isinstance(error, errors.EngineOverloaded) else 1.0
    kind = next((k.__name__ for k in type(error).__mro__ if k.__name__ in _ERRORS), "")
    return Failed(request_id, kind or errors.EngineUnavailable.__name__, str(error), retry)


def error_of(message: Failed) -> errors.InferenceError:
    """The exception the engine raised, rebuilt on this side."""
    kind = _ERRORS.get(message.kind, errors.EngineUnavailable)
    if issubclass(kind, errors.EngineOverloaded):
        return kind(message.message, message.retry_after_s)
    return kind(message.message)


def _enc_hook(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise NotImplementedError(f"cannot encode {type(value).__name__}")


def _dec_hook(kind: type, value: Any) -> Any:
    if kind is Path:
        return Path(value)
    raise NotImplementedError(f"cannot decode {kind.__name__}")


class Channel:
    """Framed messages over one asyncio stream pair; ``receive`` returns None at end of stream."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        incoming: Any,
    ) -> None:
        self._reader, self._writer = reader, writer
        self._encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)
        self._decoder = msgspec.msgpack.Decoder(incoming, dec_hook=_dec_hook)

    def send(self, message: msgspec.Struct) -> None:
        """Queue ``message`` (never blocks; the transport buffers what the peer has not read)."""
        if self._writer.is_closing():
            return  # the peer is gone; whoever waits on it learns that from `receive`
        body = self._encoder.encode(message)
        self._writer.write(_HEADER.pack(len(body)) + body)

    async def drain(self) -> None:
        await self._writer.drain()

    async def receive(self) -> Any:
        try:
            header = await self._reader.readexactly(_HEADER.size)
            (size,) = _HEADER.unpack(header)
            if size > MAX_FRAME:
                raise errors.EngineUnavailable(f"engine channel frame of {size} bytes refused")
            return self._decoder.decode(await self._reader.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError):
            return None

    def close(self) -> None:
        self._writer.close()
