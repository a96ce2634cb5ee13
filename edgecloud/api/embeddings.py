"""OpenAI's embeddings API: the request checked, the reply built. Pure; the node computes."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgecloud.api.errors import BadRequest

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request


@dataclass(frozen=True, slots=True)
class EmbeddingRequest:
    """What one /v1/embeddings request asks for."""

    model: str | None
    texts: list[str] | None  # or, instead, token ids
    token_ids: list[list[int]] | None
    encoding_format: str
    dimensions: int | None


def parse_embedding_request(data: Any) -> EmbeddingRequest:
    """Check a body: input as a string, strings, token ids or lists of token ids."""
    if not isinstance(data, dict):
        raise BadRequest("The request body must be a JSON object.")
    value = data.get("input")
    texts: list[str] | None = None
    ids: list[list[int]] | None = None
    if isinstance(value, str):
        texts = [value]
    elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        texts = list(value)
    elif isinstance(value, list) and value and all(type(v) is int for v in value):
        ids = [list(value)]
    elif isinstance(value, list) and value and all(
        isinstance(v, list) and v and all(type(t) is int for t in v) for v in value
    ):
        ids = [list(v) for v in value]
    else:
        raise BadRequest("'input' must be a string, a non-empty list of strings, a list of "
                         "token ids or a list of such lists.", param="input")
    if len(texts or ids or ()) > MAX_INPUTS:
        raise BadRequest(f"At most {MAX_INPUTS} inputs per request.", param="input")
    if texts is not None and any(not t for t in texts):
        raise BadRequest("An input must not be an empty string.", param="input")
    fmt = data.get("encoding_format", "float") or "float"
    if fmt not in ("float", "base64"):
        raise BadRequest("'encoding_format' must be float or base64.", param="encoding_format")
    dims = data.get("dimensions")
    if dims is not None and (type(dims) is not int or dims < 1):
        raise BadRequest("'dimensions' must be a positive integer.", param="dimensions")
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise BadRequest("'model' must be a string.", param="model")
    return EmbeddingRequest(model, texts, ids, fmt, dims)


def embedding_reply(vectors: np.ndarray, model: str, fmt: str, prompt_tokens: int
                    ) -> dict[str, Any]:
    """The reply: one `embedding` object per input (float lists or base64 float32)."""
    data = []
    for i, row in enumerate(vectors):
        if fmt == "base64":
            value: Any = base64.b64encode(row.astype("<f4").tobytes()).decode()
        else:
            value = row.tolist()
        data.append({"object": "embedding", "index": i, "embedding": value})
    return {"object": "list", "data": data, "model": model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}}
