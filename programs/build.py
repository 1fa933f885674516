"""Build the federity program: C -> BPF objects (zig's clang) -> SBPF v3 and v0 ELFs (our linker).

    python -m programs.build --out build/programs

writes federity_v3.so (what LiteSVM tests load) and federity_v0.so (what live clusters accept).
The output depends only on the sources and the pinned ziglang/pyelftools versions: building twice
gives identical bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from programs.sbpf_linker import link

ROOT = Path(__file__).resolve().parent
SOURCES = (ROOT / "federity" / "federity.c",)
HEADERS = (ROOT / "sdk" / "federity_sdk.h", ROOT / "sdk" / "zk_update_proof.h")
NAME = "federity"
VERSIONS = (3, 0)

CFLAGS = (
    "-target", "bpfel-freestanding", "-mcpu=v2", "-O2", "-std=c11",
    "-Wall", "-Wextra", "-Werror",
    "-ffreestanding", "-fno-builtin",
    "-fno-asynchronous-unwind-tables", "-fno-unwind-tables",  # no .eh_frame to carry
    "-mllvm", "-bpf-stack-size=4096",  # the SBPF frame size; clang's default is 512
)  # fmt: skip


class BuildError(RuntimeError):
    """Compilation or linking failed; the message says why."""


def compile_c(source: Path, obj: Path) -> None:
    cmd = [sys.executable, "-m", "ziglang", "cc", *CFLAGS, "-c", str(source), "-o", str(obj)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BuildError(f"compiling {source.name} failed:\n{proc.stderr.strip()}")


def source_digest() -> str:
    """sha256 over the program's sources and build recipe: a cache key for built ELFs."""
    h = hashlib.sha256()
    for path in (*SOURCES, *HEADERS, ROOT / "sbpf_linker.py", Path(__file__)):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


def build(out_dir: Path) -> dict[int, Path]:
    """Compile and link every SBPF version into out_dir; return {version: path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="federity-build-") as tmp:
        objects = []
        for src in SOURCES:
            obj = Path(tmp) / (src.stem + ".o")
            compile_c(src, obj)
            objects.append((src.name, obj.read_bytes()))
    outputs = {}
    for version in VERSIONS:
        path = out_dir / f"{NAME}_v{version}.so"
        tmp_path = path.with_suffix(".so.tmp")
        tmp_path.write_bytes(link(objects, version))
        os.replace(tmp_path, path)  # readers never see a half-written ELF
        outputs[version] = path
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("build/programs"), help="output dir")
    args = parser.parse_args(argv)
    try:
        outputs = build(args.out)
    except Exception as exc:  # BuildError, LinkError: one clear line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for version, path in outputs.items():
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        print(f"{path}  sbpf-v{version}  {path.stat().st_size} bytes  sha256 {digest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
