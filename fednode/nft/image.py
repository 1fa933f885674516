"""The NFT's picture: a 512x512 palette PNG that fednode draws itself (no imaging library).

A public repository: its name, its commit and contributor counts, and a line chart of one metric
(``RepoSummary.metric``: "loss" when recorded, see ``summary.PREFERRED_METRICS``) over the commits of
the head's first-parent chain, oldest on the left, with its last, smallest and largest values.
A private repository: its name and "PRIVATE REPOSITORY", nothing else. The same summary gives the
same bytes on every node (integer drawing from IEEE float arithmetic, our own deflate: ``png``).
"""

from __future__ import annotations

from fednode.nft import font
from fednode.nft.png import encode_png
from fednode.nft.summary import RepoSummary

SIZE = 512
PALETTE = [(15, 23, 42), (248, 250, 252), (56, 189, 248), (51, 65, 85), (148, 163, 184)]
BACKGROUND, TEXT, LINE, GRID, DIM = range(5)
CHART = (48, 150, 488, 430)  # left, top, right, bottom (inclusive) of the plot area
MARGIN = 24


class Canvas:
    def __init__(self, width: int, height: int, fill: int) -> None:
        self.width, self.height = width, height
        self.pixels = bytearray([fill]) * (width * height)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: int) -> None:
        """Fill the rectangle with corners (x0, y0) and (x1, y1), inclusive, clipped to the canvas."""
        x0, x1 = max(x0, 0), min(x1, self.width - 1)
        for y in range(max(y0, 0), min(y1, self.height - 1) + 1):
            if x0 <= x1:
                self.pixels[y * self.width + x0:y * self.width + x1 + 1] = bytes([color]) * (x1 - x0 + 1)

    def text(self, x: int, y: int, text: str, scale: int, color: int) -> None:
        for i, ch in enumerate(text):
            left = x + i * font.ADVANCE * scale
            for row, bits in enumerate(font.glyph(ch)):
                for col in range(font.WIDTH):
                    if bits >> (font.WIDTH - 1 - col) & 1:
                        top = y + row * scale
                        self.rect(left + col * scale, top, left + (col + 1) * scale - 1, top + scale - 1, color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: int) -> None:
        """Bresenham's line, two pixels thick."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.rect(x0, y0, x0 + 1, y0 + 1, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy


def fit(text: str, scale: int, width: int) -> str:
    """``text`` cut (ending "..") to at most ``width`` pixels at ``scale``."""
    most = (width // scale + 1) // font.ADVANCE
    return text if len(text) <= most else text[:max(most - 2, 0)] + ".."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "S")


def number(value: float) -> str:
    return f"{value:.4g}".upper()


def _chart(canvas: Canvas, series: tuple[float, ...]) -> None:
    left, top, right, bottom = CHART
    for i in range(5):  # grid: the frame and three lines between
        y = top + (bottom - top) * i // 4
        canvas.rect(left, y, right, y, GRID)
    canvas.rect(left, top, left, bottom, GRID)
    canvas.rect(right, top, right, bottom, GRID)
    low, high = min(series) / 2, max(series) / 2  # halves: the span of two finite floats stays finite
    span = high - low

    def point(i: int, value: float) -> tuple[int, int]:
        x = left + 2 + (round(i * (right - left - 5) / (len(series) - 1)) if len(series) > 1 else (right - left) // 2)
        frac = (value / 2 - low) / span if span > 0 else 0.5
        return x, bottom - 3 - round(frac * (bottom - top - 6))

    points = [point(i, v) for i, v in enumerate(series)]
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        canvas.line(x0, y0, x1, y1, LINE)
    if len(points) <= 64:
        for x, y in points:
            canvas.rect(x - 2, y - 2, x + 3, y + 3, LINE)


def render_image(summary: RepoSummary) -> bytes:
    """The PNG bytes for ``summary`` (deterministic)."""
    canvas = Canvas(SIZE, SIZE, BACKGROUND)
    canvas.text(MARGIN, MARGIN, "FEDNODE MODEL", 2, DIM)
    width = SIZE - 2 * MARGIN
    scale = 3 if len(summary.name) * font.ADVANCE * 3 <= width + 3 else 2
    canvas.text(MARGIN, 56, fit(summary.name, scale, width), scale, TEXT)
    if summary.private:
        canvas.text((SIZE - font.text_width("PRIVATE REPOSITORY", 3)) // 2, 245, "PRIVATE REPOSITORY", 3, DIM)
        return encode_png(SIZE, SIZE, bytes(canvas.pixels), PALETTE)
    counts = f"{_count(summary.commits, 'COMMIT')}  {_count(summary.contributors, 'CONTRIBUTOR')}"
    canvas.text(MARGIN, 100, fit(counts, 2, width), 2, DIM)
    if summary.metric is None or not summary.series:
        canvas.text(CHART[0] + 60, (CHART[1] + CHART[3]) // 2, "NO METRICS RECORDED", 2, DIM)
        return encode_png(SIZE, SIZE, bytes(canvas.pixels), PALETTE)
    _chart(canvas, summary.series)
    s = summary.series
    canvas.text(MARGIN, 444, fit(f"{summary.metric}: {number(s[-1])}", 2, width), 2, TEXT)
    canvas.text(MARGIN, 470, fit(f"MIN {number(min(s))}  MAX {number(max(s))}", 2, width), 2, DIM)
    return encode_png(SIZE, SIZE, bytes(canvas.pixels), PALETTE)
