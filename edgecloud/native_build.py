"""Build the compiled request path (edgecloud/compiled.py says what and why) in place.

Run: python -m edgecloud.native_build [--force | --status]. Without a flag it builds only where
the build is missing or older than the sources. Needs a C compiler and mypy (pinned in
requirements.lock); about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

from edgecloud.compiled import (
    GROUP,
    MODULES,
    PACKAGE,
    RECORD,
    built_extensions,
    digests,
    fresh,
    in_use,
    source,
)


def build() -> None:
    """Compile MODULES in place and record their sources' digests. The generated C, the
    objects and mypy's cache go to a temporary folder, so an installed package is built in
    place the same way (the gateway image does so)."""
    from mypyc.build import mypycify
    from setuptools import setup

    RECORD.unlink(missing_ok=True)
    for old in built_extensions():
        old.unlink()
    root = PACKAGE.parent
    before = digests()
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="edgecloud-native-") as tmp:
        os.chdir(root)  # mypyc names each module by its path from the working directory
        try:
            paths = [str(source(m).relative_to(root)) for m in MODULES]
            extensions = mypycify(
                ["--ignore-missing-imports", "--cache-dir", os.path.join(tmp, "mypy"), *paths],
                group_name=GROUP, opt_level="3", target_dir=os.path.join(tmp, "c"))
            setup(name="edgecloud-compiled", ext_modules=extensions,
                  script_args=["-q", "build_ext", "--inplace",
                               "--build-temp", os.path.join(tmp, "obj"),
                               "--build-lib", os.path.join(tmp, "lib")])
        finally:
            os.chdir(cwd)
    if digests() != before:
        sys.exit("a source changed during the build; run it again")
    RECORD.write_text(json.dumps({"modules": before}, indent=1) + "\n", encoding="utf-8")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgecloud.native_build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--force", action="store_true", help="rebuild even if up to date")
    which.add_argument("--status", action="store_true", help="say whether the build is in use")
    args = parser.parse_args(argv)
    if args.status:
        state = ("in use" if in_use() else "stale: the sources run" if built_extensions()
                 else "not built: the sources run")
        print(f"{GROUP}: {state}")
        return 0
    if not args.force and fresh():
        print(f"{GROUP}: up to date")
        return 0
    build()
    print(f"compiled {len(MODULES)} modules into {GROUP}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
