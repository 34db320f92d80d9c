"""A request's prompt as token ids, and how many of them are public (shareable across users).

Runs off the event loop and off the decode thread: llama.cpp's tokenizer only
reads the vocabulary and releases the GIL.
"""

from __future__ import annotations

from inference.engines.llamacpp.model import LlamaModel
from inference.errors import InvalidRequest
from inference.kv import common_prefix
from inference.types import GenerationRequest


def prompt_tokens(model: LlamaModel, request: GenerationRequest) -> list[int]:
    """The request's prompt: given token ids, raw text, or chat messages templated."""
    if request.prompt_tokens:
        tokens = list(request.prompt_tokens)
        if any(not 0 <= t < model.n_vocab for t in tokens):
            raise InvalidRequest(f"prompt token ids must be in [0, {model.n_vocab})")
        return tokens
    if request.prompt:
        return model.tokenize(request.prompt, add_bos=model.add_bos)
    text = model.render_chat(request.messages, generation_prompt=True)
    return model.tokenize(text, add_bos=model.add_bos)


def prompt_with_public_len(model: LlamaModel, request: GenerationRequest) -> tuple[list[int], int]:
    """The prompt's tokens and the length of its public prefix.

    For chat messages the public prefix is the templated first
    ``public_prefix_messages`` (the persona), compared token by token with the
    whole prompt: a template may tokenize a boundary differently.
    """
    tokens = prompt_tokens(model, request)
    if not request.messages:
        return tokens, min(request.public_prefix_tokens, len(tokens))
    if not request.public_prefix_messages:
        return tokens, 0
    head = model.render_chat(
        request.messages[: request.public_prefix_messages], generation_prompt=False
    )
    return tokens, common_prefix(model.tokenize(head, add_bos=model.add_bos), tokens)
