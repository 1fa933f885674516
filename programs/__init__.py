"""The federity on-chain program (C), its SDK header and its build toolchain (compiler + SBPF linker)."""
