"""The NFT's PNG (fednode/nft/image.py, png.py, font.py), read back by an independent PNG reader
written here from the PNG specification: chunks, CRCs, IHDR, the zlib stream (inflated by the real
zlib), filters undone, pixels compared."""

from __future__ import annotations

import struct
import zlib
from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from fednode.nft import font
from fednode.nft.image import BACKGROUND, CHART, LINE, PALETTE, SIZE, TEXT, render_image
from fednode.nft.png import deflate, encode_png
from fednode.nft.summary import RepoSummary
from protocol.unixfs import add_bytes

PUBLIC = RepoSummary(name="cancer-classifier", repo_id=bytes(range(32)), head=bytes(32), private=False,
                     commits=12, contributors=3, metric="loss", series=(0.9, 0.6, 0.4, 0.35, 0.3),
                     latest=(("loss", 0.3),))


def read_png(data: bytes) -> tuple[dict[str, int], list[tuple[int, int, int]], list[bytes]]:
    """(IHDR fields, palette, rows of palette indices); asserts every rule it relies on."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length:pos + 12 + length])
        assert crc == zlib.crc32(kind + body) and len(body) == length, kind
        chunks.append((kind, body))
        pos += 12 + length
    assert pos == len(data)
    assert [k for k, _ in chunks] == [b"IHDR", b"PLTE", b"IDAT", b"IEND"] and chunks[-1][1] == b""
    w, h, depth, color, comp, filt, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    ihdr = {"width": w, "height": h, "depth": depth, "color": color, "compression": comp, "filter": filt,
            "interlace": interlace}
    plte = chunks[1][1]
    assert len(plte) % 3 == 0
    palette = [tuple(plte[i:i + 3]) for i in range(0, len(plte), 3)]
    raw = zlib.decompress(b"".join(b for k, b in chunks if k == b"IDAT"))
    assert len(raw) == h * (w + 1)  # one filter byte per row
    rows, prev = [], bytes(w)
    for y in range(h):
        ftype, line = raw[y * (w + 1)], raw[y * (w + 1) + 1:(y + 1) * (w + 1)]
        assert ftype in (0, 2)  # the writer uses None/Up only; Sub/Average/Paeth would need more here
        row = bytes((a + (b if ftype == 2 else 0)) & 0xFF for a, b in zip(line, prev, strict=True))
        rows.append(row)
        prev = row
    assert max(max(r) for r in rows) < len(palette)
    return ihdr, palette, rows  # type: ignore[return-value]


def test_the_png_parses_and_shows_the_chart() -> None:
    png = render_image(PUBLIC)
    ihdr, palette, rows = read_png(png)
    assert ihdr == {"width": SIZE, "height": SIZE, "depth": 8, "color": 3, "compression": 0, "filter": 0,
                    "interlace": 0}
    assert palette == PALETTE and rows[0][0] == BACKGROUND
    left, top, right, bottom = CHART
    plot = [row[left + 1:right] for row in rows[top + 1:bottom]]
    assert sum(row.count(LINE) for row in plot) > 500  # the line and its points
    # the first value is the series' maximum: its point sits at the top-left of the plot area
    assert rows[top + 3][left + 2] == LINE and rows[bottom - 3][left + 2] != LINE
    # the last value is the minimum: bottom right
    assert rows[bottom - 3][right - 3] == LINE
    # the name in the font: the first glyph "C" at (24, 56), scale 3: its top row is .###.
    c_top = rows[56][24:24 + 15]
    assert c_top == bytes([BACKGROUND] * 3 + [TEXT] * 9 + [BACKGROUND] * 3)
    assert len(png) < 20_000  # flat areas compress to almost nothing


def test_deterministic_and_follows_the_series() -> None:
    png = render_image(PUBLIC)
    assert render_image(replace(PUBLIC)) == png
    other = render_image(replace(PUBLIC, series=(0.9, 0.6, 0.5, 0.35, 0.3)))
    assert other != png
    _, _, a = read_png(png)
    _, _, b = read_png(other)
    changed = [y for y in range(SIZE) if a[y] != b[y]]
    left, top, right, bottom = CHART
    assert changed and all(top <= y <= bottom or y >= 444 for y in changed)  # the chart (and the MIN/MAX line)
    assert render_image(replace(PUBLIC, name="another")) != png
    assert render_image(replace(PUBLIC, series=(), metric=None)) != png  # "NO METRICS RECORDED"


def test_the_bytes_are_pinned() -> None:
    """Golden CIDs: a change of these bytes (the drawing, the font, our deflate) changes every NFT's
    image CID, so it must be deliberate; and no zlib build or platform can change them."""
    assert str(add_bytes(render_image(PUBLIC))) == "bafkreiepcl4sainfpdnuiuyrhb7ilhbkqoggsnc6ygnltsgz3wma54rnvu"
    private = render_image(replace(PUBLIC, private=True))
    assert str(add_bytes(private)) == "bafkreiar4tca6wzk7k33ajcxjtfwpowzucgr2fidmw7ylzqk3qo6e7r5ra"


def test_a_private_repositorys_image_shows_the_name_only() -> None:
    private = replace(PUBLIC, private=True)
    png = render_image(private)
    read_png(png)
    # nothing but the name: metrics and counts in the summary change nothing
    assert render_image(replace(private, series=(1.0, 2.0), commits=99, contributors=7)) == png
    assert render_image(replace(private, name="other-name")) != png
    _, _, rows = read_png(png)
    left, top, right, bottom = CHART
    assert all(LINE not in row for row in rows)


def test_extreme_values_draw() -> None:
    for series in ((1e308, -1e308, 0.0), (5e-324, 0.0), (3.0,), (2.0, 2.0, 2.0)):
        read_png(render_image(replace(PUBLIC, series=series)))


def test_long_names_are_cut_to_the_image() -> None:
    png = render_image(replace(PUBLIC, name="x" * 1024))
    _, _, rows = read_png(png)
    assert all(row[-10:] == bytes([BACKGROUND]) * 10 for row in rows)  # nothing drawn past the margin


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 255), st.integers(1, 700)), max_size=40))
def test_our_deflate_inflates_with_the_real_zlib(runs: list[tuple[int, int]]) -> None:
    data = b"".join(bytes([v]) * n for v, n in runs)
    assert zlib.decompress(deflate(data)) == data


def test_encode_png_refuses_bad_pixels() -> None:
    import pytest

    with pytest.raises(ValueError):
        encode_png(2, 2, bytes(3), [(0, 0, 0)])
    with pytest.raises(ValueError):
        encode_png(2, 2, bytes([0, 0, 0, 1]), [(0, 0, 0)])
    assert font.glyph("a") == font.glyph("A") and font.glyph("\u00e9") == font.glyph("?")
