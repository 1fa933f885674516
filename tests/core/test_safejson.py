"""JSON from outside never crashes the process, whatever a dependency did to the recursion limit.

py_ecc raises the interpreter's recursion limit to 100,000 on import; after that the stdlib's
C scanner overflows the C stack on ``"[" * 100000`` (a segmentation fault, measured). Each check
runs in a child process that imported py_ecc first, so a crash fails the test instead of pytest.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from helpers import ROOT

from fednode import safejson

DEEP = "[" * 100_000 + "]" * 100_000

CHECKS = {
    "safejson": "from fednode import safejson\ntry:\n safejson.loads(DEEP)\nexcept ValueError as e: print(e)",
    "safetensors header": "from fednode.tensors.modelio import parse_header\nfrom fednode.errors import FednodeError\n"
                          "try:\n parse_header(DEEP.encode(), 0, 'm.safetensors')\nexcept FednodeError as e: print(e)",
    "API body": "from fednode.daemon.api import parse_body\nfrom fednode.daemon.routes import HTTPError\n"
                "try:\n parse_body(('{\"a\":' + DEEP + '}').encode())\nexcept HTTPError as e: print(e)",
}


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_deep_json_is_refused_not_a_crash(name: str) -> None:
    code = f"import sys, py_ecc\nassert sys.getrecursionlimit() >= 100000\nDEEP = {DEEP[:1]!r} * 100000\n{CHECKS[name]}"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert "deep" in done.stdout, done.stdout


def test_depth_ignores_brackets_in_strings_and_escapes() -> None:
    assert safejson.depth(b'{"a": [1, [2]], "s": "[[[[\\"[["}') == 3
    assert safejson.depth("") == 0 and safejson.depth(b"[]") == 1
    assert safejson.loads('{"x": [1]}') == {"x": [1]}
    with pytest.raises(ValueError, match="deeper than 2"):
        safejson.loads("[[[]]]", max_depth=2)
