from __future__ import annotations

from inference.text import TextStream


def feed_all(stream: TextStream, pieces: list[bytes]) -> list[str]:
    return [stream.feed(p) for p in pieces]


def test_multibyte_characters_are_never_split() -> None:
    data = "héllo 👋 你好".encode()
    stream = TextStream()
    out = [stream.feed(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) == "héllo 👋 你好"
    assert all(chunk.encode().decode() == chunk for chunk in out)
    assert "\ufffd" not in "".join(out)


def test_nul_characters_are_dropped() -> None:
    # a byte-fallback token for 0x00: PostgreSQL would refuse the stored reply
    stream = TextStream(stop=["<END>"])
    out = feed_all(stream, [b"Hi", b"\x00", b" there\x00!", b"<EN", b"\x00D>"])
    assert "".join(out) + stream.flush() == "Hi there!"
    assert stream.stopped and stream.text == "Hi there!"


def test_stop_string_is_cut_exactly_even_across_pieces() -> None:
    stream = TextStream(stop=["<END>"])
    out = feed_all(stream, [b"Hello <E", b"N", b"D> never sent"])
    assert "".join(out) == "Hello "
    assert stream.stopped
    assert stream.feed(b"more") == ""
    assert stream.text == "Hello "


def test_held_back_text_is_released_when_it_is_not_a_stop() -> None:
    stream = TextStream(stop=["###"])
    assert stream.feed(b"a #") == "a "
    assert stream.feed(b"# b") == "## b"
    assert stream.flush() == ""
    assert not stream.stopped


def test_flush_sends_a_trailing_partial_stop_as_text() -> None:
    stream = TextStream(stop=["STOP"])
    assert stream.feed(b"ok ST") == "ok "
    assert stream.flush() == "ST"


def test_earliest_of_several_stops_wins() -> None:
    stream = TextStream(stop=["b", "a"])
    assert stream.feed(b"xxab") == "xx"


def test_invalid_bytes_become_replacement_characters() -> None:
    stream = TextStream()
    assert stream.feed(b"ok\xff") == "ok\ufffd"
