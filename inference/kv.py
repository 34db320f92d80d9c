"""KV-cache bookkeeping for an engine with a unified KV cache (llama.cpp), without a model.

`KVCells` mirrors how llama.cpp's unified cache holds sequences: every token
of a sequence occupies a cell, and copying a prefix from one sequence to
another (``llama_memory_seq_cp``) makes both refer to the same cells, so a
shared persona prompt costs its cells once however many conversations use it.

`SlotTable` decides where a new request's prompt comes from, preferring what
saves the most computation:

1. an idle slot of the same user whose tokens share the longest prefix with the
   prompt (the conversation's previous turn): truncate it and go on;
2. a saved copy in host RAM of the same user's sequence (`HostCache`);
3. a public prefix (operator-written text such as the persona prompt) that any
   slot holds: copy its cells, which costs nothing;
4. nothing: compute the whole prompt.

Reuse never crosses users except through the public prefix, and it always
leaves at least one prompt token to compute, because sampling needs its logits.

ARCHITECTURE: these are the parts; nothing outside `inference.kv_placement`
changes them. `KVPlacement` there owns one of each and applies every decision to
the model in the same call that accounts for it, so slots, cells and host copies
never disagree (kept apart because together they would pass 450 lines).
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class KVCells:
    """Which cells each sequence holds; a cell shared by several sequences counts once."""

    def __init__(self, total: int) -> None:
        self.total = total
        self._seqs: dict[int, list[int]] = {}
        self._refs: dict[int, int] = {}
        self._ids = itertools.count()

    @property
    def used(self) -> int:
        return len(self._refs)

    @property
    def free(self) -> int:
        return self.total - self.used

    def length(self, seq: int) -> int:
        return len(self._seqs.get(seq, ()))

    def extend(self, seq: int, n: int) -> None:
        """``seq`` gains ``n`` new cells (tokens decoded)."""
        if n > self.free:
            raise ValueError(f"{n} cells wanted, {self.free} free")
        cells = self._seqs.setdefault(seq, [])
        for _ in range(n):
            cell = next(self._ids)
            cells.append(cell)
            self._refs[cell] = 1

    def share_prefix(self, src: int, dst: int, n: int) -> None:
        """``dst`` (empty) now also holds the first ``n`` cells of ``src``."""
        if self.length(dst):
            raise ValueError(f"sequence {dst} is not empty")
        cells = self._seqs.get(src, [])[:n]
        if len(cells) < n:
            raise ValueError(f"sequence {src} holds fewer than {n} cells")
        self._seqs[dst] = list(cells)
        for cell in cells:
            self._refs[cell] += 1

    def truncate(self, seq: int, n: int) -> None:
        """Keep the first ``n`` cells of ``seq``; release the rest."""
        cells = self._seqs.get(seq, [])
        self._release(cells[n:])
        del cells[n:]

    def clear(self, seq: int) -> None:
        self._release(self._seqs.pop(seq, []))

    def held_by(self, seqs: Iterable[int], limits: dict[int, int] | None = None) -> int:
        """Distinct cells held by ``seqs`` (only the first ``limits[seq]`` of a limited one)."""
        limits = limits or {}
        held: set[int] = set()
        for seq in seqs:
            cells = self._seqs.get(seq, [])
            held.update(cells[: limits.get(seq, len(cells))])
        return len(held)

    def _release(self, cells: Iterable[int]) -> None:
        for cell in cells:
            self._refs[cell] -= 1
            if not self._refs[cell]:
                del self._refs[cell]


@dataclass
class Slot:
    """One engine sequence and the tokens whose KV it holds."""

    seq_id: int
    owner: str | None = None  # user id; None while empty
    tokens: list[int] = field(default_factory=list)
    public_len: int = 0  # leading tokens that are public (shareable across users)
    conversation_id: str | None = None
    busy: bool = False
    last_used: float = 0.0
    prompt: list[int] = field(default_factory=list)  # the running request's prompt, while busy


@dataclass(frozen=True, slots=True)
class SavedSequence:
    """A sequence's KV saved to host RAM, with what it holds."""

    owner: str
    conversation_id: str | None
    tokens: tuple[int, ...]
    public_len: int
    state: bytes


class HostCache:
    """A bounded host-RAM cache of saved sequences, least recently used dropped first."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
        self._entries: OrderedDict[int, SavedSequence] = OrderedDict()
        self._ids = itertools.count()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, saved: SavedSequence) -> bool:
        """Keep ``saved`` (dropping the oldest as needed); False when it can never fit."""
        if len(saved.state) > self.capacity_bytes:
            return False
        self._drop_same(saved)
        while self.bytes + len(saved.state) > self.capacity_bytes:
            _, oldest = self._entries.popitem(last=False)
            self.bytes -= len(oldest.state)
        self._entries[next(self._ids)] = saved
        self.bytes += len(saved.state)
        return True

    def best(self, owner: str, tokens: Sequence[int]) -> tuple[int, int] | None:
        """(entry key, shared prefix length) of the owner's entry sharing most with ``tokens``."""
        best: tuple[int, int] | None = None
        for key, entry in self._entries.items():
            if entry.owner != owner:
                continue
            shared = common_prefix(entry.tokens, tokens)
            if shared and (best is None or shared > best[1]):
                best = (key, shared)
        return best

    def drop_owned(self, owned: Callable[[str], bool]) -> int:
        """Drop every entry whose owner ``owned`` accepts; return how many."""
        keys = [key for key, entry in self._entries.items() if owned(entry.owner)]
        for key in keys:
            self.bytes -= len(self._entries.pop(key).state)
        return len(keys)

    def take(self, key: int) -> SavedSequence:
        entry = self._entries.pop(key)
        self.bytes -= len(entry.state)
        return entry

    def _drop_same(self, saved: SavedSequence) -> None:
        for key, entry in list(self._entries.items()):
            if entry.owner == saved.owner and entry.tokens == saved.tokens[: len(entry.tokens)]:
                self.bytes -= len(self._entries.pop(key).state)


@dataclass(frozen=True, slots=True)
class Plan:
    """Where a request's prompt KV comes from.

    ``source`` is "slot" (reuse ``slot``'s own cells), "host" (restore host entry
    ``host_key`` into ``slot``), "public" (share ``reuse`` cells of ``donor``: its
    public prefix, or any prefix of a sequence the same user is running now, as
    when several personas answer one message) or "none". ``reuse`` tokens need no
    computing.
    """

    slot: int
    source: str
    reuse: int
    donor: int | None = None
    host_key: int | None = None


class SlotTable:
    """The engine's sequences: which are busy, which idle ones hold reusable KV."""

    def __init__(self, n_slots: int) -> None:
        self.slots = [Slot(seq_id=i) for i in range(n_slots)]

    def idle(self) -> list[Slot]:
        return [s for s in self.slots if not s.busy]

    def busy(self) -> list[Slot]:
        return [s for s in self.slots if s.busy]

    def plan(
        self, owner: str, tokens: Sequence[int], public_len: int, host: HostCache | None = None
    ) -> Plan | None:
        """Choose the slot and the source for a prompt; None when every slot is busy."""
        limit = len(tokens) - 1  # the last prompt token is always computed
        own = self._best_own(owner, tokens, limit)
        saved = host.best(owner, tokens) if host is not None else None
        public = self._best_donor(owner, tokens, min(public_len, limit), limit)
        own_reuse = own[1] if own else 0
        saved_reuse = min(saved[1], limit) if saved else 0
        public_reuse = public[1] if public else 0
        if own and own_reuse >= max(saved_reuse, public_reuse) and own_reuse > 0:
            return Plan(slot=own[0].seq_id, source="slot", reuse=own_reuse)
        target = self._victim()
        if target is None:
            return None
        if saved and saved_reuse > public_reuse:
            return Plan(target.seq_id, "host", saved_reuse, host_key=saved[0])
        if public and public_reuse > 0:
            return Plan(target.seq_id, "public", public_reuse, donor=public[0].seq_id)
        return Plan(target.seq_id, "none", 0)

    def _best_own(self, owner: str, tokens: Sequence[int], limit: int) -> tuple[Slot, int] | None:
        """The owner's idle sequence this prompt continues: it shares at least half of
        what the sequence holds (a next turn shares all but a re-tokenized tail). Another
        request of the same user (a background job, the content judge) that shares only
        the chat template's first tokens must not cut their conversation down to them:
        it goes elsewhere, and the conversation stays, or is saved when evicted."""
        best: tuple[Slot, int] | None = None
        for slot in self.idle():
            if slot.owner != owner:
                continue
            shared = min(common_prefix(slot.tokens, tokens), limit)
            if shared * 2 < len(slot.tokens):
                continue
            if best is None or shared > best[1]:
                best = (slot, shared)
        return best

    def _best_donor(
        self, owner: str, tokens: Sequence[int], public_limit: int, limit: int
    ) -> tuple[Slot, int] | None:
        """The slot whose cells this prompt can share the most of: any slot's public
        prefix, or (never across users) the whole computed prefix of the owner's own
        sequences, running or idle: a user's new conversation that starts like one of
        their others (the same system prompt on /v1, where nothing is public) copies
        that prefix instead of computing it again."""
        best: tuple[Slot, int] | None = None
        for slot in self.slots:
            if slot.owner == owner:
                shared = min(common_prefix(slot.tokens, tokens), limit)
            else:
                shared = min(common_prefix(slot.tokens[: slot.public_len], tokens), public_limit)
            if shared and (best is None or shared > best[1]):
                best = (slot, shared)
        return best

    def _victim(self) -> Slot | None:
        """An idle slot to (re)use: an empty one, else the least recently used."""
        idle = self.idle()
        if not idle:
            return None
        empty = [s for s in idle if s.owner is None and not s.tokens]
        return empty[0] if empty else min(idle, key=lambda s: s.last_used)
