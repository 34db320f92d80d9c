"""A remote engine: any OpenAI-compatible upstream (llama-server, Ollama, LM Studio,
`vllm serve`, another Companion), one or several replicas behind one `Engine`.

Routing: a conversation goes back to the replica that served its previous
turn (that replica holds its prefix in cache), as long as that replica is
healthy. A new conversation goes to the healthy replica with the fewest
requests in flight. A replica that refuses connections or answers 5xx before
the first token is marked down for ``down_for_s`` and the request is retried on
another. When every replica has failed this request, it pauses and tries them
all again, down or not (``retry_pauses_s``: after 1 s, then 2 s), before giving
up: a single upstream that is a router answers 5xx for a replica that just
died until its health check notices, a second or two later. Once tokens have
streamed, a failure ends the request with `EngineUnavailable` (a half-sent
reply cannot be resumed elsewhere).

The reply is read as Server-Sent Events (httpx-sse: multi-line data,
comments) up to ``[DONE]``; each event is decoded into a typed chunk. A reply
that is not an event stream, or a chunk that is not an OpenAI completion
chunk (or that reports an upstream error), ends the request with
`EngineUnavailable` naming the replica.

With ``flavor="vllm"`` each request carries vLLM's ``cache_salt`` (a hash of
the user id: prefix caches never cross users, and upstreams never see the id)
and ``priority`` (interactive first). For other upstreams the same hash is sent
as OpenAI's ``user`` field. Every request carries ``X-Session-ID``, a hash of
user and conversation: behind vLLM's router (``vllm-router --policy
consistent_hash``) a conversation's turns go to one replica, the one holding
its prefix, and move when it dies. Pointed at a router, this engine sees one
replica, so its own conversation affinity (below) has nothing to choose from;
it matters only for deployments that list the replicas themselves.

Where the upstream exports Prometheus metrics (``metrics_prefix``: "vllm" for
vLLM, which is the default for that flavor; "companion" for this service),
they are polled every ``metrics_every_s``: new conversations then go to the
replica with the fewest requests in flight or waiting, then the emptiest KV
cache, and `stats` reports the upstream's KV usage and queue.

Admission: when every healthy replica reports its KV cache full (usage at
least ``kv_full``) and more than ``max_waiting`` requests already waiting,
a new request fails at once with `EngineOverloaded` (HTTP 503 with
Retry-After) instead of joining queues that cannot move until running
requests finish. A replica whose metrics are unknown counts as having room. A
replica that answers its metrics too slowly (``metrics_timeout_s``) keeps the
load it last reported for ``_STALE_LOAD_S`` (or five polls): busy is not empty.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from httpx_sse import EventSource, SSEError, aconnect_sse

from inference.engines.upstream_metrics import UpstreamLoad, parse_load
from inference.errors import (
    ContextLengthExceeded,
    EngineOverloaded,
    EngineUnavailable,
    InferenceError,
    InvalidRequest,
)
from inference.stats import EngineObserver, EngineStats
from inference.text import without_nul
from inference.types import (
    Finished,
    FinishReason,
    GenerationRequest,
    PromptSize,
    StreamEvent,
    TextDelta,
    Timings,
    Usage,
)

log = logging.getLogger(__name__)

_AFFINITY_SIZE = 10_000  # conversations remembered for routing


_STALE_LOAD_S = 10.0


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    model_id: str  # the id we serve the model under
    base_urls: tuple[str, ...]  # each replica's OpenAI base URL, ending in /v1
    upstream_model: str = ""  # the model name the upstream knows (default: model_id)
    api_key: str | None = None
    flavor: str = "openai"  # "openai" or "vllm"
    timeout_s: float = 300.0
    down_for_s: float = 10.0
    # when every replica failed before the first token: pause, then try them all again,
    # once per pause (a router that has not yet noticed a dead replica behind it)
    retry_pauses_s: tuple[float, ...] = (1.0, 2.0)
    metrics_prefix: str | None = None  # None: "vllm" for the vllm flavor, else no polling
    metrics_every_s: float = 2.0
    metrics_timeout_s: float = 5.0
    kv_full: float = 0.98  # admission: a replica at this KV usage...
    max_waiting: int = 8  # ...with more than this many waiting is full
    retry_after_s: float = 2.0

    @property
    def polled_prefix(self) -> str | None:
        if self.metrics_prefix is not None:
            return self.metrics_prefix or None
        return "vllm" if self.flavor == "vllm" else None


@dataclass
class _Replica:
    base_url: str
    in_flight: int = 0
    down_until: float = 0.0
    load: UpstreamLoad | None = None  # from its /metrics, when polled
    load_read: float = 0.0  # when ``load`` was read (monotonic)

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url.removesuffix('/v1')}/metrics"

    @property
    def tokenize_url(self) -> str:
        return f"{self.base_url.removesuffix('/v1')}/tokenize"

    def busyness(self) -> tuple[float, float]:
        """Requests in flight or waiting there, then KV usage: lower is better."""
        waiting = self.load.waiting if self.load else 0.0
        return (self.in_flight + waiting, self.load.kv_usage if self.load else 0.0)

    @property
    def healthy(self) -> bool:
        return time.monotonic() >= self.down_until

    def full(self, kv_full: float, max_waiting: int) -> bool:
        """Its last metrics say its KV cache is full and requests queue behind it."""
        load = self.load
        return load is not None and load.kv_usage >= kv_full and load.waiting > max_waiting


class _ReplicaFailed(Exception):
    """The replica failed before sending anything: another may be tried."""


class _BadStream(Exception):
    """The replica's reply cannot be read as a completion stream."""


@dataclass
class _Counters:
    prompt: int = 0
    cached: int = 0
    generated: int = 0
    running: int = 0
    in_flight: set[str] = field(default_factory=set)  # request ids being streamed now
    aborted: set[str] = field(default_factory=set)  # of those, the ones to stop


class RemoteEngine:
    """Streams completions from OpenAI-compatible upstream replicas."""

    def __init__(self, config: RemoteConfig, observer: EngineObserver | None = None) -> None:
        if not config.base_urls:
            raise EngineUnavailable("a remote engine needs at least one base URL")
        self.config = config
        self._observer = observer
        self._replicas = [_Replica(url.rstrip("/")) for url in config.base_urls]
        self._affinity: OrderedDict[str, int] = OrderedDict()
        self._client: httpx.AsyncClient | None = None
        self._counters = _Counters()
        self._poller: asyncio.Task[None] | None = None

    @property
    def model_id(self) -> str:
        return self.config.model_id

    async def start(self) -> None:
        headers = {"Authorization": f"Bearer {self.config.api_key}"} if self.config.api_key else {}
        timeout = httpx.Timeout(self.config.timeout_s, connect=5.0)
        self._client = httpx.AsyncClient(headers=headers, timeout=timeout)
        prefix = self.config.polled_prefix
        if prefix is not None:
            self._poller = asyncio.create_task(self._poll(prefix), name="upstream-metrics")

    async def close(self) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def health(self) -> None:
        client = self._require_client()
        for replica in self._replicas:
            try:
                response = await client.get(f"{replica.base_url}/models", timeout=2.0)
                if response.status_code < 500:
                    return
            except httpx.HTTPError:
                continue
        raise EngineUnavailable(f"no replica of {self.model_id} answers")

    async def measure(self, request: GenerationRequest) -> PromptSize | None:
        """vLLM's ``/tokenize`` on the replica the request would go to. None when no
        answer comes: a llama-server upstream, a router that does not pass the path on,
        a replica down (``generate`` then checks the length upstream, as before)."""
        index = self._choose(request, set(), any_state=False)
        if self.config.flavor != "vllm" or not request.messages or index is None:
            return None
        body = {
            "model": self.config.upstream_model or self.config.model_id,
            "add_generation_prompt": True,
            **_prompt_fields(request),
        }
        try:
            response = await self._require_client().post(
                self._replicas[index].tokenize_url, json=body, timeout=self.config.metrics_timeout_s
            )
            response.raise_for_status()
            answer = response.json()
            return PromptSize(int(answer["count"]), int(answer["max_model_len"]))
        except (httpx.HTTPError, ValueError, KeyError, TypeError):
            return None

    async def forget(self, user_id: str) -> None:
        """Nothing to do here: upstream servers keep KV under a hash of the user
        (`GenerationRequest.cache_salt`), never their id or text, and evict it as they
        need room; vLLM's own reset endpoint is for development servers only."""

    async def abort(self, request_id: str) -> None:
        if request_id in self._counters.in_flight:  # unknown or finished ids: nothing to stop
            self._counters.aborted.add(request_id)

    def loads(self) -> list[UpstreamLoad | None]:
        """The last metrics read from each replica (None: not polled or not answering)."""
        return [replica.load for replica in self._replicas]

    def stats(self) -> EngineStats:
        counters = self._counters
        loads = [load for load in self.loads() if load is not None]
        return EngineStats(
            model_id=self.model_id,
            running=counters.running,
            waiting=int(sum(load.waiting for load in loads)),
            kv_cells_total=0,
            kv_cells_used=0,
            kv_cells_cached=0,
            prefix_queried_tokens=counters.prompt,
            prefix_hit_tokens=counters.cached,
            prompt_tokens=counters.prompt,
            generated_tokens=counters.generated,
            host_cache_bytes=0,
            host_cache_entries=0,
            reported_kv_usage=max((load.kv_usage for load in loads), default=None),
        )

    async def _poll(self, prefix: str) -> None:
        while True:
            await asyncio.gather(*(self._read_load(r, prefix) for r in self._replicas))
            await asyncio.sleep(self.config.metrics_every_s)

    async def _read_load(self, replica: _Replica, prefix: str) -> None:
        client = self._require_client()
        keep_s = max(_STALE_LOAD_S, 5 * self.config.metrics_every_s)
        try:
            response = await client.get(replica.metrics_url, timeout=self.config.metrics_timeout_s)
            response.raise_for_status()
            replica.load = parse_load(response.text, prefix)
            replica.load_read = time.monotonic()
        except (httpx.TimeoutException, httpx.HTTPStatusError):
            # a replica too busy to answer in time is still as loaded as it was when it
            # last did: forgetting that would count it as having room
            if time.monotonic() - replica.load_read > keep_s:
                replica.load = None
        except (httpx.HTTPError, ValueError):
            replica.load = None  # unreachable, or not vLLM: unknown

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        body = self._body(request)
        self._admit()
        submitted = time.monotonic()
        tried: set[int] = set()
        retry = 0  # passes over replicas already marked down (see the module doc)
        while True:
            index = self._choose(request, tried, any_state=retry > 0)
            if index is None:
                if not tried or retry >= len(self.config.retry_pauses_s):
                    raise EngineUnavailable(f"no healthy replica of {self.model_id}")
                await asyncio.sleep(self.config.retry_pauses_s[retry])
                retry += 1
                tried.clear()
                continue
            replica = self._replicas[index]
            tried.add(index)
            try:
                async for event in self._stream(replica, body, request, submitted):
                    # Remember the replica as soon as it answers: callers may stop
                    # iterating at the Finished event, before code after the loop.
                    self._remember(request, index)
                    yield event
                return
            except _ReplicaFailed as exc:
                replica.down_until = time.monotonic() + self.config.down_for_s
                log.warning(
                    "replica failed", extra={"replica": replica.base_url, "error": str(exc)}
                )

    # --- routing

    def _admit(self) -> None:
        config = self.config
        healthy = [r for r in self._replicas if r.healthy]
        if healthy and all(r.full(config.kv_full, config.max_waiting) for r in healthy):
            raise EngineOverloaded(
                f"every replica of {self.model_id} has a full KV cache and a queue",
                retry_after_s=config.retry_after_s,
            )

    def _choose(self, request: GenerationRequest, tried: set[int], any_state: bool) -> int | None:
        """The replica for this attempt: None when none is left. ``any_state``: replicas
        marked down count too (a retry pass)."""
        candidates = [
            i for i, r in enumerate(self._replicas) if (any_state or r.healthy) and i not in tried
        ]
        if not candidates:
            return None
        preferred = self._affinity.get(_conversation_key(request))
        if preferred in candidates:
            return preferred
        return min(candidates, key=lambda i: self._replicas[i].busyness())

    def _remember(self, request: GenerationRequest, index: int) -> None:
        key = _conversation_key(request)
        self._affinity[key] = index
        self._affinity.move_to_end(key)
        while len(self._affinity) > _AFFINITY_SIZE:
            self._affinity.popitem(last=False)

    # --- one attempt

    async def _stream(
        self, replica: _Replica, body: dict[str, Any], request: GenerationRequest, submitted: float
    ) -> AsyncIterator[StreamEvent]:
        client = self._require_client()
        url = replica.base_url + ("/chat/completions" if "messages" in body else "/completions")
        replica.in_flight += 1
        self._counters.running += 1
        self._counters.in_flight.add(request.request_id)
        try:
            try:
                headers = {"X-Session-ID": request.session_key()}
                async with aconnect_sse(client, "POST", url, json=body, headers=headers) as source:
                    await _check_status(source.response)
                    async for event in self._events(source, request, submitted):
                        yield event
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise _ReplicaFailed(str(exc)) from exc
            except SSEError as exc:  # an httpx.HTTPError: caught before those
                message = f"upstream {replica.base_url} sent no event stream: {exc}"
                raise EngineUnavailable(message) from exc
            except _BadStream as exc:
                raise EngineUnavailable(f"upstream {replica.base_url} {exc}") from exc
            except httpx.HTTPError as exc:
                raise EngineUnavailable(f"upstream {replica.base_url} failed: {exc}") from exc
        finally:
            replica.in_flight -= 1
            self._counters.running -= 1
            self._counters.in_flight.discard(request.request_id)
            self._counters.aborted.discard(request.request_id)

    async def _events(
        self, source: EventSource, request: GenerationRequest, submitted: float
    ) -> AsyncIterator[StreamEvent]:
        first: float | None = None
        reason: FinishReason = "stop"
        usage = Usage(0, 0, 0)
        async for chunk in _chunks(source):
            if request.request_id in self._counters.aborted:
                self._counters.aborted.discard(request.request_id)
                reason = "abort"
                break
            text, finish, reported = _read_chunk(chunk)
            text = without_nul(text)
            if text:
                first = first or time.monotonic()
                yield TextDelta(text)
            reason = finish or reason
            usage = reported or usage
        yield self._finished(reason, usage, submitted, first)

    def _finished(
        self, reason: FinishReason, usage: Usage, submitted: float, first: float | None
    ) -> Finished:
        now = time.monotonic()
        counters = self._counters
        counters.prompt += usage.prompt_tokens
        counters.cached += usage.cached_prompt_tokens
        counters.generated += usage.completion_tokens
        finished = Finished(
            reason,
            usage,
            Timings(
                0.0,
                None if first is None else first - submitted,
                0.0 if first is None else now - first,
            ),
        )
        if self._observer is not None:
            self._observer.request_finished(self.model_id, finished, ())
        return finished

    # --- request body

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        problems = request.problems()
        if problems:
            raise InvalidRequest("; ".join(problems))
        sampling = request.sampling
        body: dict[str, Any] = {
            "model": self.config.upstream_model or self.config.model_id,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            "presence_penalty": sampling.presence_penalty,
            "frequency_penalty": sampling.frequency_penalty,
        }
        body.update(_prompt_fields(request))
        body.update(_optional_fields(request))
        body.update(self._routing_fields(request))
        return body

    def _routing_fields(self, request: GenerationRequest) -> dict[str, Any]:
        if self.config.flavor == "vllm":
            return {"cache_salt": request.cache_salt(), "priority": int(request.priority)}
        return {"user": request.cache_salt()}

    def _require_client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineUnavailable(f"engine {self.model_id} is not running")
        return self._client


def _conversation_key(request: GenerationRequest) -> str:
    return f"{request.user_id}\x00{request.conversation_id or ''}"


def _prompt_fields(request: GenerationRequest) -> dict[str, Any]:
    if request.messages:
        return {"messages": [{"role": m.role, "content": m.content} for m in request.messages]}
    if request.prompt:
        return {"prompt": request.prompt}
    return {"prompt": list(request.prompt_tokens)}  # OpenAI's completions accept token ids


def _optional_fields(request: GenerationRequest) -> dict[str, Any]:
    sampling = request.sampling
    fields: dict[str, Any] = {}
    if sampling.seed is not None:
        fields["seed"] = sampling.seed
    if sampling.stop:
        fields["stop"] = list(sampling.stop)
    if sampling.top_k:
        fields["top_k"] = sampling.top_k
    if sampling.min_p:
        fields["min_p"] = sampling.min_p
    if sampling.repetition_penalty != 1.0:
        fields["repetition_penalty"] = sampling.repetition_penalty
    if sampling.ignore_eos:
        fields["ignore_eos"] = True
    if request.json_schema is not None:
        schema = {"name": "response", "schema": request.json_schema}
        fields["response_format"] = {"type": "json_schema", "json_schema": schema}
    if request.grammar is not None:
        fields["grammar"] = request.grammar  # llama-server's extension
    return fields


async def _check_status(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    detail = (await response.aread()).decode(errors="replace")[:500]
    if response.status_code >= 500:
        raise _ReplicaFailed(f"HTTP {response.status_code}: {detail}")
    raise _upstream_error(response.status_code, detail)


def _upstream_error(status: int, detail: str) -> InferenceError:
    message = f"upstream refused the request (HTTP {status}): {detail}"
    if status == 413 or "context_length" in detail:
        return ContextLengthExceeded(message)
    if status == 429:
        return EngineOverloaded(message)
    return InvalidRequest(message)


# What is read of a streamed chunk; other fields are ignored.


class _Delta(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    delta: _Delta | None = None  # chat completions
    text: str | None = None  # completions
    finish_reason: str | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int | None = None


class _ChunkUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None


class _ChunkError(msgspec.Struct):
    message: str = ""


class _Chunk(msgspec.Struct):
    choices: list[_Choice] | None = None  # required, unless the chunk reports an error
    usage: _ChunkUsage | None = None
    error: _ChunkError | str | None = None  # how vLLM (and OpenAI) report a failure mid-stream


async def _chunks(source: EventSource) -> AsyncIterator[_Chunk]:
    """The reply's chunks, up to its ``[DONE]``."""
    async for sse in source.aiter_sse():
        if sse.data.strip() == "[DONE]":
            return
        if sse.data:  # an event of only an id or a retry field carries nothing
            yield _decode_chunk(sse.data)


def _decode_chunk(data: str) -> _Chunk:
    try:
        chunk = msgspec.json.decode(data, type=_Chunk)
    except msgspec.DecodeError as exc:  # not JSON, or JSON of another shape
        raise _BadStream(f"sent a malformed chunk ({exc}): {data[:200]!r}") from exc
    if chunk.error is not None:
        detail = chunk.error if isinstance(chunk.error, str) else chunk.error.message
        raise _BadStream(f"reported an error: {detail[:500]}")
    if chunk.choices is None:
        raise _BadStream(f"sent a chunk without `choices`: {data[:200]!r}")
    return chunk


def _read_chunk(chunk: _Chunk) -> tuple[str, FinishReason | None, Usage | None]:
    text, finish = "", None
    finish_reason: FinishReason | None = None
    for choice in chunk.choices or ():
        content = choice.delta.content if choice.delta is not None else None
        text += content or choice.text or ""
        finish = choice.finish_reason or finish
    if finish:
        finish_reason = "length" if finish == "length" else "stop"
    return text, finish_reason, _read_usage(chunk.usage)


def _read_usage(usage: _ChunkUsage | None) -> Usage | None:
    if usage is None:
        return None
    details = usage.prompt_tokens_details
    return Usage(
        prompt_tokens=usage.prompt_tokens,
        cached_prompt_tokens=(details.cached_tokens if details else None) or 0,
        completion_tokens=usage.completion_tokens,
    )
