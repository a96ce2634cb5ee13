"""The request path compiled to C with mypyc; the plain sources are the fallback.

The modules in `MODULES` are type-checked Python; mypyc (part of mypy, the pinned type checker)
turns them into one C extension, `edgecloud/compiled__mypyc.*.so`, plus a small extension per
module beside its source: the HTTP protocol and ASGI edge every server uses (node, gateway,
fleet server), the log writer, and the gateway's request path. Compiled, the gateway spends
about a third less CPU per request (benchmarks/gateway_state.py part (c) and
gateway_overhead.py measure it). Nothing else changes: the same sources run as plain Python
where no build is present. The upstream client (http1.py) is compiled too: its body iterator
is a class (mypyc builds no async generators) and its errors live in a plain module.

A build is used only while it matches the sources: the build writes the SHA-256 of every
compiled source to `compiled.json`, and `install_guard` (run by `edgecloud/__init__.py`) makes
every module of the group load from its `.py` when any source differs, or when the record is
missing (a build cut short). All or nothing, because compiled modules call each other natively:
a fresh `app` would still run a stale `forward`.

Compiled code holds to its annotations at run time, where Python would go on:
- a value that breaks its declared type raises TypeError;
- mypy's narrowing of an attribute (`if state.model_id is None:`) survives an `await` or a call
  that changes it, and the compiled code trusts it: take the new value from what the call
  returns (forward._fetch and upstream.discover_model), or read it in another function;
- a variable that a `try` body narrows (`x = None` before it, `x = W()` in it) is read in the
  `finally` with the narrowed type, so a None there raises: declare it `Any` (app._proxy);
- a library's stubs are believed: where they are wrong (httptools' URL fields may be None),
  hold the value as `Any` (api/protocol.py);
- a class that subclasses `str`, `bytes` or `OSError` lives in a plain module (gateway/elided.py,
  http1_errors.py), and so does one that must subclass a Python class: an asyncio protocol is
  one by its methods (http1.Connection, redis_state._Replies), not by its base.
A module joins MODULES only once the whole suite passes with it compiled.

Build: `python -m edgecloud.native_build` (`make` runs it before the tests and the demo);
`python -m edgecloud.native_build --status` says whether the build is in use.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

PACKAGE = Path(__file__).resolve().parent
GROUP = "edgecloud.compiled"  # the shared extension: edgecloud/compiled__mypyc.*.so
RECORD = PACKAGE / "compiled.json"
MODULES = (
    "edgecloud.api.asgi",
    "edgecloud.api.clientwatch",
    "edgecloud.api.protocol",
    "edgecloud.gateway.app",
    "edgecloud.gateway.deadline",
    "edgecloud.gateway.forward",
    "edgecloud.gateway.health",
    "edgecloud.gateway.limits",
    "edgecloud.gateway.metrics",
    "edgecloud.gateway.policy",
    "edgecloud.gateway.privacy",
    "edgecloud.gateway.pseudonymize",
    "edgecloud.gateway.redis_state",
    "edgecloud.gateway.request",
    "edgecloud.gateway.restore_stream",
    "edgecloud.gateway.state",
    "edgecloud.gateway.upstream",
    "edgecloud.http1",
    "edgecloud.logs",
)


def source(module: str) -> Path:
    return PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")


def digests() -> dict[str, str]:
    """The SHA-256 of each compiled module's source as it is now."""
    return {m: hashlib.sha256(source(m).read_bytes()).hexdigest() for m in MODULES}


def built_extensions() -> list[Path]:
    """The extension files of a build, whether or not it is in use."""
    return sorted(p for m in (*MODULES, GROUP + "__mypyc")
                  for p in source(m).parent.glob(m.rsplit(".", 1)[1] + ".*.so"))


def _extension(module: str) -> Path:
    """Where this interpreter would load `module`'s compiled extension from."""
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]  # e.g. .cpython-311-x86_64-linux-gnu.so
    return source(module).with_name(module.rsplit(".", 1)[1] + suffix)


def fresh() -> bool:
    """True where a whole build for this interpreter exists and was made from the sources as
    they are now (a build for another Python or CPU is not used)."""
    if not all(_extension(m).exists() for m in (*MODULES, GROUP + "__mypyc")):
        return False
    try:
        recorded = json.loads(RECORD.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(recorded, dict) and recorded.get("modules") == digests()


class _SourcesFirst(importlib.abc.MetaPathFinder):
    """Loads the group's modules from their `.py` files, past a stale build's extensions."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MODULES:
            return None
        return importlib.util.spec_from_file_location(fullname, source(fullname))


def install_guard() -> None:
    """Where a build is present but does not match the sources, run the sources."""
    if not built_extensions() or fresh():
        return
    if not any(isinstance(f, _SourcesFirst) for f in sys.meta_path):
        sys.meta_path.insert(0, _SourcesFirst())


def in_use() -> bool:
    """True where the compiled modules are the ones imported."""
    spec = importlib.util.find_spec(MODULES[0])
    return spec is not None and spec.origin is not None and not spec.origin.endswith(".py")
