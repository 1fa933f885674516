"""The federity program ELF for embedded backends, built from programs/ on first use."""

from __future__ import annotations

from pathlib import Path


def federity_elf(cache_dir: Path, sbpf_version: int = 3) -> bytes:
    """Bytes of federity_v{sbpf_version}.so, cached under cache_dir by source digest.

    Needs the build toolchain (ziglang, pyelftools): a development dependency, so a packaged
    node should ship the built ELF instead of calling this.
    """
    from programs.build import build, source_digest  # imported lazily: toolchain only

    out = cache_dir / source_digest()[:16]
    path = out / f"federity_v{sbpf_version}.so"
    if not path.exists():
        build(out)
    return path.read_bytes()
