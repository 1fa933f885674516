"""A small static linker from BPF relocatable objects to Solana SBPF program ELFs.

No off-the-shelf linker accepts BPF shared objects (lld rejects e_machine 247, binutils refuses
-shared, zig has no BPF dynamic linking), so we lay the program out ourselves:

* SBPF v3 (``e_flags = 3``): read-only data in a PT_LOAD at vaddr 0, bytecode in a PT_LOAD at
  1 << 32, no dynamic section; syscalls are ``call`` with src=0 and imm = murmur3_32(name),
  internal calls are pc-relative with src=1.
* SBPF v0 (``e_flags = 0``, ET_DYN): .text and .rodata mapped at 1 << 32 + file offset; syscalls
  stay ``call -1`` and get an R_BPF_64_32 dynamic relocation to an undefined .dynsym entry that
  the loader replaces with the hash; internal calls are pc-relative (the loader registers them).

All data/code addresses are resolved here, so the only dynamic relocations are syscall ones.
Output is a pure function of the input bytes (reproducible builds).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile
from elftools.elf.relocation import RelocationSection
from elftools.elf.sections import SymbolTableSection

from programs.sbpf_elf import INSN_SIZE, MM_REGION_SIZE, R_BPF_64_32, V0_TEXT_OFFSET, align, emit_v0, emit_v3

RODATA_GUARD = 8  # keeps every object off address 0 in v3, where C would read it as NULL

R_BPF_64_64 = 1
R_BPF_64_ABS64 = 2
R_BPF_64_ABS32 = 3
R_BPF_64_NODYLD32 = 4

OP_LDDW = 0x18
OP_CALL_IMM = 0x85
OP_CALL_REG = 0x8D

# Syscalls the Solana runtime registers (agave 2.x-4.x); anything else undefined is an error.
SOLANA_SYSCALLS: frozenset[str] = frozenset(
    {
        "abort", "sol_panic_", "sol_log_", "sol_log_64_", "sol_log_pubkey",
        "sol_log_compute_units_", "sol_log_data", "sol_create_program_address",
        "sol_try_find_program_address", "sol_sha256", "sol_keccak256", "sol_blake3",
        "sol_secp256k1_recover", "sol_curve_validate_point", "sol_curve_group_op",
        "sol_curve_multiscalar_mul", "sol_get_clock_sysvar", "sol_get_epoch_schedule_sysvar",
        "sol_get_fees_sysvar", "sol_get_rent_sysvar", "sol_get_last_restart_slot",
        "sol_get_epoch_rewards_sysvar", "sol_get_sysvar", "sol_get_epoch_stake",
        "sol_memcpy_", "sol_memmove_", "sol_memcmp_", "sol_memset_", "sol_invoke_signed_c",
        "sol_invoke_signed_rust", "sol_alloc_free_", "sol_set_return_data",
        "sol_get_return_data", "sol_get_processed_sibling_instruction", "sol_get_stack_height",
        "sol_alt_bn128_group_op", "sol_alt_bn128_compression", "sol_big_mod_exp",
        "sol_poseidon", "sol_remaining_compute_units",
    }
)  # fmt: skip


class LinkError(Exception):
    """A one-line, user-facing reason why the objects cannot become a program."""


def murmur3_32(data: bytes, seed: int = 0) -> int:
    """MurmurHash3 x86_32, the hash SBPF uses to name syscalls in ``call`` immediates."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF
    h = seed & mask
    tail_len = len(data) & 3
    for (k,) in struct.iter_unpack("<I", data[: len(data) - tail_len]):
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        h ^= (k * c2) & mask
        h = ((h << 13) | (h >> 19)) & mask
        h = (h * 5 + 0xE6546B64) & mask
    if tail_len:
        k = int.from_bytes(data[len(data) - tail_len :], "little")
        k = (k * c1) & mask
        k = ((k << 15) | (k >> 17)) & mask
        h ^= (k * c2) & mask
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    return h ^ (h >> 16)


@dataclass
class _Piece:
    """One allocated input section, placed at ``offset`` within its output segment."""

    kind: str  # "text" or "rodata"
    data: bytearray
    align: int
    offset: int = 0


@dataclass
class _Object:
    name: str
    pieces: dict[int, _Piece] = field(default_factory=dict)  # input section index -> piece
    symbols: list[tuple[str, int, int, str]] = field(default_factory=list)  # name, shndx, value, bind
    relocs: list[tuple[int, int, int, int, int | None]] = field(default_factory=list)
    # (target section index, r_offset, r_type, r_sym, explicit addend or None)


@dataclass(frozen=True)
class _Target:
    """What a symbol resolves to: a place in a piece, or a syscall name."""

    piece: _Piece | None
    value: int = 0
    syscall: str = ""


def _read_object(name: str, blob: bytes) -> _Object:
    try:
        elf = ELFFile(io.BytesIO(blob))
    except Exception as exc:  # pyelftools raises several unrelated types
        raise LinkError(f"{name}: not an ELF object ({exc})") from None
    if elf["e_machine"] != "EM_BPF" or elf.elfclass != 64 or not elf.little_endian:
        raise LinkError(f"{name}: not a 64-bit little-endian BPF object")
    if elf["e_type"] != "ET_REL":
        raise LinkError(f"{name}: not a relocatable object (compile with -c)")
    obj = _Object(name)
    symtab = elf.get_section_by_name(".symtab")
    for index, sec in enumerate(elf.iter_sections()):
        flags = sec["sh_flags"]
        if not flags & SH_FLAGS.SHF_ALLOC or sec.name.startswith(".eh_frame"):
            continue
        writable = flags & SH_FLAGS.SHF_WRITE and not sec.name.startswith(".data.rel.ro")
        if writable or sec["sh_type"] == "SHT_NOBITS":
            culprits = _symbols_in(symtab, index)
            what = f" ({', '.join(culprits)})" if culprits else ""
            raise LinkError(
                f"{name}: writable global data in section {sec.name}{what}: Solana programs "
                "cannot have writable globals; make it const or keep it on the stack"
            )
        kind = "text" if flags & SH_FLAGS.SHF_EXECINSTR else "rodata"
        align = max(sec["sh_addralign"], INSN_SIZE if kind == "text" else 1)
        obj.pieces[index] = _Piece(kind, bytearray(sec.data()), align)
    if isinstance(symtab, SymbolTableSection):
        for sym in symtab.iter_symbols():
            shndx = sym["st_shndx"]
            obj.symbols.append(
                (sym.name, shndx if isinstance(shndx, int) else -1, sym["st_value"],
                 sym["st_info"]["bind"])
            )  # fmt: skip
    for sec in elf.iter_sections():
        # pyelftools makes every SHT_REL and SHT_RELA section a RelocationSection
        if not isinstance(sec, RelocationSection) or sec["sh_info"] not in obj.pieces:
            continue
        for rel in sec.iter_relocations():
            addend = rel["r_addend"] if rel.is_RELA() else None
            obj.relocs.append(
                (sec["sh_info"], rel["r_offset"], rel["r_info_type"], rel["r_info_sym"], addend)
            )
    return obj


def _symbols_in(symtab: object, shndx: int) -> list[str]:
    if not isinstance(symtab, SymbolTableSection):
        return []
    return sorted(
        {s.name for s in symtab.iter_symbols() if s["st_shndx"] == shndx and s.name and
         s["st_info"]["type"] in ("STT_OBJECT", "STT_NOTYPE")}
    )  # fmt: skip


def _layout(objects: Sequence[_Object]) -> tuple[bytearray, bytearray]:
    """Concatenate pieces into a text and a rodata image, recording each piece's offset."""
    text, rodata = bytearray(), bytearray(RODATA_GUARD)
    for obj in objects:
        for piece in obj.pieces.values():
            image = text if piece.kind == "text" else rodata
            image.extend(bytes(align(len(image), piece.align) - len(image)))
            piece.offset = len(image)
            image.extend(piece.data)
    text.extend(bytes(align(len(text), INSN_SIZE) - len(text)))
    rodata.extend(bytes(align(len(rodata), INSN_SIZE) - len(rodata)))
    return text, rodata


def _globals(objects: Sequence[_Object]) -> dict[str, _Target]:
    strong: dict[str, _Target] = {}
    weak: dict[str, _Target] = {}
    for obj in objects:
        for name, shndx, value, bind in obj.symbols:
            if bind not in ("STB_GLOBAL", "STB_WEAK") or shndx <= 0 or shndx not in obj.pieces:
                continue
            target = _Target(obj.pieces[shndx], value)
            if bind == "STB_WEAK":
                weak.setdefault(name, target)
            elif name in strong:
                raise LinkError(f"duplicate symbol {name} (defined again in {obj.name})")
            else:
                strong[name] = target
    return {**weak, **strong}


def _resolve(obj: _Object, sym_index: int, globs: dict[str, _Target], syscalls: frozenset[str]) -> _Target:
    name, shndx, value, bind = obj.symbols[sym_index]
    if shndx > 0 and shndx in obj.pieces and bind == "STB_LOCAL":
        return _Target(obj.pieces[shndx], value)
    if name in globs:
        return globs[name]
    if shndx > 0 and shndx not in obj.pieces:
        raise LinkError(f"{obj.name}: relocation against a discarded section symbol {name!r}")
    if name in syscalls:
        return _Target(None, syscall=name)
    raise LinkError(f"{obj.name}: undefined symbol {name!r} (not defined, not a Solana syscall)")


@dataclass(frozen=True)
class _Bases:
    text_vaddr: int
    rodata_vaddr: int

    def addr(self, target: _Target) -> int:
        assert target.piece is not None
        base = self.text_vaddr if target.piece.kind == "text" else self.rodata_vaddr
        return base + target.piece.offset + target.value


def _relocate(
    objects: Sequence[_Object],
    text: bytearray,
    rodata: bytearray,
    bases: _Bases,
    version: int,
    syscalls: frozenset[str],
) -> list[tuple[int, str]]:
    """Apply every relocation in place; return v0 syscall sites as (text offset, name)."""
    globs = _globals(objects)
    sites: list[tuple[int, str]] = []
    for obj in objects:
        for shndx, r_offset, r_type, r_sym, addend in obj.relocs:
            piece = obj.pieces[shndx]
            image = text if piece.kind == "text" else rodata
            at = piece.offset + r_offset
            where = f"{obj.name}: relocation type {r_type} at {piece.kind}+{r_offset:#x}"
            target = _resolve(obj, r_sym, globs, syscalls)
            if r_type == R_BPF_64_32:
                if piece.kind != "text" or image[at] != OP_CALL_IMM:
                    raise LinkError(f"{where}: R_BPF_64_32 not on a call instruction")
                imm = struct.unpack_from("<i", image, at + 4)[0]
                if target.piece is None:
                    _patch_syscall(image, at, target.syscall, version)
                    if version == 0:
                        sites.append((at, target.syscall))
                    continue
                if target.piece.kind != "text":
                    raise LinkError(f"{where}: call to a non-code symbol")
                dest = target.piece.offset + target.value + (addend if addend is not None else (imm + 1) * INSN_SIZE)
                rel = (dest - at) // INSN_SIZE - 1
                if dest % INSN_SIZE or (version == 0 and rel == -1):
                    raise LinkError(f"{where}: bad call target")
                image[at + 1] = (image[at + 1] & 0x0F) | 0x10  # src=1: internal call
                struct.pack_into("<i", image, at + 4, rel)
            elif target.piece is None:
                raise LinkError(f"{where}: data reference to syscall {target.syscall!r}")
            elif r_type == R_BPF_64_64:
                if piece.kind != "text" or image[at] != OP_LDDW:
                    raise LinkError(f"{where}: R_BPF_64_64 not on an lddw instruction")
                a = addend if addend is not None else struct.unpack_from("<I", image, at + 4)[0]
                value = bases.addr(target) + a
                struct.pack_into("<I", image, at + 4, value & 0xFFFFFFFF)
                struct.pack_into("<I", image, at + 12, value >> 32)
            elif r_type == R_BPF_64_ABS64:
                a = addend if addend is not None else struct.unpack_from("<Q", image, at)[0]
                struct.pack_into("<Q", image, at, (bases.addr(target) + a) & (2**64 - 1))
            elif r_type == R_BPF_64_ABS32:
                a = addend if addend is not None else struct.unpack_from("<I", image, at)[0]
                value = bases.addr(target) + a
                if value >= 2**32:
                    raise LinkError(f"{where}: address {value:#x} does not fit 32 bits")
                struct.pack_into("<I", image, at, value)
            else:
                raise LinkError(f"{where}: unsupported relocation type")
    _fix_calls(text, version, {at for at, _ in sites})
    return sites


def _patch_syscall(image: bytearray, at: int, name: str, version: int) -> None:
    image[at + 1] &= 0x0F  # src=0: external call
    imm = murmur3_32(name.encode()) if version >= 3 else 0xFFFFFFFF  # v0: the loader hashes it
    struct.pack_into("<I", image, at + 4, imm)


def _fix_calls(text: bytearray, version: int, v0_syscall_sites: set[int]) -> None:
    """Normalise callx encodings and refuse calls that no relocation resolved."""
    pc = 0
    while pc < len(text):
        op, regs = text[pc], text[pc + 1]
        imm = struct.unpack_from("<i", text, pc + 4)[0]
        if op == OP_CALL_IMM and imm == -1 and pc not in v0_syscall_sites:
            raise LinkError(f"unresolved call at text+{pc:#x}")
        if op == OP_CALL_REG:
            reg = (regs & 0x0F) or imm  # clang writes the register in dst
            if version >= 3:
                text[pc + 1] = (regs & 0xF0) | reg
                struct.pack_into("<i", text, pc + 4, 0)
            else:  # v0 reads the register from imm
                text[pc + 1] = regs & 0xF0
                struct.pack_into("<i", text, pc + 4, reg)
        pc += 2 * INSN_SIZE if op == OP_LDDW else INSN_SIZE


def _entry_offset(objects: Sequence[_Object], entry: str) -> int:
    target = _globals(objects).get(entry)
    if target is None or target.piece is None or target.piece.kind != "text":
        raise LinkError(f"entry symbol {entry!r} is not a defined function")
    return target.piece.offset + target.value


def link(
    objects: Iterable[tuple[str, bytes]],
    sbpf_version: int,
    entry: str = "entrypoint",
    syscalls: frozenset[str] = SOLANA_SYSCALLS,
) -> bytes:
    """Link BPF objects given as (name, bytes) into an SBPF v0 or v3 program ELF."""
    if sbpf_version not in (0, 3):
        raise LinkError(f"unsupported SBPF version {sbpf_version} (0 and 3 are)")
    objs = [_read_object(name, blob) for name, blob in objects]
    if not objs:
        raise LinkError("no input objects")
    text, rodata = _layout(objs)
    if not text:
        raise LinkError("no code in the input objects")
    entry_off = _entry_offset(objs, entry)
    if sbpf_version == 3:
        _relocate(objs, text, rodata, _Bases(MM_REGION_SIZE, 0), 3, syscalls)
        return emit_v3(bytes(text), bytes(rodata), entry_off)
    # v0 maps the file at 1 << 32: text at V0_TEXT_OFFSET, rodata right after it.
    bases = _Bases(MM_REGION_SIZE + V0_TEXT_OFFSET, MM_REGION_SIZE + V0_TEXT_OFFSET + len(text))
    sites = _relocate(objs, text, rodata, bases, 0, syscalls)
    return emit_v0(bytes(text), bytes(rodata), entry_off, sites)
