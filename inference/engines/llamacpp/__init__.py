"""llama.cpp engine (llama-cpp-python): the CPU default, also CUDA builds."""

from inference.engines.llamacpp.engine import LlamaCppConfig, LlamaCppEngine

__all__ = ["LlamaCppConfig", "LlamaCppEngine"]
