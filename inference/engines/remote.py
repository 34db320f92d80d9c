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

ARCHITECTURE: the request path is here; the replicas' health, load, routing
and admission are `inference.engines.remote_replicas`; the wire format
(request bodies, statuses, chunks) is `inference.engines.remote_wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import httpx
from httpx_sse import EventSource, SSEError, aconnect_sse

from inference.config import RemoteOptions
from inference.engines.remote_replicas import Replica, ReplicaSet
from inference.engines.remote_wire import (
    BadStream,
    ReplicaFailed,
    check_status,
    chunks,
    prompt_fields,
    read_chunk,
    request_body,
)
from inference.engines.upstream_metrics import UpstreamLoad
from inference.errors import EngineUnavailable
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

_STALE_LOAD_S = 10.0
_DEFAULTS = RemoteOptions()  # the service's defaults, written once (inference.config)


@dataclass(frozen=True, slots=True)
class RemoteConfig:
    """The remote engine's settings: the service's `RemoteOptions` (``inference.factory``
    passes them on) plus timeouts and polling intervals that the settings do not expose."""

    model_id: str  # the id we serve the model under
    base_urls: tuple[str, ...]  # each replica's OpenAI base URL, ending in /v1
    upstream_model: str = _DEFAULTS.upstream_model  # the name upstream (default: model_id)
    api_key: str | None = _DEFAULTS.api_key
    flavor: str = _DEFAULTS.flavor  # "openai" or "vllm"
    timeout_s: float = 300.0
    down_for_s: float = 10.0
    # when every replica failed before the first token: pause, then try them all again,
    # once per pause (a router that has not yet noticed a dead replica behind it)
    retry_pauses_s: tuple[float, ...] = (1.0, 2.0)
    metrics_prefix: str | None = None  # None: "vllm" for the vllm flavor, else no polling
    metrics_every_s: float = 2.0
    metrics_timeout_s: float = 5.0
    kv_full: float = _DEFAULTS.kv_full  # admission: a replica at this KV usage...
    max_waiting: int = _DEFAULTS.max_waiting  # ...with more than this many waiting is full
    retry_after_s: float = 2.0

    @property
    def polled_prefix(self) -> str | None:
        if self.metrics_prefix is not None:
            return self.metrics_prefix or None
        return "vllm" if self.flavor == "vllm" else None


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
        self._replicas = ReplicaSet(config.base_urls, config.kv_full, config.max_waiting)
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
        for replica in self._replicas.replicas:
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
        index = self._replicas.choose(request, set(), any_state=False)
        if self.config.flavor != "vllm" or not request.messages or index is None:
            return None
        body = {
            "model": self._upstream_model,
            "add_generation_prompt": True,
            **prompt_fields(request),
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
        return self._replicas.loads()

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
        config = self.config
        keep_s = max(_STALE_LOAD_S, 5 * config.metrics_every_s)
        while True:
            client = self._require_client()
            await self._replicas.read_loads(client, prefix, config.metrics_timeout_s, keep_s)
            await asyncio.sleep(config.metrics_every_s)

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        body = request_body(request, self._upstream_model, self.config.flavor)
        self._replicas.admit(self.model_id, self.config.retry_after_s)
        submitted = time.monotonic()
        tried: set[int] = set()
        retry = 0  # passes over replicas already marked down (see the module doc)
        while True:
            index = self._replicas.choose(request, tried, any_state=retry > 0)
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
                    self._replicas.remember(request, index)
                    yield event
                return
            except ReplicaFailed as exc:
                replica.down_until = time.monotonic() + self.config.down_for_s
                log.warning(
                    "replica failed", extra={"replica": replica.base_url, "error": str(exc)}
                )

    # --- one attempt

    async def _stream(
        self, replica: Replica, body: dict[str, Any], request: GenerationRequest, submitted: float
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
                    await check_status(source.response)
                    async for event in self._events(source, request, submitted):
                        yield event
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise ReplicaFailed(str(exc)) from exc
            except SSEError as exc:  # an httpx.HTTPError: caught before those
                message = f"upstream {replica.base_url} sent no event stream: {exc}"
                raise EngineUnavailable(message) from exc
            except BadStream as exc:
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
        async for chunk in chunks(source):
            if request.request_id in self._counters.aborted:
                self._counters.aborted.discard(request.request_id)
                reason = "abort"
                break
            text, finish, reported = read_chunk(chunk)
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

    @property
    def _upstream_model(self) -> str:
        return self.config.upstream_model or self.config.model_id

    def _require_client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineUnavailable(f"engine {self.model_id} is not running")
        return self._client
