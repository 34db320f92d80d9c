"""The remote engine's replicas: their health, their load, and which one serves a request.

Routing: a conversation goes back to the replica that served its previous
turn (that replica holds its prefix in cache), as long as that replica is
healthy. A new conversation goes to the healthy replica with the fewest
requests in flight or waiting, then the emptiest KV cache (from its
``/metrics``, where they are polled). A replica that failed is marked down
for a while (`ReplicaSet.mark_down`).

Admission: when every healthy replica reports its KV cache full and more than
``max_waiting`` requests waiting, a new request is refused at once
(`EngineOverloaded`). A replica whose metrics are unknown counts as having
room. A replica that answers its metrics too slowly keeps the load it last
reported for ``keep_load_s``: busy is not empty.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass

import httpx

from inference.engines.upstream_metrics import UpstreamLoad, parse_load
from inference.errors import EngineOverloaded
from inference.types import GenerationRequest

_AFFINITY_SIZE = 10_000  # conversations remembered for routing


@dataclass
class Replica:
    """One upstream server and what is known of it here."""

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


class ReplicaSet:
    """The replicas of one model, with the conversations each served last."""

    def __init__(self, base_urls: tuple[str, ...], kv_full: float, max_waiting: int) -> None:
        self.replicas = [Replica(url.rstrip("/")) for url in base_urls]
        self._kv_full = kv_full
        self._max_waiting = max_waiting
        self._affinity: OrderedDict[str, int] = OrderedDict()

    def __getitem__(self, index: int) -> Replica:
        return self.replicas[index]

    def loads(self) -> list[UpstreamLoad | None]:
        """The last metrics read from each replica (None: not polled or not answering)."""
        return [replica.load for replica in self.replicas]

    def admit(self, model_id: str, retry_after_s: float) -> None:
        """Refuse (`EngineOverloaded`) when every healthy replica is full (module doc)."""
        healthy = [r for r in self.replicas if r.healthy]
        if healthy and all(r.full(self._kv_full, self._max_waiting) for r in healthy):
            raise EngineOverloaded(
                f"every replica of {model_id} has a full KV cache and a queue",
                retry_after_s=retry_after_s,
            )

    def choose(self, request: GenerationRequest, tried: set[int], any_state: bool) -> int | None:
        """The replica for this attempt: None when none is left. ``any_state``: replicas
        marked down count too (a retry pass)."""
        candidates = [
            i for i, r in enumerate(self.replicas) if (any_state or r.healthy) and i not in tried
        ]
        if not candidates:
            return None
        preferred = self._affinity.get(_conversation_key(request))
        if preferred in candidates:
            return preferred
        return min(candidates, key=lambda i: self.replicas[i].busyness())

    def remember(self, request: GenerationRequest, index: int) -> None:
        """``request``'s conversation goes back to replica ``index`` next time."""
        key = _conversation_key(request)
        self._affinity[key] = index
        self._affinity.move_to_end(key)
        while len(self._affinity) > _AFFINITY_SIZE:
            self._affinity.popitem(last=False)

    async def read_loads(
        self, client: httpx.AsyncClient, prefix: str, timeout_s: float, keep_load_s: float
    ) -> None:
        """Read every replica's ``/metrics`` once (`parse_load` with ``prefix``)."""
        await asyncio.gather(
            *(_read_load(client, r, prefix, timeout_s, keep_load_s) for r in self.replicas)
        )


async def _read_load(
    client: httpx.AsyncClient, replica: Replica, prefix: str, timeout_s: float, keep_s: float
) -> None:
    try:
        response = await client.get(replica.metrics_url, timeout=timeout_s)
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


def _conversation_key(request: GenerationRequest) -> str:
    return f"{request.user_id}\x00{request.conversation_id or ''}"
