"""The sentence-embedding model's transformer run by ONNX Runtime instead of torch.

Why: on a small CPU the embedding sits on the path of every chat turn (the
emotion and content classifiers and memory retrieval all start from it), and
it competes with the chat engine for the same cores. ONNX Runtime runs
all-MiniLM-L6-v2 about twice as fast as torch on one thread (4.4 vs 9.1 ms
for one sentence, 18 vs 36 ms for eight, on the 2-core development VM) and
gives the same vectors (cosine similarity with torch's > 0.9999999), so the
classifier heads, the content prototypes and the stored memories' vectors
stay valid. Quantized int8 models are faster still but move the vectors
(cosine down to 0.90 with torch's dynamic quantization, 0.99 with ONNX
Runtime's), which would silently shift retrieval against memories already
stored: not used.

How: only the transformer (the expensive part) is exported, once per
process when the model loads (about half a second, with torch's TorchScript
exporter, to a temporary file read back at once). Tokenisation, pooling and
normalisation stay the sentence-transformers modules the model ships with,
so any pooling the model's configuration asks for is honoured.
sentence-transformers has an ONNX backend of its own, but it needs `optimum`,
whose releases pin an older `transformers` than the one this project runs on.

The graph also outputs every inner layer's token states: `encode` asks only
for the last hidden state, `encode_with_states` for one inner layer too (the
emotion head branches off layer 5). The vectors are bit-identical either way
and to the single-output graph this module exported before (checked on 600
GoEmotions dev texts), so stored memories stay valid.
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Vectors = npt.NDArray[np.float32]
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
_NO_STATES: Vectors = np.zeros((0, 0), dtype=np.float32)


class OnnxSentenceEncoder:
    """Encodes like ``SentenceTransformer.encode(..., normalize_embeddings=True)``.

    ``model`` is a loaded ``SentenceTransformer`` whose first module is its
    Hugging Face transformer; ``threads`` is ONNX Runtime's intra-op thread
    count (0: one per core).
    """

    def __init__(self, model: Any, threads: int = 0) -> None:
        import onnxruntime as ort

        self._preprocess = getattr(model, "preprocess", None) or model.tokenize
        self._after = list(model)[1:]  # pooling, normalisation, ...
        # Texts of two lengths: the traced graph then applies the attention mask (a batch
        # without padding may let the model skip it, and the trace would keep that).
        sample = self._preprocess(["a", "two words"])
        self._names = [name for name in _INPUTS if name in sample]
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # Idle worker threads must not spin: the chat engine wants those cores.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.layers = int(model[0].auto_model.config.num_hidden_layers)
        self._session = ort.InferenceSession(
            _export(model, sample, self._names), options, providers=["CPUExecutionProvider"]
        )

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> Vectors:
        """L2-normalised vectors for ``texts``, in order; similar lengths batched together."""
        vectors, _ = self._run(texts, batch_size, None)
        return vectors

    def encode_with_states(
        self, texts: Sequence[str], layer: int, batch_size: int = 64
    ) -> tuple[Vectors, list[Vectors]]:
        """`encode`'s vectors plus each text's token states after transformer ``layer``.

        One pass: the states are an extra output of the same graph, so the vectors
        are those `encode` returns. States are per text, [tokens, hidden], unpadded.
        """
        if not 1 <= layer < self.layers:
            raise ValueError(f"layer must be in 1..{self.layers - 1}, got {layer}")
        vectors, states = self._run(texts, batch_size, f"layer_{layer}")
        return vectors, states

    def _run(
        self, texts: Sequence[str], batch_size: int, extra: str | None
    ) -> tuple[Vectors, list[Vectors]]:
        import torch

        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), 0), dtype=np.float32)
        states: list[Vectors] = [_NO_STATES] * len(texts)
        outputs = ["token_embeddings"] if extra is None else ["token_embeddings", extra]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            features = self._preprocess([texts[i] for i in rows])
            hidden, *inner = self._session.run(
                outputs, {name: features[name].numpy() for name in self._names}
            )
            if inner:
                lengths = features["attention_mask"].sum(dim=1).tolist()
                for row, length, tokens in zip(rows, lengths, inner[0], strict=True):
                    states[row] = np.ascontiguousarray(tokens[:length], dtype=np.float32)
            features["token_embeddings"] = torch.from_numpy(hidden)
            with torch.inference_mode():
                for module in self._after:
                    features = module(features)
            vectors = torch.nn.functional.normalize(features["sentence_embedding"], dim=-1)
            if out.shape[1] == 0:
                out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
            out[rows] = vectors.numpy()
        return out, states


def _export(model: Any, sample: dict[str, Any], names: list[str]) -> bytes:
    import torch

    transformer = model[0].auto_model.eval()

    class _Hidden(torch.nn.Module):
        """The transformer's last hidden state from positional inputs (what ONNX sees)."""

        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
            output = self.transformer(
                **dict(zip(names, inputs, strict=True)), output_hidden_states=True
            )
            # The last hidden state first, then every inner layer's output: a caller
            # asks the session only for the ones it wants.
            return (output.last_hidden_state, *output.hidden_states[1:-1])

    layers = int(transformer.config.num_hidden_layers)
    outputs = ["token_embeddings", *(f"layer_{i}" for i in range(1, layers))]
    axes = {name: {0: "batch", 1: "tokens"} for name in [*names, *outputs]}
    with tempfile.TemporaryDirectory(prefix="companion-onnx-") as tmp, warnings.catch_warnings():
        path = Path(tmp) / "transformer.onnx"
        warnings.simplefilter("ignore")  # the tracer's notes on the shapes it fixes: expected
        torch.onnx.export(
            _Hidden(),
            tuple(sample[name] for name in names),
            path,
            input_names=names,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=17,
            dynamo=False,
        )
        return path.read_bytes()
