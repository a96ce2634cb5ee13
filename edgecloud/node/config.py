"""Node configuration: one pydantic model, from YAML (`--config`) and command-line flags."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import ConfigDict, Field, ValidationInfo, field_validator

from edgecloud.api.guard import ServingLimits
from edgecloud.api.yamlconfig import COMMAND_LINE, load_model, parse_model
from edgecloud.node.errors import ConfigError
from edgecloud.node.image_checks import ImageLimits, RemoteImagePolicy

__all__ = ["ConfigError", "NodeConfig", "build_config", "default_threads"]


def default_threads() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1)


class NodeConfig(ServingLimits):
    """Everything `edgecloud serve` can be told. Defaults are safe: loopback, limits on.

    The read deadlines and connection limit (`header_timeout_s`, `body_timeout_s`,
    `max_connections`) come from `ServingLimits`."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="GGUF file; default: the embedded Gemma 3 270M")
    name: str = Field("gemma-3-270m", description="Model id served at /v1/models")
    aliases: list[str] = Field(default_factory=list, description="Other accepted model names")
    accept_any_model: bool = Field(False, description="Serve any requested model name")
    host: str = "127.0.0.1"
    port: int = Field(8081, ge=0, le=65535)
    # Upper bounds keep every accepted value one llama.cpp can run (ggml: at most 512 threads).
    threads: int = Field(default_factory=default_threads, ge=1, le=512)
    ctx: int = Field(4096, ge=128, le=1 << 20, description="Context per request (per slot), tokens")
    parallel: int = Field(4, ge=1, le=64, description="Slots decoded together in one batch")
    max_queue: int = Field(16, ge=0, description="Requests waiting beyond the slots; then 429")
    batch: int = Field(
        512, ge=32, le=4096, description="Tokens per llama_decode call (prompt chunking)"
    )
    preload: bool = Field(True, description="Load at start (False: on the first request)")
    warmup: bool = True
    default_max_tokens: int = Field(1024, ge=1, description="max_tokens when a request omits it")
    max_request_s: float = Field(
        600.0, gt=0, description="Generation time limit per request (then finish_reason length)"
    )
    max_body_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    drain_timeout_s: float = Field(30.0, ge=0)
    admin_token_env: str = Field(
        "EDGECLOUD_ADMIN_TOKEN", description="Env var holding the admin API bearer token"
    )
    version: str | None = Field(None, description="Version label of the model file")
    api_key_env: str | None = Field(
        None, description="Env var holding the key the inference routes require (unset: none)"
    )
    tracing: bool | None = Field(
        None, description="OpenTelemetry spans; unset: on when the OTEL_* env asks for OTLP"
    )
    embedding_pooling: Literal["mean", "last", "cls"] = Field(
        "mean", description="How /v1/embeddings pools the model's token states into one vector"
    )
    model_dirs: list[str] = Field(
        default_factory=list,
        description="Directories the admin swap may load from; default: the startup model's",
    )
    log_level: str = "info"
    # Vision: a projector for the model, and what one request may send.
    mmproj: str | None = Field(
        None, description="Vision projector GGUF (mmproj) for the model: image parts are read"
    )
    max_images: int = Field(8, ge=1, le=64, description="Images per request")
    max_image_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="Bytes of one image file (after base64)"
    )
    max_request_image_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Bytes of all image files of one request"
    )
    max_image_pixels: int = Field(
        4096 * 4096, ge=64 * 64, description="Pixels of one image (checked before decoding)"
    )
    image_url_hosts: list[str] = Field(
        default_factory=list,
        description="Hosts remote image URLs may be fetched from; empty: data URIs only",
    )
    image_fetch_timeout_s: float = Field(5.0, gt=0, le=60, description="Per remote image")

    @field_validator("image_url_hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        for h in hosts:
            if not h or "/" in h or ":" in h or "@" in h or h != h.strip():
                raise ValueError(f"{h!r} is not a host name (write images.example.com)")
        return [h.lower() for h in hosts]

    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_images=self.max_images,
            max_image_bytes=self.max_image_bytes,
            max_request_bytes=self.max_request_image_bytes,
            max_pixels=self.max_image_pixels,
        )

    def remote_images(self) -> RemoteImagePolicy:
        return RemoteImagePolicy(
            hosts=frozenset(self.image_url_hosts),
            max_bytes=self.max_image_bytes,
            timeout_s=self.image_fetch_timeout_s,
        )

    @field_validator("batch")
    @classmethod
    def _batch_holds_every_slot(cls, batch: int, info: ValidationInfo) -> int:
        # Every step puts one token per generating slot into one batch (llama.cpp aborts the
        # process when it cannot): refused here rather than raised silently, so the operator
        # sees the memory the batch size costs.
        parallel = info.data.get("parallel")
        if isinstance(parallel, int) and parallel > batch:
            raise ValueError(
                f"parallel ({parallel}) is above batch ({batch}); each step decodes one token "
                f"of every slot in one batch, so set batch to at least {parallel} or lower "
                "parallel"
            )
        return batch


def build_config(file: str | None, overrides: dict[str, object]) -> NodeConfig:
    """File values, then flags that were given on the command line."""
    if file is None:
        return parse_model("", NodeConfig, COMMAND_LINE, overrides=overrides, error=ConfigError)
    return load_model(file, NodeConfig, overrides=overrides, error=ConfigError)
