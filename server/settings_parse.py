"""Parsers of setting values, and the small types they produce.

Each parser takes a raw value (a str from the environment, or a TOML value)
and returns the typed value, raising ``ValueError("expected ...")`` when it is
malformed; `server.settings` names the variable in the message it reports.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit


class Environment(enum.StrEnum):
    DEVELOPMENT = "development"
    PRODUCTION = "production"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """At most ``count`` requests per ``period_s`` seconds."""

    count: int
    period_s: int

    def __str__(self) -> str:
        unit = {1: "second", 60: "minute", 3600: "hour", 86400: "day"}.get(self.period_s)
        return f"{self.count}/{unit}" if unit else f"{self.count}/{self.period_s}s"


# --- parsers: each takes a raw value (str from the environment, or a TOML value)
# and returns the typed value, raising ValueError("expected ...") when malformed.


def string(raw: object) -> str:
    """A string, stripped."""
    if not isinstance(raw, str):
        raise ValueError("expected a string")
    return raw.strip()


def optional_text(raw: object) -> str | None:
    """A string, stripped; None when empty."""
    return string(raw) or None


def integer(low: int, high: int) -> Callable[[object], int]:
    """A parser of integers from ``low`` to ``high``."""

    def parse(raw: object) -> int:
        try:
            value = int(raw) if isinstance(raw, (int, str)) and not isinstance(raw, bool) else None
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise ValueError(f"expected an integer from {low} to {high}")
        return value

    return parse


def zero_or(inner: Callable[[object], int]) -> Callable[[object], int]:
    """A parser of 0 ("decide for me") or whatever ``inner`` accepts."""

    def parse(raw: object) -> int:
        if isinstance(raw, (int, str)) and not isinstance(raw, bool) and str(raw).strip() == "0":
            return 0
        try:
            return inner(raw)
        except ValueError as exc:
            raise ValueError(f"expected 0 or {str(exc).removeprefix('expected ')}") from None

    return parse


def seconds(raw: object) -> float:
    """A positive number of seconds."""
    try:
        value = float(raw) if isinstance(raw, (int, float, str)) else -1.0
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError("expected a positive number of seconds")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def fraction(raw: object) -> float:
    """A number in (0, 1]."""
    try:
        value = float(raw) if isinstance(raw, (int, float, str)) else -1.0
    except ValueError:
        value = -1.0
    if not 0 < value <= 1:
        raise ValueError("expected a number in (0, 1]")
    return value


def boolean(raw: object) -> bool:
    """true/false, yes/no, on/off, 1/0 (empty: false)."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ValueError("expected true or false")


def optional_boolean(raw: object) -> bool | None:
    """A boolean; None when empty (the setting decides by other settings)."""
    return None if str(raw).strip() == "" else boolean(raw)


def choice(*options: str) -> Callable[[object], str]:
    """A parser of one of ``options`` (case-insensitive)."""

    def parse(raw: object) -> str:
        text = str(raw).strip().lower()
        if text not in options:
            raise ValueError("expected one of " + ", ".join(options))
        return text

    return parse


def environment(raw: object) -> Environment:
    """development or production."""
    return Environment(choice(*(e.value for e in Environment))(raw))


def url(*schemes: str) -> Callable[[object], str | None]:
    """A parser of URLs with one of ``schemes``; None when empty."""

    def parse(raw: object) -> str | None:
        text = string(raw)
        if not text:
            return None
        if urlsplit(text).scheme not in schemes:
            raise ValueError(
                "expected a URL starting with " + " or ".join(f"{s}://" for s in schemes)
            )
        return text

    return parse


def hosts(raw: object) -> tuple[str, ...]:
    """Host names (with optional ports) or '*', comma-separated or a TOML list."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    hosts = tuple(str(item).strip().lower() for item in items if str(item).strip())
    for host in hosts:
        if not re.fullmatch(r"\*|(\*\.)?[a-z0-9.\-]+(:\d+)?|\[[0-9a-f:]+\](:\d+)?", host):
            raise ValueError("expected '*' or comma-separated host names like chat.example.com")
    return hosts


def names(raw: object) -> tuple[str, ...]:
    """Comma-separated names, or a TOML list."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    return tuple(str(item).strip() for item in items if str(item).strip())


def networks(raw: object) -> tuple[str, ...]:
    """Addresses or networks (CIDR) or '*', comma-separated or a TOML list."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    networks = tuple(str(item).strip() for item in items if str(item).strip())
    for network in networks:
        if network != "*":
            try:
                ipaddress.ip_network(network, strict=False)
            except ValueError:
                raise ValueError(
                    "expected '*' or comma-separated addresses or networks like 10.0.0.0/8"
                ) from None
    return networks


def origins(raw: object) -> tuple[str, ...]:
    """CORS origins (scheme://host[:port]) or '*'."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    origins = tuple(str(item).strip().rstrip("/") for item in items if str(item).strip())
    for origin in origins:
        if origin != "*" and not re.fullmatch(r"https?://[^/\s]+", origin):
            raise ValueError("expected '*' or comma-separated origins like https://example.com")
    return origins


_PERIODS = {"s": 1, "second": 1, "m": 60, "minute": 60, "h": 3600, "hour": 3600, "day": 86400}


def urls(raw: object) -> tuple[str, ...]:
    """http(s) base URLs, without a trailing slash."""
    items = raw if isinstance(raw, list) else str(raw).split(",")
    urls = tuple(str(item).strip().rstrip("/") for item in items if str(item).strip())
    if any(urlsplit(url).scheme not in ("http", "https") for url in urls):
        raise ValueError("expected comma-separated http(s) base URLs like http://gpu1:8000/v1")
    return urls


def rate(raw: object) -> RateLimit:
    """A rate like 60/minute."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*([a-z]+)\s*", str(raw).lower())
    if not match or match[2] not in _PERIODS or int(match[1]) < 1:
        raise ValueError("expected a rate like 60/minute (second, minute, hour or day)")
    return RateLimit(int(match[1]), _PERIODS[match[2]])


def route_rates(raw: object) -> dict[str, RateLimit]:
    """group=rate pairs (or a TOML table of them)."""
    items = raw.items() if isinstance(raw, dict) else _pairs(str(raw))
    rates = {}
    for group, given in items:
        if not re.fullmatch(r"[a-z0-9_]+", str(group)):
            raise ValueError("expected group=rate pairs like turn=30/minute,auth=10/minute")
        rates[str(group)] = rate(given)
    return rates


def _pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        group, sep, rate = item.partition("=")
        if not sep:
            raise ValueError("expected group=rate pairs like turn=30/minute,auth=10/minute")
        pairs.append((group.strip(), rate.strip()))
    return pairs


def directory(raw: object) -> Path:
    """A directory path, made absolute."""
    text = string(raw)
    if not text:
        raise ValueError("expected a directory path")
    return Path(text).expanduser().resolve()


def optional_model(raw: object) -> Path | None:
    """A model file (GGUF) or a Hugging Face model directory (vLLM)."""
    text = string(raw)
    if not text:
        return None
    path = Path(text).expanduser().resolve()
    if not (path.is_file() or (path / "config.json").is_file()):
        raise ValueError("expected a model file or a model directory with a config.json")
    return path


def judge(raw: object) -> str:
    """``off``, ``chat`` (the default chat model) or a catalog model's id, which is
    checked against the catalog when the models open (`server.models_setup`)."""
    text = string(raw)
    keyword = text.lower() or "off"
    return keyword if keyword in ("off", "chat") else text


def chat_or_model(raw: object) -> str:
    """``chat`` (the default chat model) or a catalog model's id, which is checked
    against the catalog when the models open (`server.models_setup`)."""
    text = string(raw)
    return "chat" if text.lower() in ("", "chat") else text


def optional_file(raw: object) -> Path | None:
    """An existing model file, made absolute; None when empty."""
    text = string(raw)
    if not text:
        return None
    path = Path(text).expanduser().resolve()
    if not path.is_file():
        raise ValueError("expected the path of an existing model file")
    return path
