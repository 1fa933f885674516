"""programs/sbpf_linker.py and programs/build.py: hashes, relocations, layouts, rejections, reproducibility."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from solders.instruction import Instruction
from solders.keypair import Keypair
from solders.litesvm import LiteSVM
from solders.message import Message
from solders.transaction import Transaction
from solders.transaction_metadata import FailedTransactionMetadata

from programs import build as federity_build
from programs.sbpf_linker import MM_REGION_SIZE, LinkError, link, murmur3_32

# Exercises every relocation the compiler emits for us: lddw of a string (R_BPF_64_64), a const
# table of pointers in .rodata (R_BPF_64_ABS64), syscalls and a call to a global function
# (R_BPF_64_32), a pc-relative static call (no relocation), and function pointers (callx).
HELLO_C = r"""
typedef unsigned long u64;
extern void sol_log_(const char *, u64);
extern void sol_log_64_(u64, u64, u64, u64, u64);
struct S { const char *p; u64 n; };
static const struct S table[2] = {{"first", 5}, {"second", 6}};
__attribute__((noinline)) u64 triple(u64 x) { return x * 3; }
__attribute__((noinline)) static u64 plus_one(u64 x) { return x + 1; }
typedef u64 (*fn)(u64);
static const fn fns[2] = {triple, plus_one};
u64 entrypoint(const unsigned char *input) {
  (void)input;
  sol_log_("hello", 5);
  volatile u64 i = 1;
  sol_log_(table[i].p, table[i].n);
  sol_log_64_(triple(i + 6), plus_one(i + 40), fns[i](99), fns[i - 1](100), 0);
  return 0;
}
"""
HELLO_LOGS = ["Program log: hello", "Program log: second", "Program log: 0x15, 0x2a, 0x64, 0x12c, 0x0"]


def compile_snippet(tmp_path: Path, name: str, source: str) -> tuple[str, bytes]:
    src = tmp_path / f"{name}.c"
    src.write_text(source)
    obj = tmp_path / f"{name}.o"
    federity_build.compile_c(src, obj)
    return obj.name, obj.read_bytes()


def run(elf: bytes) -> list[str]:
    """Deploy and invoke once; return the program's log lines."""
    svm = LiteSVM()
    program = Keypair().pubkey()
    svm.add_program(program, elf)
    payer = Keypair()
    svm.airdrop(payer.pubkey(), 10**9)
    tx = Transaction([payer], Message([Instruction(program, b"", [])], payer.pubkey()), svm.latest_blockhash())
    result = svm.send_transaction(tx)
    assert not isinstance(result, FailedTransactionMetadata), result
    return [line for line in result.logs() if line.startswith("Program log:")]


@pytest.fixture(scope="module")
def hello(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, bytes]:
    return compile_snippet(tmp_path_factory.mktemp("hello"), "hello", HELLO_C)


def insns(elf: ELFFile) -> tuple[int, bytes]:
    text = elf.get_section_by_name(".text")
    return text["sh_addr"], text.data()


def calls(text: bytes) -> list[tuple[int, int, int]]:
    """(pc, src register, imm) of every `call imm` instruction."""
    out, pc = [], 0
    while pc < len(text) // 8:
        op, regs, _, imm = struct.unpack_from("<BBhi", text, pc * 8)
        if op == 0x85:
            out.append((pc, regs >> 4, imm))
        pc += 2 if op == 0x18 else 1
    return out


# --- murmur3 ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "seed", "expected"),
    [
        (b"sol_log_", 0, 0x207559BD),  # the syscall ids the runtime registers
        (b"sol_log_64_", 0, 0x5C2A3178),
        (b"sol_invoke_signed_c", 0, 0xA22B9C85),
        (b"abort", 0, 0xB6FC1A11),
        (b"entrypoint", 0, 0x71E3CF81),
        (b"", 1, 0x514E28B7),  # reference MurmurHash3_x86_32 vectors, all tail lengths
        (b"", 0xFFFFFFFF, 0x81F16F39),
        (b"\0\0\0\0", 0, 0x2362F9DE),
        (b"aaaa", 0x9747B28C, 0x5A97808A),
        (b"Hello, world!", 0x9747B28C, 0x24884CBA),
        (b"The quick brown fox jumps over the lazy dog", 0x9747B28C, 0x2FA826CD),
    ],
)
def test_murmur3_32(data: bytes, seed: int, expected: int) -> None:
    assert murmur3_32(data, seed) == expected


# --- layouts and relocations ------------------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 3])
def test_linked_program_runs(hello: tuple[str, bytes], version: int) -> None:
    assert run(link([hello], version)) == HELLO_LOGS


def test_v3_layout_and_relocations(hello: tuple[str, bytes]) -> None:
    elf = ELFFile(io.BytesIO(link([hello], 3)))
    assert elf["e_flags"] == 3 and elf["e_machine"] == "EM_BPF"
    loads = [(p["p_flags"], p["p_vaddr"]) for p in elf.iter_segments()]
    assert loads == [(4, 0), (1, MM_REGION_SIZE)]  # PF_R rodata at 0, PF_X bytecode at 1 << 32
    assert not elf.get_section_by_name(".dynamic")
    base, text = insns(elf)
    rodata = elf.get_section_by_name(".rodata").data()
    syscall_ids = {murmur3_32(b"sol_log_"), murmur3_32(b"sol_log_64_")}
    found = calls(text)
    assert {imm for _, src, imm in found if src == 0} == syscall_ids
    internal = [(pc, imm) for pc, src, imm in found if src == 1]
    assert len(internal) == 2
    for pc, imm in internal:  # pc-relative targets land on function starts (after an exit or at 0)
        target = pc + 1 + imm
        assert 0 <= target < len(text) // 8
        assert target == 0 or text[(target - 1) * 8] == 0x95
    lddw_targets = [struct.unpack_from("<I", text, at + 4)[0] | struct.unpack_from("<I", text, at + 12)[0] << 32
                    for at in range(0, len(text), 8) if text[at] == 0x18]
    assert any(rodata[t : t + 5] == b"hello" for t in lddw_targets if t < len(rodata))
    assert elf["e_entry"] >= base
    assert {b"first", b"second"} <= pointed_strings(elf, 0)


def test_v0_layout_and_dynamic_relocations(hello: tuple[str, bytes]) -> None:
    elf = ELFFile(io.BytesIO(link([hello], 0)))
    assert elf["e_type"] == "ET_DYN" and elf["e_flags"] == 0
    dynsym = elf.get_section_by_name(".dynsym")
    rels = list(elf.get_section_by_name(".rel.dyn").iter_relocations())
    assert {r["r_info_type"] for r in rels} == {10}  # R_BPF_64_32 only
    names = [dynsym.get_symbol(r["r_info_sym"]).name for r in rels]
    assert sorted(set(names)) == ["sol_log_", "sol_log_64_"] and len(names) == 3
    base, text = insns(elf)
    for r in rels:  # each site is `call -1`, the loader writes the hash
        assert struct.unpack_from("<Bxxxi", text, r["r_offset"] - base) == (0x85, -1)
    text_sec = elf.get_section_by_name(".text")
    assert text_sec["sh_addr"] == text_sec["sh_offset"]  # the v0 loader requires vaddr == offset
    strings = pointed_strings(elf, MM_REGION_SIZE + elf.get_section_by_name(".rodata")["sh_addr"])
    assert {b"first", b"second"} <= strings


def pointed_strings(elf: ELFFile, rodata_vaddr: int) -> set[bytes]:
    """C strings that 8-byte pointers stored in .rodata point at (R_BPF_64_ABS64 results)."""
    rodata = elf.get_section_by_name(".rodata").data()
    found = set()
    for at in range(0, len(rodata) - 7, 8):
        off = struct.unpack_from("<Q", rodata, at)[0] - rodata_vaddr
        if 0 < off < len(rodata):
            found.add(rodata[off : rodata.index(b"\0", off)])
    return found


def test_two_objects_link_and_run(tmp_path: Path) -> None:
    lib = compile_snippet(tmp_path, "lib", r"""
        typedef unsigned long u64;
        const char greeting[] = "from lib";
        u64 twice(u64 x) { return 2 * x; }
    """)
    main = compile_snippet(tmp_path, "main", r"""
        typedef unsigned long u64;
        extern void sol_log_(const char *, u64);
        extern void sol_log_64_(u64, u64, u64, u64, u64);
        extern const char greeting[];
        u64 twice(u64);
        u64 entrypoint(const unsigned char *input) {
          (void)input; sol_log_(greeting, 8); sol_log_64_(twice(21), 0, 0, 0, 0); return 0;
        }
    """)
    for version in (0, 3):
        assert run(link([main, lib], version)) == ["Program log: from lib", "Program log: 0x2a, 0x0, 0x0, 0x0, 0x0"]


# --- rejections -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("decl", "section"), [("int counter = 5;", ".data"), ("int counter;", ".bss")])
def test_writable_globals_rejected_in_one_line(tmp_path: Path, decl: str, section: str) -> None:
    obj = compile_snippet(tmp_path, "bad", decl + r"""
        typedef unsigned long u64;
        u64 entrypoint(const unsigned char *in) { (void)in; return (u64)counter++; }
    """)
    with pytest.raises(LinkError) as info:
        link([obj], 3)
    message = str(info.value)
    assert "\n" not in message
    assert section in message and "counter" in message and "writable" in message


def test_undefined_symbol_rejected(tmp_path: Path) -> None:
    obj = compile_snippet(tmp_path, "undef", r"""
        typedef unsigned long u64;
        extern u64 not_a_syscall(u64);
        u64 entrypoint(const unsigned char *in) { return not_a_syscall(in[0]); }
    """)
    with pytest.raises(LinkError, match="undefined symbol 'not_a_syscall'"):
        link([obj], 0)


def test_other_rejections(tmp_path: Path, hello: tuple[str, bytes]) -> None:
    with pytest.raises(LinkError, match="duplicate symbol triple"):
        link([hello, ("again.o", hello[1])], 3)
    with pytest.raises(LinkError, match="entry symbol 'main'"):
        link([hello], 3, entry="main")
    with pytest.raises(LinkError, match="not an ELF"):
        link([("junk.o", b"not an elf at all")], 3)
    with pytest.raises(LinkError, match="unsupported SBPF version"):
        link([hello], 4)


# --- build ----------------------------------------------------------------------------------------


def test_build_is_reproducible(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = federity_build.build(tmp_path / "a")
    monkeypatch.setenv("ZIG_GLOBAL_CACHE_DIR", str(tmp_path / "cold-zig-cache"))  # really recompile
    second = federity_build.build(tmp_path / "b")
    assert sorted(first) == [0, 3]
    for version in first:
        assert first[version].read_bytes() == second[version].read_bytes()
    assert first[0].read_bytes() != first[3].read_bytes()


def test_build_cli_reports_errors_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.c"
    bad.write_text("int entrypoint(void) { return undeclared; }\n")
    monkeypatch.setattr(federity_build, "SOURCES", (bad,))
    assert federity_build.main(["--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: compiling bad.c failed") and "undeclared" in err
