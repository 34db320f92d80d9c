"""Personas: a prompt, sampling defaults and a model choice each.

Built-ins live in `server/personas.toml`; an operator's
``<data dir>/personas.toml`` adds entries or replaces built-ins with the same
id. Route personas (adults-only, crisis, refusal) are not selectable by users:
routing chooses them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

import msgspec

BUILTIN_FILE = Path(__file__).with_name("personas.toml")


class PersonaError(Exception):
    """A persona file is invalid."""


@dataclass(frozen=True, slots=True)
class Persona:
    id: str
    name: str
    description: str
    prompt: str
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 256
    model: str = ""  # empty: the default chat model
    selectable: bool = True


class PersonaCard(msgspec.Struct):
    """What users see of a persona (not its prompt)."""

    id: str
    name: str
    description: str


def load_personas(data_dir: Path) -> dict[str, Persona]:
    personas = _read(BUILTIN_FILE)
    override = data_dir / "personas.toml"
    if override.exists():
        personas.update(_read(override))
    return personas


def cards(personas: dict[str, Persona]) -> list[PersonaCard]:
    return [PersonaCard(p.id, p.name, p.description) for p in personas.values() if p.selectable]


_FIELDS = {"name", "description", "prompt", "temperature", "top_p", "max_tokens", "model"}


def _read(path: Path) -> dict[str, Persona]:
    try:
        tables = tomllib.loads(path.read_text(encoding="utf-8")).get("personas", {})
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PersonaError(f"{path}: {exc}") from exc
    found = {}
    for persona_id, table in tables.items():
        unknown = set(table) - _FIELDS - {"selectable"}
        missing = {"name", "description", "prompt"} - set(table)
        if unknown or missing:
            where = f"{path}: personas.{persona_id}"
            raise PersonaError(f"{where}: unknown {sorted(unknown)}, missing {sorted(missing)}")
        found[persona_id] = Persona(id=persona_id, **table)
    return found
