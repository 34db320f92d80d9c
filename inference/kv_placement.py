"""KV placement: where each request's prompt KV comes from, decided and accounted in one place.

`KVPlacement` owns the three pieces of `inference.kv` together: the `SlotTable`
(which sequence holds which user's tokens), the `KVCells` (how many cells those
tokens occupy, shared prefixes counted once) and the `HostCache` (sequences saved
to host RAM). Every change goes through it and is applied to the model through a
`KVOps` in the same call, so the model's cache, the slots and the cell count
cannot drift apart.

ARCHITECTURE: the cut between the engine and the placement is "per request"
versus "per sequence". The engine keeps what belongs to a request (its sampler,
its budget of cells still to come, its counters, the batch it contributes to)
and tells the placement five things:

- ``admit``: plan a waiting request's prompt (`SlotTable.plan`), wait when a
  running request is computing a prefix it could share, check the cells fit,
  and place it (truncate, share, or restore from host RAM);
- ``extend``: a sequence decoded these tokens;
- ``release``: a request finished; its sequence stays as cache;
- ``make_room``: free cells before a decode by saving and evicting the least
  recently used idle sequences (unified layout only: ``per_slot`` gives each
  sequence cells of its own, so idle sequences never stand in a running one's way
  and leave only when their slot is wanted);
- ``forget`` / ``drop_saved``: a user's cached KV goes.

`KVOps` is what `LlamaModel` already offers (``llama_memory_seq_rm``,
``llama_memory_seq_cp``, ``llama_state_seq_get/set_data``), so the engine passes
its model; the unit tests pass a simulated cache that checks the invariants.
A fresh model (`attach`) starts with empty sequences; the host-RAM copies stay
valid, since a saved sequence can be restored into any context of the same model.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Protocol

from inference.kv import HostCache, KVCells, Plan, SavedSequence, Slot, SlotTable, common_prefix

log = logging.getLogger(__name__)

# Wait for another request's public prefix only when it saves at least this many tokens.
MIN_SHARED_WAIT = 32


class KVOps(Protocol):
    """The model's KV-cache operations the placement applies (see `LlamaModel`)."""

    def seq_truncate(self, seq: int, keep: int) -> None:
        """Keep the first ``keep`` tokens of ``seq``; drop the rest."""

    def seq_share_prefix(self, src: int, dst: int, n: int) -> None:
        """``dst`` (empty) refers to the first ``n`` cells of ``src`` too."""

    def seq_save(self, seq: int) -> bytes:
        """The KV of ``seq`` as bytes."""

    def seq_restore(self, seq: int, state: bytes) -> bool:
        """Load saved bytes into the empty ``seq``; False when the model refuses them."""


@dataclass(frozen=True, slots=True)
class KVWant:
    """What a waiting request asks of the cache."""

    owner: str  # user id: reuse never crosses owners except through the public prefix
    conversation_id: str | None
    prompt: Sequence[int]
    public_len: int  # leading prompt tokens any user may share
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Placement:
    """Where an admitted request runs: sequence ``seq``, whose first ``reused`` prompt
    tokens already hold KV (``source`` says from where: slot, host, public or none)."""

    seq: int
    reused: int
    source: str


@dataclass(frozen=True, slots=True)
class KVUsage:
    """Cell and host-RAM usage, for the engine's stats."""

    cells_total: int
    cells_used: int  # held by sequences that requests are running on
    cells_cached: int  # held only by idle sequences, kept for reuse
    host_bytes: int
    host_entries: int


@dataclass(frozen=True, slots=True)
class SlotState:
    """A read-only view of one sequence."""

    seq: int
    owner: str | None
    tokens: tuple[int, ...]
    public_len: int
    busy: bool


class KVPlacement:
    """Decides where prompts go and keeps slots, cells and host copies consistent.

    Not thread-safe: the engine calls it under its own lock.
    """

    def __init__(
        self,
        n_slots: int,
        n_cells: int,
        host_cache_bytes: int,
        *,
        min_shared_wait: int = MIN_SHARED_WAIT,
        clock: Callable[[], float] = time.monotonic,
        per_slot: bool = False,
    ) -> None:
        self._per_slot = per_slot
        self._slots = SlotTable(n_slots)
        self._cells = KVCells(n_cells)
        self._host = HostCache(host_cache_bytes)
        self._ops: KVOps | None = None
        self._min_shared_wait = min_shared_wait
        self._clock = clock

    def attach(self, ops: KVOps) -> None:
        """Work on ``ops``, a model whose cache is empty: every sequence starts empty."""
        self._ops = ops
        self._slots = SlotTable(len(self._slots.slots))
        self._cells = KVCells(self._cells.total)

    @property
    def total(self) -> int:
        return self._cells.total

    # --- admission

    def admit(self, want: KVWant, reserved: int) -> Placement | None:
        """Place ``want`` on a sequence, or None to ask again later.

        ``reserved``: cells the running requests may still add (the rest of their
        prompts and of their max_tokens); the new request must fit beside them.
        """
        plan = self._slots.plan(want.owner, want.prompt, want.public_len, self._host)
        if plan is None or self._prefix_in_progress(want, plan.reuse):
            return None
        # per slot, a sequence's cells are its own (the engine refuses what exceeds them)
        if not self._per_slot and (
            self._cells_needed(want, plan) > self._cells_available(plan) - reserved
        ):
            return None
        return self._place(want, plan)

    def _prefix_in_progress(self, want: KVWant, reuse: int) -> bool:
        """Is a running request computing a prefix ``want`` could share beyond ``reuse``?

        Then waiting a step or two beats computing the same tokens again:
        concurrent first turns share one persona prompt, and the personas of a
        panel share one conversation (the same user's prompts are shared whole).
        """
        wanted = want.prompt[: want.public_len]
        for slot in self._slots.busy():
            if slot.owner == want.owner:
                shared = min(common_prefix(slot.prompt, want.prompt), len(want.prompt) - 1)
            else:
                shared = common_prefix(slot.prompt[: slot.public_len], wanted)
            if shared - reuse >= self._min_shared_wait and len(slot.tokens) < shared:
                return True
        return False

    @staticmethod
    def _cells_needed(want: KVWant, plan: Plan) -> int:
        fresh = len(want.prompt) - plan.reuse + want.max_tokens
        return fresh + (plan.reuse if plan.source == "host" else 0)  # a restore needs cells

    def _cells_available(self, plan: Plan) -> int:
        """Cells not held by running sequences nor by what the plan keeps (idle
        sequences' cells count as free: they can be evicted)."""
        kept: dict[int, int] = {}
        if plan.source == "slot":
            kept[plan.slot] = plan.reuse
        elif plan.source == "public" and plan.donor is not None:
            kept[plan.donor] = plan.reuse
        busy = [s.seq_id for s in self._slots.busy()]
        return self._cells.total - self._cells.held_by([*busy, *kept], limits=kept)

    def _place(self, want: KVWant, plan: Plan) -> Placement:
        slot = self._slots.slots[plan.slot]
        reuse = plan.reuse
        if plan.source == "slot":  # the same user's sequence: drop only its diverging tail
            self._evict(slot, keep=reuse, save=False)
        elif plan.source == "public" and plan.donor == plan.slot:
            self._evict(slot, keep=reuse)
        else:
            # Take the planned host entry before evicting: saving the evicted sequence
            # may push that very entry out of the host cache (or replace it).
            saved = None
            if plan.source == "host" and plan.host_key is not None:
                saved = self._host.take(plan.host_key)
            self._evict(slot, keep=0)
            if plan.source == "public" and plan.donor is not None:
                self._share(plan.donor, slot, reuse)
            elif saved is not None:
                reuse = self._restore(slot, saved, reuse)
        slot.owner, slot.conversation_id = want.owner, want.conversation_id
        slot.public_len, slot.prompt, slot.busy = want.public_len, list(want.prompt), True
        return Placement(slot.seq_id, reuse, plan.source if reuse else "none")

    # --- the running sequences

    def extend(self, seq: int, tokens: Sequence[int]) -> None:
        """``seq`` decoded ``tokens`` (their KV is in the model now)."""
        self._cells.extend(seq, len(tokens))
        self._slots.slots[seq].tokens.extend(tokens)

    def release(self, seq: int) -> None:
        """The request on ``seq`` finished: the sequence stays, idle, as cache."""
        slot = self._slots.slots[seq]
        slot.busy, slot.prompt, slot.last_used = False, [], self._clock()

    def make_room(self, cells: int, protect: Collection[int] = ()) -> bool:
        """Evict idle sequences, least recently used first (saving them to host RAM),
        until ``cells`` are free; False when the idle ones do not free enough.
        Per slot, no sequence takes another's cells: nothing to evict."""
        while not self._per_slot and self._cells.free < cells:
            candidates = [s for s in self._slots.idle() if s.tokens and s.seq_id not in protect]
            if not candidates:
                return False
            self._evict(min(candidates, key=lambda s: s.last_used), keep=0)
        return True

    # --- forgetting

    def forget(self, owned: Callable[[str], bool]) -> None:
        """Clear the idle sequences whose owner ``owned`` accepts, without saving them."""
        for slot in self._slots.idle():
            if slot.owner is not None and owned(slot.owner):
                self._evict(slot, keep=0, save=False)

    def drop_saved(self, owned: Callable[[str], bool]) -> int:
        """Drop the host-RAM copies whose owner ``owned`` accepts; return how many."""
        return self._host.drop_owned(owned)

    # --- reading

    def usage(self) -> KVUsage:
        used = self._cells.held_by([s.seq_id for s in self._slots.busy()])
        return KVUsage(
            cells_total=self._cells.total,
            cells_used=used,
            cells_cached=self._cells.used - used,
            host_bytes=self._host.bytes,
            host_entries=len(self._host),
        )

    def slot(self, seq: int) -> SlotState:
        s = self._slots.slots[seq]
        return SlotState(s.seq_id, s.owner, tuple(s.tokens), s.public_len, s.busy)

    # --- the model operations, each applied with its accounting

    def _require_ops(self) -> KVOps:
        if self._ops is None:
            raise RuntimeError("KVPlacement used before a model was attached")
        return self._ops

    def _evict(self, slot: Slot, keep: int, save: bool = True) -> None:
        """Shrink ``slot`` to its first ``keep`` tokens, saving private KV that would be lost.

        ``save=False`` when the slot's own conversation goes on from ``keep``: what is
        dropped is a tail the new prompt no longer contains (a re-tokenized reply).
        """
        ops = self._require_ops()
        private = len(slot.tokens) > max(keep, slot.public_len)
        if save and slot.owner is not None and private:
            state = ops.seq_save(slot.seq_id)
            saved = SavedSequence(
                slot.owner, slot.conversation_id, tuple(slot.tokens), slot.public_len, state
            )
            self._host.put(saved)
        self._truncate(slot, keep)
        if keep == 0:
            slot.owner, slot.conversation_id, slot.public_len = None, None, 0

    def _truncate(self, slot: Slot, keep: int) -> None:
        self._require_ops().seq_truncate(slot.seq_id, keep)
        self._cells.truncate(slot.seq_id, keep)
        del slot.tokens[keep:]

    def _share(self, donor: int, slot: Slot, n: int) -> None:
        self._require_ops().seq_share_prefix(donor, slot.seq_id, n)
        self._cells.share_prefix(donor, slot.seq_id, n)
        slot.tokens = list(self._slots.slots[donor].tokens[:n])

    def _restore(self, slot: Slot, saved: SavedSequence, reuse: int) -> int:
        """Bring a saved sequence back into ``slot``; return how many tokens it gives."""
        if not self.make_room(len(saved.tokens), protect={slot.seq_id}):
            return 0
        if not self._require_ops().seq_restore(slot.seq_id, saved.state):
            log.warning("host cache restore failed", extra={"tokens": len(saved.tokens)})
            return 0
        self._cells.extend(slot.seq_id, len(saved.tokens))
        slot.tokens = list(saved.tokens)
        self._truncate(slot, reuse)
        return reuse
