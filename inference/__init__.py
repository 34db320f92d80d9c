"""Inference tier: engines (llama.cpp, vLLM, remote), the scheduler, classifiers, embedder.

The server depends on the `Engine` protocol defined here, never on vllm or
llama_cpp directly.
"""
