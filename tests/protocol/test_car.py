"""protocol/car.py: CARv1 written and read back; CARv2 read; every malformed, truncated, oversized or
lying CAR refused with one CarError line (the import's checks above it: tests/workflows/test_carfiles.py)."""

from __future__ import annotations

import io

import pytest

from protocol import dagcbor
from protocol.car import CARV2_PRAGMA, MAX_HEADER, CarError, encode_section, read_car, write_car
from protocol.multiformats import CID, DAG_CBOR, RAW, encode_varint

BLOCKS = [(CID.hash(RAW, bytes([i]) * (i + 1)), bytes([i]) * (i + 1)) for i in range(4)]
NODE = dagcbor.encode({"links": [cid for cid, _ in BLOCKS]})
ROOT = CID.hash(DAG_CBOR, NODE)


def car(blocks: list[tuple[CID, bytes]] | None = None, roots: list[CID] | None = None) -> bytes:
    out = io.BytesIO()
    write_car(out, [ROOT] if roots is None else roots, [(ROOT, NODE), *BLOCKS] if blocks is None else blocks)
    return out.getvalue()


def header(value: object) -> bytes:
    raw = dagcbor.encode(value)
    return encode_varint(len(raw)) + raw


def carv2(payload: bytes, padding: int = 7, index: bytes = b"", lie: int = 0, tail: bytes = b"") -> bytes:
    """A CARv2 around a CARv1 ``payload``: padding before it, an optional index after it, a data
    size off by ``lie`` bytes, ``tail`` appended."""
    data_offset = len(CARV2_PRAGMA) + 40 + padding
    data_size = len(payload) + lie
    index_offset = data_offset + len(payload) + 3 if index else 0
    fixed = bytes(16) + b"".join(n.to_bytes(8, "little") for n in (data_offset, data_size, index_offset))
    body = CARV2_PRAGMA + fixed + bytes(padding) + payload
    if index:
        body += bytes(3) + index
    return body + tail


def refused(data: bytes, *needles: str, max_bytes: int | None = None) -> str:
    with pytest.raises(CarError) as info:
        read_car(data, max_bytes)
    message = str(info.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_a_written_car_reads_back_with_offsets_of_its_blocks() -> None:
    data = car()
    roots, sections = read_car(data)
    assert roots == [ROOT]
    assert [(s.cid, s.block) for s in sections] == [(ROOT, NODE), *BLOCKS]
    for s in sections:
        assert data[s.offset:s.offset + len(s.block)] == s.block


def test_the_header_is_canonical_dag_cbor_roots_then_version() -> None:
    data = car()
    assert data.startswith(header({"version": 1, "roots": [ROOT]}))
    assert dagcbor.decode(data[1:1 + data[0]]) == {"roots": [ROOT], "version": 1}


def test_exact_duplicates_are_read_once() -> None:
    _, sections = read_car(car([(ROOT, NODE), *BLOCKS, BLOCKS[0], (ROOT, NODE)]))
    assert [s.cid for s in sections] == [ROOT] + [cid for cid, _ in BLOCKS]


def test_every_prefix_is_refused_or_ends_on_a_section_boundary() -> None:
    """CARv1 has no length: a cut at a section boundary is a shorter CAR (the import refuses it as
    incomplete); every other cut is a truncation error."""
    data = car()
    boundaries = {len(header({"version": 1, "roots": [ROOT]}))}
    for cid, block in [(ROOT, NODE), *BLOCKS]:
        boundaries.add(max(boundaries) + len(encode_section(cid, block)))
    for n in range(len(data)):
        if n in boundaries:
            roots, sections = read_car(data[:n])
            assert roots == [ROOT] and len(sections) < 5
        else:
            refused(data[:n], "truncated" if n else "")


def test_a_block_that_does_not_match_its_cid_is_refused() -> None:
    cid, block = BLOCKS[2]
    refused(car([(cid, block[:-1] + b"\xff")]), "does not match its hash", str(cid))


def test_unknown_codecs_and_hashes_are_refused() -> None:
    dag_json = encode_varint(1) + encode_varint(0x0129) + bytes([0x12, 32]) + bytes(32)
    refused(car([]) + encode_varint(len(dag_json) + 1) + dag_json + b"x", "unsupported CID codec 0x129")
    blake3 = encode_varint(1) + encode_varint(RAW) + bytes([0x1E, 32]) + bytes(32)
    refused(car([]) + encode_varint(len(blake3) + 1) + blake3 + b"x", "sha2-256")
    refused(car([]) + encode_varint(3) + b"\x01\x55\x12", "CID")


@pytest.mark.parametrize("bad, needle", [
    ({"version": 1}, "exactly"),
    ({"version": 2, "roots": [ROOT]}, "exactly"),
    ({"version": 1, "roots": [ROOT], "extra": 1}, "exactly"),
    ({"version": True, "roots": [ROOT]}, "exactly"),
    ({"version": 1.0, "roots": [ROOT]}, "exactly"),
    ({"version": 1, "roots": ROOT}, "list of CIDs"),
    ({"version": 1, "roots": [bytes(ROOT)]}, "list of CIDs"),
    ([1, [ROOT]], "not a map"),
])
def test_headers_with_the_wrong_fields_are_refused(bad: object, needle: str) -> None:
    refused(header(bad), needle)


def test_headers_that_are_not_canonical_or_too_large_are_refused() -> None:
    raw = dagcbor.encode({"version": 1, "roots": [ROOT]})
    swapped = bytes([0xA2]) + raw[raw.index(b"gversion"):] + raw[1:raw.index(b"gversion")]  # version first
    refused(encode_varint(len(swapped)) + swapped, "not canonical")
    refused(encode_varint(MAX_HEADER + 1) + bytes(10), "header of")
    refused(b"\x00", "header of 0 bytes")


def test_bad_varints_are_refused() -> None:
    refused(b"\x80\x00" + car()[1:], "non-minimal varint")
    refused(b"\xff" * 12, "varint too long")
    refused(car([]) + b"\x85\x00", "non-minimal varint")


def test_sections_are_bounded() -> None:
    refused(car([]) + b"\x00", "section of 0 bytes")
    refused(car([]) + encode_varint(5 << 20) + bytes(10), "section of")
    big = bytes(2000)
    with pytest.raises(CarError, match="at most 1000"):
        from protocol.car import CarReader

        list(CarReader(io.BytesIO(car([(CID.hash(RAW, big), big)])), 1 << 20, max_block=1000))


def test_the_callers_size_limit_is_kept() -> None:
    data = car()
    assert read_car(data, len(data))[1]
    refused(data, "larger than the limit", max_bytes=len(data) - 1)
    refused(data, "larger than the limit", max_bytes=10)


def test_a_carv2_reads_its_payload_and_skips_its_index() -> None:
    for data in (carv2(car()), carv2(car(), padding=0), carv2(car(), index=b"\x01an index\x00")):
        roots, sections = read_car(data)
        assert roots == [ROOT] and [s.cid for s in sections] == [ROOT] + [c for c, _ in BLOCKS]
        for s in sections:
            assert data[s.offset:s.offset + len(s.block)] == s.block


def test_a_lying_or_malformed_carv2_is_refused() -> None:
    payload = car()
    refused(carv2(payload, lie=5), "truncated")  # claims more than there is
    refused(carv2(payload, lie=-3), "crosses the end of the CARv2 data payload")  # ends inside a section
    refused(carv2(payload, tail=b"junk"), "trailing bytes")
    refused(carv2(payload, lie=-len(payload)), "data payload")  # a data size of 0
    refused(carv2(header({"version": 2}) + payload), "CARv1 payload")  # a CARv2 inside a CARv2
    inner = carv2(payload)
    refused(inner[:len(CARV2_PRAGMA) + 30], "truncated")
    overlapping = bytearray(carv2(payload, index=b"x"))
    overlapping[len(CARV2_PRAGMA) + 32:len(CARV2_PRAGMA) + 40] = (20).to_bytes(8, "little")
    refused(bytes(overlapping), "overlaps")
    refused(carv2(payload, index=b"x" * 100), "larger than the limit", max_bytes=len(carv2(payload)) + 10)


def test_carv2_padding_is_skipped_in_chunks_within_the_limit() -> None:
    """A data offset or index offset far past the file's end: refused without reading it whole."""
    payload = car()
    far = bytearray(carv2(payload))
    far[len(CARV2_PRAGMA) + 16:len(CARV2_PRAGMA) + 24] = (1 << 40).to_bytes(8, "little")
    refused(bytes(far), "truncated")
    index_far = bytearray(carv2(payload, index=b"x"))
    index_far[len(CARV2_PRAGMA) + 32:len(CARV2_PRAGMA) + 40] = (1 << 40).to_bytes(8, "little")
    refused(bytes(index_far), "truncated")
