"""Counting output tokens on the client, for servers that give no `usage`.

Only used with `--tokenizer`: a GGUF file (its vocabulary, through llama.cpp, without loading
the weights) or a Hugging Face `tokenizer.json` (needs the `tokenizers` package).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from edgecloud.bench.errors import TokenizerError


def load_counter(path: str) -> Callable[[str], int]:
    """A function that counts the tokens of a text, from a .gguf or a tokenizer.json."""
    p = Path(path)
    if not p.exists():
        raise TokenizerError(f"tokenizer file {path} does not exist")
    if p.suffix == ".gguf":
        from llama_cpp import Llama

        llm = Llama(model_path=str(p), vocab_only=True, verbose=False)

        def count_gguf(text: str) -> int:
            if not text:
                return 0
            return len(llm.tokenize(text.encode("utf-8"), add_bos=False, special=False))

        return count_gguf
    if p.name.endswith(".json") or p.is_dir():
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise TokenizerError(
                "a tokenizer.json needs the `tokenizers` package; or pass the model's .gguf"
            ) from None
        tok = Tokenizer.from_file(str(p / "tokenizer.json" if p.is_dir() else p))

        def count_json(text: str) -> int:
            return len(tok.encode(text, add_special_tokens=False).ids) if text else 0

        return count_json
    raise TokenizerError(f"{path}: give a .gguf file or a tokenizer.json")
