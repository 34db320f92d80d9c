from __future__ import annotations

import pytest

from inference.kv import HostCache, KVCells, SavedSequence, SlotTable, common_prefix

PERSONA = list(range(100, 140))  # 40 public tokens


def test_common_prefix() -> None:
    assert common_prefix([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix([1, 2], [1, 2, 3]) == 2
    assert common_prefix([], [1]) == 0


def test_shared_cells_count_once_and_free_when_last_holder_goes() -> None:
    cells = KVCells(100)
    cells.extend(0, 40)
    cells.share_prefix(0, 1, 40)
    cells.extend(1, 10)
    assert cells.used == 50
    cells.clear(0)
    assert cells.used == 50  # sequence 1 still holds the shared 40
    cells.truncate(1, 20)
    assert cells.used == 20
    cells.clear(1)
    assert cells.free == 100


def test_cells_cannot_be_overdrawn() -> None:
    cells = KVCells(10)
    cells.extend(0, 8)
    with pytest.raises(ValueError, match="2 free"):
        cells.extend(1, 3)


def test_held_by_counts_distinct_cells_within_limits() -> None:
    cells = KVCells(100)
    cells.extend(0, 30)
    cells.share_prefix(0, 1, 20)
    cells.extend(1, 5)
    assert cells.held_by([0, 1]) == 35
    assert cells.held_by([1], limits={1: 10}) == 10


def occupy(table: SlotTable, seq: int, owner: str, tokens: list[int], public: int = 0) -> None:
    slot = table.slots[seq]
    slot.owner, slot.tokens, slot.public_len = owner, list(tokens), public


def test_next_turn_reuses_the_same_users_slot() -> None:
    table = SlotTable(4)
    first_turn = [*PERSONA, 1, 2, 3, 4]
    occupy(table, 2, "alice", [*first_turn, 5, 6], public=40)
    plan = table.plan("alice", [*first_turn, 5, 6, 7, 8], public_len=40)
    assert plan is not None
    assert (plan.slot, plan.source, plan.reuse) == (2, "slot", len(first_turn) + 2)


def test_another_user_gets_only_the_public_prefix() -> None:
    table = SlotTable(4)
    occupy(table, 0, "alice", [*PERSONA, 1, 2, 3], public=40)
    plan = table.plan("mallory", [*PERSONA, 1, 2, 3, 9], public_len=40)
    assert plan is not None
    assert (plan.source, plan.reuse, plan.donor) == ("public", 40, 0)
    assert plan.slot != 0  # alice's slot is left alone while an empty one exists


def test_a_users_new_conversation_copies_the_prefix_of_their_idle_one() -> None:
    """On /v1 nothing is public; a user's second conversation with the same system
    prompt still starts from the first one's cells, copied, and leaves it whole.
    Nobody else gets them."""
    table = SlotTable(4)
    system = list(range(500, 560))
    occupy(table, 0, "alice", [*system, 1, 2, 3, 4, 5, 6, 7, 8, *range(60)])
    plan = table.plan("alice", [*system, 9, 9], public_len=0)
    assert plan is not None
    assert (plan.source, plan.reuse, plan.donor) == ("public", len(system), 0)
    assert plan.slot != 0  # an empty slot takes it; alice's conversation stays
    other = table.plan("mallory", [*system, 9, 9], public_len=0)
    assert other is not None and (other.source, other.reuse) == ("none", 0)


def test_private_text_is_never_shared_even_if_marked_public_by_its_reader() -> None:
    table = SlotTable(2)
    occupy(table, 0, "alice", [*PERSONA, 1, 2, 3], public=40)
    # mallory claims a longer public prefix; only alice's public 40 can be shared
    plan = table.plan("mallory", [*PERSONA, 1, 2, 3, 9], public_len=44)
    assert plan is not None
    assert plan.reuse == 40


def test_at_least_one_prompt_token_is_left_to_compute() -> None:
    table = SlotTable(2)
    occupy(table, 0, "alice", [1, 2, 3, 4])
    plan = table.plan("alice", [1, 2, 3, 4], public_len=0)
    assert plan is not None
    assert plan.reuse == 3


def test_host_copy_is_restored_when_it_beats_the_slots() -> None:
    table = SlotTable(2)
    host = HostCache(1 << 20)
    history = [*PERSONA, 1, 2, 3, 4, 5, 6]
    host.put(SavedSequence("alice", "c1", tuple(history), 40, b"x" * 100))
    occupy(table, 0, "bob", [*PERSONA, 7], public=40)
    plan = table.plan("alice", [*history, 7], public_len=40, host=host)
    assert plan is not None
    assert (plan.source, plan.reuse) == ("host", len(history))
    assert host.best("bob", history) is None  # another user's copy is invisible


def test_busy_slots_are_never_planned_and_full_table_says_none() -> None:
    table = SlotTable(1)
    occupy(table, 0, "alice", [1, 2, 3])
    table.slots[0].busy = True
    assert table.plan("alice", [1, 2, 3, 4], public_len=0) is None


def test_least_recently_used_idle_slot_is_the_victim() -> None:
    table = SlotTable(3)
    for seq, when in ((0, 5.0), (1, 1.0), (2, 3.0)):
        occupy(table, seq, f"user{seq}", [seq, seq])
        table.slots[seq].last_used = when
    plan = table.plan("newcomer", [9, 9, 9], public_len=0)
    assert plan is not None
    assert (plan.slot, plan.source) == (1, "none")


def test_host_cache_is_bounded_and_drops_oldest() -> None:
    host = HostCache(250)
    for i in range(3):
        assert host.put(SavedSequence("u", f"c{i}", (i, i), 0, b"x" * 100))
    assert len(host) == 2
    assert host.bytes == 200
    assert host.best("u", [0, 0]) is None  # the oldest went
    assert not host.put(SavedSequence("u", "big", (1,), 0, b"x" * 300))


def test_host_cache_replaces_an_older_copy_of_the_same_conversation() -> None:
    host = HostCache(10_000)
    host.put(SavedSequence("u", "c", (1, 2), 0, b"x" * 10))
    host.put(SavedSequence("u", "c", (1, 2, 3, 4), 0, b"x" * 20))
    assert len(host) == 1
    found = host.best("u", [1, 2, 3, 4, 5])
    assert found is not None
    assert host.take(found[0]).tokens == (1, 2, 3, 4)
    assert host.bytes == 0
