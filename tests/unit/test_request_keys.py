"""The keys a request carries to upstreams: per-user cache salt, per-conversation session."""

from __future__ import annotations

from inference.types import ChatMessage, GenerationRequest


def request(user: str, conversation: str | None) -> GenerationRequest:
    return GenerationRequest(
        request_id="r",
        user_id=user,
        conversation_id=conversation,
        messages=[ChatMessage("user", "hi")],
    )


def test_the_cache_salt_is_per_user_and_hides_the_user_id() -> None:
    alice, alice_later, bob = request("alice", "c1"), request("alice", "c2"), request("bob", "c1")
    assert alice.cache_salt() == alice_later.cache_salt()  # all of a user's requests
    assert alice.cache_salt() != bob.cache_salt()
    assert "alice" not in alice.cache_salt()


def test_the_session_key_is_per_conversation() -> None:
    first, again = request("alice", "c1"), request("alice", "c1")
    assert first.session_key() == again.session_key()
    assert first.session_key() != request("alice", "c2").session_key()
    # the same conversation id under another user is another session
    assert first.session_key() != request("bob", "c1").session_key()
    assert first.session_key() != first.cache_salt()
