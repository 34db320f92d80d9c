"""The OpenAI-compatible API under /v1: chat and text completions, embeddings, models."""
