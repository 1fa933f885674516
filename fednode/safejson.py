"""JSON from outside (safetensors headers, API bodies, JSON-RPC requests), parsed safely.

The stdlib's C scanner recurses once per nesting level and relies on the interpreter's recursion
limit to stop; some of our dependencies raise that limit on import (py_ecc sets 100,000), and then
``json.loads("[" * 100000)`` overflows the C stack: a segmentation fault, not an exception
(measured here). So nesting is measured before parsing, without recursion.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

MAX_DEPTH = 64
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {0x5B: 1, 0x7B: 1, 0x5D: -1, 0x7D: -1}


def text(raw: bytes | bytearray | memoryview | str) -> str:
    """``raw`` as text: bytes must be UTF-8 (UnicodeDecodeError, a ValueError, otherwise). Given bytes,
    ``json.loads`` would guess UTF-16 or UTF-32 from the first bytes, and in UTF-16 a character such
    as U+2200 is the bytes 00 22: a quote to a byte scanner, which then measured depth 1 while the
    parser recursed without end. So the depth is always measured on the text that is parsed."""
    return raw if isinstance(raw, str) else bytes(raw).decode("utf-8")


def depth(raw: bytes | str) -> int:
    """Deepest nesting of arrays and objects, brackets inside strings not counted (bytes: as UTF-8)."""
    data = text(raw).encode("utf-8", "surrogatepass")
    brackets = _STRING.sub(b"", data).translate(None, _NOT_BRACKETS)
    return max(accumulate(_STEP[b] for b in brackets), default=0)


def loads(raw: bytes | str, max_depth: int = MAX_DEPTH, **kwargs: Any) -> Any:
    """``json.loads`` of UTF-8 JSON that raises ValueError for nesting deeper than ``max_depth`` (and
    for any other malformed input, non-UTF-8 bytes included), never RecursionError or a crash."""
    decoded = text(raw)
    if depth(decoded) > max_depth:
        raise ValueError(f"JSON nests deeper than {max_depth} levels")
    return json.loads(decoded, **kwargs)
