"""Every decoder of outside bytes raises only its own error and accepts one encoding per value.

(a) the stored corpus (tests/protocol/fuzz_corpus/<decoder>/: sampled mutations of valid encodings, and
``refuse-*.bin``, one input per bug found, each of which must be refused); (b) hypothesis-driven
mutations and raw bytes for every decoder. The long run is ``tests/protocol/fuzz_decoders.py --inputs 100000``.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from fuzz_decoders import Decoder, Foreign, check, corpus_files, mutate, registry, regressions, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fednode.errors import FednodeError
from fednode.node import open_node
from protocol.multiformats import FormatError

DECODERS = registry()
EXAMPLES = 1500  # per decoder: about 1.5 s each on this 2-core machine, ~35 s in all


@pytest.mark.parametrize("name", list(DECODERS))
def test_stored_corpus_raises_only_the_decoders_error(name: str) -> None:
    dec = DECODERS[name]
    files = corpus_files(name)
    assert len(files) >= 10, f"no stored corpus for {name}: run tests/protocol/fuzz_decoders.py --save-corpus"
    for path in files:
        accepted = check(dec, path.read_bytes())  # raises Foreign on any other exception type
        assert not (accepted and path.name.startswith("refuse-")), f"{path.name} must be refused"
    for seed in dec.seeds:
        assert check(dec, seed), f"{name}: a valid encoding was refused"


def test_every_regression_is_stored_and_refused() -> None:
    for name, inputs in regressions().items():
        for label, data in inputs.items():
            path = Path(corpus_files(name)[0]).parent / f"refuse-{label}.bin"
            assert path.read_bytes() == data, f"{path} is stale: regenerate the corpus"
            assert check(DECODERS[name], data) is False


@pytest.mark.parametrize("name", list(DECODERS))
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rnd=st.randoms(use_true_random=False), raw=st.binary(max_size=96))
def test_fuzzed_inputs_raise_only_the_decoders_error(name: str, rnd: random.Random, raw: bytes) -> None:
    dec = DECODERS[name]
    check(dec, mutate(dec, rnd))
    check(dec, raw)


def test_the_harness_reports_foreign_exceptions_and_second_encodings() -> None:
    """The checks themselves can fail: a TypeError, a multi-line error and a lenient decoder are findings."""
    def crash(data: bytes) -> None:
        {data: 1}.get([data])  # TypeError: unhashable list, like the 13-byte gossip message

    with pytest.raises(Foreign, match="TypeError"):
        check(Decoder("crash", crash, (FormatError,), [b""]), b"x")

    def two_lines(data: bytes) -> None:
        raise FormatError("one\ntwo")

    with pytest.raises(Foreign, match="multi-line"):
        check(Decoder("lines", two_lines, (FormatError,), [b""]), b"x")
    lenient = Decoder("lenient", lambda d: d.strip(), (FormatError,), [b"a"], reencode=lambda v: v)
    with pytest.raises(Foreign, match="non-canonical"):
        check(lenient, b" a")
    stats, _ = run(DECODERS["commit"], 40, seed=3)
    assert stats.inputs == 40 and stats.accepted + stats.refused == 40 and not stats.foreign


def _set_config(home: Path, old: str, new: str) -> None:
    path = home / "config.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(("old", "new", "key"), [
    ("scale_bits = 24", 'scale_bits = "x"', "[repository_defaults] scale_bits"),
    ("scale_bits = 24", "scale_bits = true", "[repository_defaults] scale_bits"),
    ("mdns = false", 'mdns = false\nsync_interval = "abc"', "[network] sync_interval"),
    ("port = 5710", "port = 5710.0", "[api] port"),
    ("fsync = true", 'fsync = "yes"', "[store] fsync"),
    ('backend = "embedded"', 'backend = "embedded"\ntimeout_s = [1]', "[chain] timeout_s"),
])
def test_a_config_value_of_the_wrong_type_is_one_line_naming_the_key(home: Path, cli, old: str, new: str,
                                                                    key: str) -> None:
    _set_config(home, old, new)
    with pytest.raises(FednodeError, match=key.replace("[", r"\[").replace("]", r"\]")):
        open_node(home)
    result = cli("repo", "list", ok=False)
    assert result.exit_code == 1 and key in result.stderr and result.stderr.count("\n") == 1


def test_a_config_nested_too_deeply_is_one_line(home: Path) -> None:
    # deeper than any recursion limit a dependency sets (py_ecc raises it to 100,000 on import)
    _set_config(home, "bootstrap = []", "bootstrap = " + "[" * 150_000 + "]" * 150_000)
    with pytest.raises(FednodeError, match="nested too deeply"):
        open_node(home)
