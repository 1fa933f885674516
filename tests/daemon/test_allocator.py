"""allocator.tune: the daemon's pattern of frees (a message and its blocks) stops costing new pages.

Each case runs in a fresh interpreter (malloc's thresholds are per process and cannot be read
back): 40 rounds of what serving one bitswap message allocates (four 256 KiB blocks copied out,
joined into a 1 MiB message, framed into a growing buffer), counting minor page faults.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

ROUNDS = textwrap.dedent(
    """
    import resource, sys
    if sys.argv[1] == "tuned":
        from fednode.daemon import allocator
        assert allocator.tune() and allocator.tune()  # True on glibc (this machine), and repeatable
    block = bytes(range(256)) * 1024

    def serve_one_message():
        blocks = [bytes(memoryview(block)) for _ in range(4)]
        message = b"".join(blocks)
        framed = bytearray()
        view = memoryview(message)
        for off in range(0, len(message), 65519):
            framed += bytes(view[off:off + 65519])
        return len(framed)

    for _ in range(3):
        serve_one_message()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(40):
        serve_one_message()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def _faults(mode: str) -> int:
    done = subprocess.run([sys.executable, "-c", ROUNDS, mode], capture_output=True, text=True, timeout=60, check=True)
    return int(done.stdout.strip())


def test_tuned_thresholds_stop_the_page_churn() -> None:
    untuned, tuned = _faults("default"), _faults("tuned")
    pages = 40 * 3 * (1 << 20) // 4096  # what 40 rounds touch (3 MiB each)
    assert untuned > pages // 2, untuned  # glibc's defaults give those pages back every round
    assert tuned < pages // 50, (tuned, untuned)  # tuned: the heap keeps them
