"""KV placement without a model: a simulated cache stands in for llama.cpp's.

`SimCache` implements `KVOps` the way llama.cpp's unified cache behaves (cells
per token, prefix copies that share cells, save and restore of a sequence's
bytes) and checks, on every call, what the placement must never do: touch a
sequence a running request uses, share into a sequence that is not empty,
restore one user's saved KV for another. After every step `Harness.check`
compares what the placement believes with what the simulated cache holds, and
that no sequence holds another user's private cells.
"""

from __future__ import annotations

import itertools
import random

import pytest

from inference.kv_placement import KVPlacement, KVWant, Placement

PERSONA = list(range(1000, 1040))  # 40 public tokens


class SimCache:
    """A unified KV cache: each sequence holds (token, cell) pairs; copied prefixes share cells."""

    def __init__(self) -> None:
        self.seqs: dict[int, list[tuple[int, int]]] = {}
        self.saved: dict[bytes, tuple[str, tuple[int, ...]]] = {}  # state -> (owner, tokens)
        self.running: dict[int, str] = {}  # sequence -> owner, kept by the harness
        self.owners: dict[int, str] = {}  # sequence -> who last ran on it
        self.public: dict[int, int] = {}  # sequence -> its request's public prefix length
        self.placing: tuple[str, int] | None = None  # the request being placed: owner, public
        self.origin: dict[int, tuple[str, bool]] = {}  # cell -> (computed for, public)
        self.calls: list[tuple[str, int]] = []
        self.refuse_restore = False
        self._cells = itertools.count()
        self._states = itertools.count()

    # --- KVOps

    def seq_truncate(self, seq: int, keep: int) -> None:
        self._untouchable(seq, "truncate")
        del self.seqs.setdefault(seq, [])[keep:]

    def seq_share_prefix(self, src: int, dst: int, n: int) -> None:
        self._untouchable(dst, "share")
        assert not self.seqs.get(dst), f"sharing into non-empty sequence {dst}"
        held = self.seqs.get(src, [])
        assert len(held) >= n, f"sequence {src} holds {len(held)} < {n}"
        self.seqs[dst] = list(held[:n])

    def seq_save(self, seq: int) -> bytes:
        self._untouchable(seq, "save")
        tokens = self.tokens(seq)
        owner = self.owners[seq]
        state = f"{next(self._states)}:".encode().ljust(10 * len(tokens), b".")
        self.saved[state] = (owner, tokens)
        return state

    def seq_restore(self, seq: int, state: bytes) -> bool:
        self._untouchable(seq, "restore")
        assert not self.seqs.get(seq), f"restoring into non-empty sequence {seq}"
        owner, tokens = self.saved[state]
        assert self.placing is not None
        placing, public = self.placing
        assert owner == placing, f"{owner}'s KV restored for {placing}"
        if self.refuse_restore:
            return False
        # its leading tokens are the new request's prompt: public as far as that says
        self._append(seq, list(tokens), owner, public)
        return True

    # --- what the engine's decode does

    def decode(self, seq: int, tokens: list[int]) -> None:
        self._append(seq, tokens, self.running[seq], self.public[seq])

    def _append(self, seq: int, tokens: list[int], owner: str, public: int) -> None:
        held = self.seqs.setdefault(seq, [])
        for token in tokens:
            cell = next(self._cells)
            self.origin[cell] = (owner, len(held) < public)
            held.append((token, cell))

    def tokens(self, seq: int) -> tuple[int, ...]:
        return tuple(t for t, _ in self.seqs.get(seq, []))

    def cells_used(self) -> int:
        return len({cell for held in self.seqs.values() for _, cell in held})

    def _untouchable(self, seq: int, what: str) -> None:
        self.calls.append((what, seq))
        assert seq not in self.running, f"{what} of sequence {seq}, which a request runs on"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


class Harness:
    """Drives a `KVPlacement` the way the engine does, over a `SimCache`."""

    def __init__(
        self,
        n_slots: int = 4,
        n_cells: int = 1000,
        host_bytes: int = 1 << 20,
        *,
        per_slot: bool = False,
    ) -> None:
        self.sim = SimCache()
        self.kv = KVPlacement(n_slots, n_cells, host_bytes, clock=Clock(), per_slot=per_slot)
        self.kv.attach(self.sim)
        self.n_slots = n_slots

    def admit(
        self, owner: str, prompt: list[int], public: int = 0, max_tokens: int = 4, reserved: int = 0
    ) -> Placement | None:
        self.sim.placing = (owner, public)
        want = KVWant(owner, f"{owner}-chat", prompt, public, max_tokens)
        placed = self.kv.admit(want, reserved)
        self.sim.placing = None
        if placed is not None:
            assert self.sim.tokens(placed.seq) == tuple(prompt[: placed.reused])
            self.sim.running[placed.seq] = self.sim.owners[placed.seq] = owner
            self.sim.public[placed.seq] = public
        self.check()
        return placed

    def decode(self, seq: int, tokens: list[int]) -> None:
        """As the engine's step: make room for the batch, decode it, account for it."""
        assert seq in self.sim.running
        assert self.kv.make_room(len(tokens)), "admitted, yet no room to decode"
        self.check()
        self.sim.decode(seq, tokens)
        self.kv.extend(seq, tokens)
        self.check()

    def finish(self, seq: int) -> None:
        del self.sim.running[seq]
        self.kv.release(seq)
        self.check()

    def turn(self, owner: str, prompt: list[int], reply: list[int], public: int = 0) -> Placement:
        """A whole request: admit, compute the rest of the prompt, generate, finish."""
        placed = self.admit(owner, prompt, public)
        assert placed is not None
        self.decode(placed.seq, prompt[placed.reused :] + reply)
        self.finish(placed.seq)
        return placed

    def check(self) -> None:
        """The placement's view equals the simulated cache's contents."""
        usage = self.kv.usage()
        assert usage.cells_used + usage.cells_cached == self.sim.cells_used()
        for seq in range(self.n_slots):
            state = self.kv.slot(seq)
            assert state.tokens == self.sim.tokens(seq), f"sequence {seq} disagrees"
            assert state.busy == (seq in self.sim.running)
            if state.owner is None:
                assert not state.tokens
            for _, cell in self.sim.seqs.get(seq, []):
                computed_for, public = self.sim.origin[cell]
                assert public or computed_for == state.owner, f"{computed_for}'s cell in {seq}"


def test_next_turn_continues_the_users_own_sequence() -> None:
    h = Harness()
    first = h.turn("alice", [*PERSONA, 1, 2, 3], [4, 5], public=40)
    second = h.admit("alice", [*PERSONA, 1, 2, 3, 4, 5, 6, 7], public=40)
    assert second is not None
    assert (second.seq, second.source, second.reused) == (first.seq, "slot", 45)
    assert ("save", first.seq) not in h.sim.calls  # its own continuation: nothing to save


def test_a_diverging_tail_is_truncated_not_saved() -> None:
    h = Harness()
    first = h.turn("alice", [1, 2, 3, 4], [5, 6, 7])
    again = h.admit("alice", [1, 2, 3, 4, 9, 9])  # the reply was re-tokenized differently
    assert again is not None
    assert (again.seq, again.reused) == (first.seq, 4)
    assert h.kv.usage().host_entries == 0


def test_another_request_of_the_same_user_leaves_their_conversation_alone() -> None:
    """The content judge or a memory job asks under the user's id; sharing the chat
    template's first tokens is no reason to cut the conversation down to them."""
    h = Harness(n_slots=2)
    conversation = h.turn("alice", [7, 7, *range(100, 140)], list(range(200, 210)))
    held = h.sim.tokens(conversation.seq)
    job = h.admit("alice", [7, 7, *range(300, 320)])
    assert job is not None and job.seq != conversation.seq
    assert h.sim.tokens(conversation.seq) == held
    h.finish(job.seq)
    next_turn = h.admit("alice", [*held, 9, 9])
    assert next_turn is not None
    assert (next_turn.seq, next_turn.source, next_turn.reused) == (conversation.seq, "slot", 52)


def test_public_prefix_is_shared_and_its_cells_count_once() -> None:
    h = Harness()
    alice = h.turn("alice", [*PERSONA, 1, 2], [3], public=40)
    bob = h.admit("bob", [*PERSONA, 7, 8], public=40)
    assert bob is not None
    assert (bob.source, bob.reused) == ("public", 40)
    assert bob.seq != alice.seq
    assert ("share", bob.seq) in h.sim.calls
    assert h.kv.usage().cells_used + h.kv.usage().cells_cached == 43  # persona once, alice's 3


def test_private_tokens_are_never_shared_across_users() -> None:
    h = Harness()
    history = [*PERSONA, 1, 2, 3, 4, 5]
    h.turn("alice", history, [6], public=40)
    # mallory sends alice's very tokens and claims them all public: only the persona is shared
    mallory = h.admit("mallory", [*history, 6, 7], public=len(history) + 2)
    assert mallory is not None
    assert mallory.reused == 40
    assert h.sim.tokens(mallory.seq) == tuple(PERSONA)


def test_a_saved_sequence_is_restored_for_its_owner_only() -> None:
    h = Harness(n_slots=1)
    history = [*PERSONA, 1, 2, 3, 4, 5]
    h.turn("alice", history, [6], public=40)
    h.turn("bob", [*PERSONA, 9], [9], public=40)  # the only slot: alice's is saved
    assert h.kv.usage().host_entries == 1
    mallory = h.admit("mallory", [*history, 6, 7], public=40)
    assert mallory is not None
    assert mallory.source != "host"
    h.decode(mallory.seq, [6, 7])
    h.finish(mallory.seq)
    alice = h.admit("alice", [*history, 6, 7], public=40)
    assert alice is not None
    assert (alice.source, alice.reused) == ("host", len(history) + 1)


def test_a_refused_restore_computes_the_prompt_afresh() -> None:
    h = Harness(n_slots=1)
    h.turn("alice", [1, 2, 3, 4], [5])
    h.turn("bob", [8, 9], [9])
    h.sim.refuse_restore = True
    alice = h.admit("alice", [1, 2, 3, 4, 5, 6])
    assert alice is not None
    assert (alice.source, alice.reused) == ("none", 0)


def test_making_room_evicts_the_least_recently_used_idle_sequence_and_saves_it() -> None:
    h = Harness(n_slots=3, n_cells=32)
    seqs = {user: h.turn(user, [ord(user[0])] * 8, [1, 2]).seq for user in ("ann", "bea", "cid")}
    h.turn("ann", [ord("a")] * 8 + [1, 2, 3], [4])  # ann's next turn: bea's is the oldest now
    assert h.kv.usage().cells_cached == 32
    assert h.kv.make_room(5)
    assert h.sim.tokens(seqs["bea"]) == ()
    assert h.sim.tokens(seqs["ann"]) != ()
    assert h.kv.usage().host_entries == 1
    assert [owner for owner, _ in h.sim.saved.values()] == ["bea"]
    assert h.kv.make_room(15)
    assert h.sim.tokens(seqs["cid"]) == ()
    assert h.sim.tokens(seqs["ann"]) != ()


def test_a_running_sequence_is_never_evicted() -> None:
    h = Harness(n_slots=2, n_cells=40)
    idle = h.turn("ann", [1] * 10, [2])
    running = h.admit("bea", [3] * 10)
    assert running is not None
    h.decode(running.seq, [3] * 10)
    assert not h.kv.make_room(40)  # only the idle 11 cells could go
    assert h.sim.tokens(idle.seq) == ()
    assert len(h.sim.tokens(running.seq)) == 10


def test_every_slot_busy_means_wait() -> None:
    h = Harness(n_slots=1)
    assert h.admit("ann", [1, 2, 3]) is not None
    assert h.admit("bea", [4, 5, 6]) is None


def test_admission_leaves_room_for_what_running_requests_still_add() -> None:
    h = Harness(n_slots=2, n_cells=100)
    prompt = list(range(50))
    assert h.admit("ann", prompt, max_tokens=10, reserved=41) is None  # 60 > 100 - 41
    assert h.admit("ann", prompt, max_tokens=10, reserved=40) is not None


def test_idle_cache_counts_as_free_but_kept_prefix_does_not() -> None:
    h = Harness(n_slots=2, n_cells=100)
    h.turn("ann", list(range(60)), [1])  # 61 idle cells
    # bea needs 50 + 10: only evicting ann's cache makes room, and that is allowed
    assert h.admit("bea", list(range(500, 550)), max_tokens=10) is not None
    h2 = Harness(n_slots=2, n_cells=100)
    h2.turn("ann", list(range(60)), [1])
    # ann's next turn keeps 61 cells and needs 29 + 11 more: 101 > 100
    assert h2.admit("ann", [*range(60), 1, *range(100, 129)], max_tokens=11) is None


def test_per_slot_an_idle_sequence_stays_until_its_slot_is_wanted() -> None:
    """Per slot, each sequence has n_cells/n_slots cells of its own (the engine refuses a
    request that needs more): idle conversations never stand in a running one's way."""
    h = Harness(n_slots=2, n_cells=40, per_slot=True)
    idle = h.turn("ann", [1] * 15, [2])
    running = h.admit("bea", [3] * 15, max_tokens=5, reserved=0)
    assert running is not None
    assert h.kv.make_room(40)  # nothing to free: every sequence's cells are its own
    h.decode(running.seq, [3] * 15)
    assert len(h.sim.tokens(idle.seq)) == 16  # ann's conversation is still there
    h.finish(running.seq)
    assert h.admit("cid", [4] * 15) is not None  # a slot is wanted: the oldest idle one goes
    assert h.sim.tokens(idle.seq) == ()
    assert [owner for owner, _ in h.sim.saved.values()] == ["ann"]


def test_waits_while_another_request_computes_a_shareable_prefix() -> None:
    h = Harness()
    persona = list(range(2000, 2064))  # 64 public tokens: worth waiting for
    ann = h.admit("ann", [*persona, 1], public=64)
    assert ann is not None
    assert h.admit("bea", [*persona, 2], public=64) is None  # ann is computing it
    h.decode(ann.seq, [*persona, 1])
    bea = h.admit("bea", [*persona, 2], public=64)
    assert bea is not None
    assert (bea.source, bea.reused) == ("public", 64)


def test_forget_clears_idle_sequences_unsaved_and_leaves_running_ones() -> None:
    h = Harness(n_slots=3)
    idle = h.turn("ann", [1, 2, 3], [4])
    running = h.admit("ann", [7, 8, 9])
    assert running is not None
    other = h.turn("bea", [5, 6], [7])
    h.kv.forget(lambda owner: owner == "ann")
    h.check()
    assert h.sim.tokens(idle.seq) == ()
    assert h.sim.tokens(other.seq) != ()
    assert h.kv.slot(running.seq).busy
    assert not h.sim.saved


def test_drop_saved_removes_only_that_users_copies() -> None:
    h = Harness(n_slots=1)
    h.turn("ann", [1, 2, 3], [4])
    h.turn("bea", [5, 6, 7], [8])  # ann saved
    h.turn("ann", [9, 9, 9], [9])  # bea saved
    assert h.kv.drop_saved(lambda owner: owner == "ann") == 1
    assert h.kv.usage().host_entries == 1
    bea = h.admit("bea", [5, 6, 7, 8, 1])
    assert bea is not None
    assert bea.source == "host"


@pytest.mark.parametrize("seed", range(20))
def test_random_traffic_keeps_the_books_straight(seed: int) -> None:
    """Many users, little room: every step, the invariants `Harness` checks hold."""
    rng = random.Random(seed)
    h = Harness(n_slots=3, n_cells=200, host_bytes=2000)
    histories: dict[str, list[int]] = {}
    for _ in range(60):
        if h.sim.running and rng.random() < 0.4:
            seq = rng.choice(sorted(h.sim.running))
            h.decode(seq, [rng.randrange(50)])
            h.finish(seq)
            continue
        user = rng.choice(["ann", "bea", "cid", "dan"])
        base = histories.get(user, PERSONA) if rng.random() < 0.8 else PERSONA
        prompt = [*base, *(rng.randrange(50) for _ in range(rng.randrange(1, 12)))]
        reserved = 4 * len(h.sim.running)  # their prompts are computed; max_tokens is 4
        placed = h.admit(user, prompt, public=40, reserved=reserved)
        if placed is not None:
            h.decode(placed.seq, prompt[placed.reused :])
            histories[user] = prompt
