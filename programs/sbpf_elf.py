"""Writing SBPF program ELFs (v3 and v0) from linked text and rodata images.

Layouts follow what the agave/solana-sbpf loaders accept: the strict v3 parser (two PT_LOADs,
rodata at vaddr 0, bytecode at 1 << 32) and the lenient v0 parser (ET_DYN, vaddr == file offset,
syscalls as R_BPF_64_32 dynamic relocations against undefined .dynsym entries).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

MM_REGION_SIZE = 1 << 32
EM_BPF = 247
INSN_SIZE = 8
R_BPF_64_32 = 10


def align(n: int, a: int) -> int:
    return (n + a - 1) // a * a


_EHDR_SIZE, _PHDR_SIZE, _SHDR_SIZE = 64, 56, 64
ET_DYN, PT_LOAD, PT_DYNAMIC = 3, 1, 2
PF_X, PF_R = 1, 4
SHT_PROGBITS, SHT_STRTAB, SHT_DYNAMIC, SHT_REL, SHT_DYNSYM = 1, 3, 6, 9, 11
SHF_ALLOC, SHF_EXECINSTR = 2, 4
DT_NULL, DT_STRTAB, DT_SYMTAB, DT_STRSZ, DT_SYMENT = 0, 5, 6, 10, 11
DT_REL, DT_RELSZ, DT_RELENT = 17, 18, 19


def _ehdr(e_flags: int, entry: int, phnum: int, shoff: int, shnum: int) -> bytes:
    ident = b"\x7fELF" + bytes([2, 1, 1, 0, 0]) + bytes(7)
    return ident + struct.pack(
        "<HHIQQQIHHHHHH", ET_DYN, EM_BPF, 1, entry, _EHDR_SIZE, shoff, e_flags,
        _EHDR_SIZE, _PHDR_SIZE, phnum, _SHDR_SIZE, shnum, shnum - 1,
    )  # fmt: skip


def _phdr(p_type: int, flags: int, offset: int, vaddr: int, size: int) -> bytes:
    return struct.pack("<IIQQQQQQ", p_type, flags, offset, vaddr, vaddr, size, size, INSN_SIZE)


@dataclass
class _Sections:
    """Accumulates section headers; the last one is always .shstrtab."""

    names: bytearray = field(default_factory=lambda: bytearray(b"\0"))
    headers: list[bytes] = field(default_factory=lambda: [bytes(_SHDR_SIZE)])

    def add(self, name: str, sh_type: int, flags: int, addr: int, offset: int, size: int,
            link: int = 0, info: int = 0, align: int = 8, entsize: int = 0) -> int:  # fmt: skip
        name_off = len(self.names)
        self.names += name.encode() + b"\0"
        self.headers.append(
            struct.pack("<IIQQQQIIQQ", name_off, sh_type, flags, addr, offset, size, link, info,
                        align, entsize)
        )  # fmt: skip
        return len(self.headers) - 1

    def finish(self, out: bytearray) -> tuple[int, int]:
        """Append .shstrtab and the header table to ``out``; return (shoff, shnum)."""
        strtab_off = len(out)
        self.add(".shstrtab", SHT_STRTAB, 0, 0, strtab_off, 0, align=1)
        out += self.names
        last = bytearray(self.headers[-1])
        struct.pack_into("<Q", last, 32, len(self.names))  # sh_size, known only now
        self.headers[-1] = bytes(last)
        out += bytes(align(len(out), 8) - len(out))
        shoff = len(out)
        for h in self.headers:
            out += h
        return shoff, len(self.headers)


V3_HEADERS_END = 64 + 2 * 56  # ELF header + two program headers: where rodata starts
V0_TEXT_OFFSET = 64 + 3 * 56  # ELF header + three program headers (already 8-aligned)


def emit_v3(text: bytes, rodata: bytes, entry_off: int) -> bytes:
    """rodata at vaddr 0, text at 1 << 32; entry_off is the entrypoint's offset in text."""
    ro_off = V3_HEADERS_END
    text_off = ro_off + len(rodata)
    out = bytearray(_EHDR_SIZE)
    out += _phdr(PT_LOAD, PF_R, ro_off, 0, len(rodata))
    out += _phdr(PT_LOAD, PF_X, text_off, MM_REGION_SIZE, len(text))
    out += rodata + text
    secs = _Sections()
    secs.add(".rodata", SHT_PROGBITS, SHF_ALLOC, 0, ro_off, len(rodata))
    secs.add(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, MM_REGION_SIZE, text_off, len(text))
    shoff, shnum = secs.finish(out)
    out[:_EHDR_SIZE] = _ehdr(3, MM_REGION_SIZE + entry_off, 2, shoff, shnum)
    return bytes(out)


def emit_v0(text: bytes, rodata: bytes, entry_off: int, sites: list[tuple[int, str]]) -> bytes:
    """text at V0_TEXT_OFFSET then rodata; sites are (text offset, syscall name) of `call -1`s."""
    text_off = V0_TEXT_OFFSET
    names = sorted({name for _, name in sites})
    dynstr = bytearray(b"\0")
    name_off: dict[str, int] = {}
    for name in ["entrypoint", *names]:
        name_off[name] = len(dynstr)
        dynstr += name.encode() + b"\0"
    rodata_off = text_off + len(text)
    dynsym_off = rodata_off + len(rodata)
    text_shndx = 1
    # STT_FUNC|STB_GLOBAL entrypoint, then undefined STT_NOTYPE|STB_GLOBAL syscalls.
    dynsym = bytes(24) + struct.pack(
        "<IBBHQQ", name_off["entrypoint"], 0x12, 0, text_shndx, text_off + entry_off, 0
    )
    dynsym += b"".join(struct.pack("<IBBHQQ", name_off[n], 0x10, 0, 0, 0, 0) for n in names)
    sym_index = {n: 2 + i for i, n in enumerate(names)}
    dynstr_off = dynsym_off + len(dynsym)
    rel_off = align(dynstr_off + len(dynstr), 8)
    rel = b"".join(
        struct.pack("<QQ", text_off + at, (sym_index[n] << 32) | R_BPF_64_32)
        for at, n in sorted(sites)
    )
    dyn_off = rel_off + len(rel)
    dyn_entries = [(DT_SYMTAB, dynsym_off), (DT_STRTAB, dynstr_off), (DT_STRSZ, len(dynstr)),
                   (DT_SYMENT, 24)]  # fmt: skip
    if rel:
        dyn_entries += [(DT_REL, rel_off), (DT_RELSZ, len(rel)), (DT_RELENT, 16)]
    dynamic = b"".join(struct.pack("<qQ", t, v) for t, v in [*dyn_entries, (DT_NULL, 0)])
    end = dyn_off + len(dynamic)

    out = bytearray(_EHDR_SIZE)
    out += _phdr(PT_LOAD, PF_R | PF_X, text_off, text_off, len(text) + len(rodata))
    out += _phdr(PT_LOAD, PF_R, dynsym_off, dynsym_off, end - dynsym_off)
    out += _phdr(PT_DYNAMIC, PF_R, dyn_off, dyn_off, len(dynamic))
    out += bytes(text_off - len(out))
    out += text + rodata + dynsym + dynstr
    out += bytes(rel_off - len(out))
    out += rel + dynamic
    secs = _Sections()
    secs.add(".text", SHT_PROGBITS, SHF_ALLOC | SHF_EXECINSTR, text_off, text_off, len(text))
    secs.add(".rodata", SHT_PROGBITS, SHF_ALLOC, rodata_off, rodata_off, len(rodata))
    dynsym_idx = secs.add(".dynsym", SHT_DYNSYM, SHF_ALLOC, dynsym_off, dynsym_off, len(dynsym),
                          link=4, info=1, entsize=24)  # fmt: skip
    secs.add(".dynstr", SHT_STRTAB, SHF_ALLOC, dynstr_off, dynstr_off, len(dynstr), align=1)
    if rel:
        secs.add(".rel.dyn", SHT_REL, SHF_ALLOC, rel_off, rel_off, len(rel), link=dynsym_idx,
                 entsize=16)  # fmt: skip
    secs.add(".dynamic", SHT_DYNAMIC, SHF_ALLOC, dyn_off, dyn_off, len(dynamic),
             link=4, entsize=16)  # fmt: skip
    shoff, shnum = secs.finish(out)
    out[:_EHDR_SIZE] = _ehdr(0, text_off + entry_off, 3, shoff, shnum)
    return bytes(out)
