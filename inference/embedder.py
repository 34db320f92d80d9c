"""Sentence embeddings (all-MiniLM-L6-v2 by default): loaded once, batched across callers.

`SentenceEmbedder.embed` is what the service calls: concurrent callers'
texts are gathered into one batch per model call, and the model runs on a
dedicated thread, never on the event loop. `encode` is the plain synchronous
call, for scripts (training, benchmarks).

Vectors are L2-normalised float32, so cosine similarity is a dot product.

Background jobs (memory extraction, profile updates) call `mark_background`
first: their texts wait while any request's are pending, so a chat turn's
embedding never queues behind a batch of new memories.

`token_states` gives one text's token states after an inner layer from that
same shared pass (the emotion head branches off layer 5), so classifiers that
read more of the model than the pooled vector add no second model call.

The transformer runs on ONNX Runtime by default (``runtime="onnx"``, about
twice as fast on a CPU, same vectors: see `inference.embedder_onnx`) and on
torch with ``runtime="torch"`` or when onnxruntime is not installed.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from inference.embedder_onnx import OnnxSentenceEncoder
from inference.errors import EngineUnavailable
from inference.metrics import default_understanding_metrics
from models.packaged import packaged_path

log = logging.getLogger(__name__)

Vectors = npt.NDArray[np.float32]
Runtime = Literal["onnx", "torch"]
RECENT_TEXTS = 256  # vectors kept for texts asked for again soon

_Pending = list[tuple[list[str], "asyncio.Future[Vectors]"]]
_background: ContextVar[bool] = ContextVar("companion_background_embedding", default=False)


def mark_background() -> None:
    """Embeddings asked for from here on, in this task and the tasks it starts, are
    background work: they wait while any request's embeddings are pending."""
    _background.set(True)


class SentenceEmbedder:
    """A sentence-transformers model behind an async, batching front."""

    def __init__(
        self,
        model_path: Path | None = None,
        max_batch: int = 64,
        threads: int = 0,
        runtime: Runtime = "onnx",
    ) -> None:
        self.model_path = model_path
        self.max_batch = max_batch
        # The model's intra-op threads (0: one per core). The service uses 1: short
        # sentences gain little from more, and on a small CPU the extra threads fight the
        # chat engine's and make the tail latency of retrieval many times worse.
        self.threads = threads
        self.runtime = runtime
        self._model: Any = None
        self._onnx: OnnxSentenceEncoder | None = None
        self._load_lock = threading.Lock()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedder")
        self._pending: _Pending = []  # requests' texts: each batch takes these first
        self._pending_background: _Pending = []
        # The last few texts' vectors: a chat turn embeds its message for the emotion and
        # content classifiers and for retrieval, not all at the same moment.
        self._recent: OrderedDict[str, Vectors] = OrderedDict()
        self._in_flight: dict[str, asyncio.Future[Vectors]] = {}  # single texts being embedded
        # Token states of one inner layer, kept from the same pass for a classifier that
        # branches off the model (the emotion head): set by the first `token_states` call.
        self._state_layer: int | None = None
        self._recent_states: OrderedDict[str, Vectors] = OrderedDict()
        self._draining = False
        self._drainer: asyncio.Task[None] | None = None  # kept so it is not collected mid-run

    @property
    def dimensions(self) -> int:
        model = self._loaded()
        # sentence-transformers renamed the method; accept either version.
        getter = getattr(model, "get_embedding_dimension", None)
        if getter is None:
            getter = model.get_sentence_embedding_dimension
        return int(getter())

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> Vectors:
        """Embed ``texts`` now, on this thread."""
        if not texts:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        model = self._loaded()
        if self._onnx is not None:
            return self._onnx.encode(texts, batch_size)
        vectors = model.encode(
            list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True
        )
        return np.asarray(vectors, dtype=np.float32)

    def encode_with_states(
        self, texts: Sequence[str], layer: int, batch_size: int = 64
    ) -> tuple[Vectors, list[Vectors]]:
        """`encode`'s vectors and each text's token states after transformer ``layer``.

        On ONNX Runtime both come from one pass (an extra output of the same graph), so a
        classifier branching off the model's upper layers costs no second pass, and the
        vectors are exactly those `encode` returns. The torch fallback runs two passes.
        States are per text, [tokens, hidden], float32, without padding.
        """
        model = self._loaded()
        if self._onnx is not None:
            return self._onnx.encode_with_states(texts, layer, batch_size)
        return self.encode(texts, batch_size), _torch_states(model, texts, layer)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """How many tokens the model sees for each text (for usage reports)."""
        encoded = self._loaded().tokenizer(list(texts), truncation=True)
        return [len(ids) for ids in encoded["input_ids"]]

    async def embed(self, texts: Sequence[str]) -> Vectors:
        """Embed ``texts``, sharing a model call with whoever else is waiting."""
        started = time.perf_counter()
        if texts and all(t in self._recent for t in texts):
            for t in texts:
                self._recent.move_to_end(t)
            return np.stack([self._recent[t] for t in texts])
        single = texts[0] if len(texts) == 1 else None
        if single is not None and single in self._in_flight:  # being embedded right now
            return await asyncio.shield(self._in_flight[single])
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Vectors] = loop.create_future()
        pending = self._pending_background if _background.get() else self._pending
        pending.append((list(texts), future))
        if single is not None:
            self._in_flight[single] = future
            future.add_done_callback(lambda _: self._in_flight.pop(single, None))
        if not self._draining:
            self._draining = True
            self._drainer = loop.create_task(self._drain())
        vectors = await asyncio.shield(future)
        default_understanding_metrics().embedding.observe(time.perf_counter() - started)
        return vectors

    async def token_states(self, text: str, layer: int) -> Vectors:
        """``text``'s token states after transformer ``layer``, from the pass that embeds it.

        The first call makes every later embedding pass keep that layer's states, so a
        chat turn's classifiers and retrieval still share one model call per message.
        """
        if self._state_layer is None:
            self._state_layer = layer
        await self.embed([text])
        states = self._recent_states.get(text) if layer == self._state_layer else None
        if states is None:  # embedded before states were kept, evicted, or another layer
            loop = asyncio.get_running_loop()
            _, per_text = await loop.run_in_executor(
                self._executor, self.encode_with_states, [text], layer
            )
            states = per_text[0]
        return states

    async def warm_up(self) -> None:
        """Load the model off the event loop (the first call would otherwise pay for it)."""
        await asyncio.get_running_loop().run_in_executor(self._executor, self._loaded)
        if self.threads > 0:
            import torch

            torch.set_num_threads(self.threads)  # process-wide, as torch has it

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._pending or self._pending_background:
                await asyncio.sleep(0)  # one loop turn: let concurrent callers join the batch
                batch = self._take_batch()
                texts = [t for chunk, _ in batch for t in chunk]
                # A chat turn asks for the same message three times at once (emotion,
                # content, retrieval): each distinct text is encoded once.
                unique = list(dict.fromkeys(texts))
                try:
                    encoded, states = await loop.run_in_executor(
                        self._executor, self._encode_keeping_states, unique
                    )
                    row = {text: i for i, text in enumerate(unique)}
                    vectors = encoded[[row[t] for t in texts]]
                    self._remember(unique, encoded, states)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self._deliver(batch, vectors)
        finally:
            self._draining = False

    def _encode_keeping_states(self, texts: list[str]) -> tuple[Vectors, list[Vectors] | None]:
        if self._state_layer is None:
            return self.encode(texts), None
        return self.encode_with_states(texts, self._state_layer)

    def _remember(self, texts: list[str], vectors: Vectors, states: list[Vectors] | None) -> None:
        for text, vector in zip(texts, vectors, strict=True):
            self._recent[text] = vector
            self._recent.move_to_end(text)
        while len(self._recent) > RECENT_TEXTS:
            self._recent.popitem(last=False)
        if states is None:
            return
        for text, tokens in zip(texts, states, strict=True):
            self._recent_states[text] = tokens
            self._recent_states.move_to_end(text)
        while len(self._recent_states) > RECENT_TEXTS:
            self._recent_states.popitem(last=False)

    def _take_batch(self) -> _Pending:
        pending = self._pending or self._pending_background
        batch: _Pending = []
        size = 0
        while pending and (not batch or size + len(pending[0][0]) <= self.max_batch):
            item = pending.pop(0)
            batch.append(item)
            size += len(item[0])
        return batch

    @staticmethod
    def _deliver(batch: list[tuple[list[str], asyncio.Future[Vectors]]], vectors: Vectors) -> None:
        start = 0
        for chunk, future in batch:
            if not future.done():
                future.set_result(vectors[start : start + len(chunk)])
            start += len(chunk)

    def _loaded(self) -> Any:
        with self._load_lock:
            if self._model is None:
                self._model = _load(self.model_path)
                if self.runtime == "onnx":
                    self._onnx = _onnx_encoder(self._model, self.threads)
            return self._model

    @property
    def active_runtime(self) -> Runtime:
        """The runtime the transformer actually runs on (after loading)."""
        self._loaded()
        return "onnx" if self._onnx is not None else "torch"


def _torch_states(model: Any, texts: Sequence[str], layer: int) -> list[Vectors]:
    import torch

    transformer = model[0].auto_model.eval()
    features = model.tokenize(list(texts))
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in features]
    with torch.inference_mode():
        output = transformer(**{n: features[n] for n in names}, output_hidden_states=True)
    lengths = features["attention_mask"].sum(dim=1).tolist()
    hidden = output.hidden_states[layer].numpy()
    return [
        np.ascontiguousarray(h[:n], dtype=np.float32) for h, n in zip(hidden, lengths, strict=True)
    ]


def _onnx_encoder(model: Any, threads: int) -> OnnxSentenceEncoder | None:
    try:
        return OnnxSentenceEncoder(model, threads)
    except ImportError:
        log.warning("onnxruntime or onnx is not installed: the embedding model runs on torch")
    except Exception:  # an architecture the exporter cannot handle: torch still can
        log.exception("exporting the embedding model to ONNX failed: it runs on torch")
    return None


def _load(path: Path | None) -> Any:
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise EngineUnavailable(
            "sentence-transformers is not installed (pip install 'companion[cpu]')"
        ) from exc
    if path is None:
        try:
            path = packaged_path("embedding")
        except FileNotFoundError as exc:
            raise EngineUnavailable(str(exc)) from exc
    return SentenceTransformer(str(path), device="cpu")
