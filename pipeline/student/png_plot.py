"""Line charts as PNG files with numpy and zlib only (no plotting dependency).

Each panel draws its series scaled to the panel's own range on a light grid;
the caller documents what each colour means (report.md carries the legend and
the numbers). Good enough to see a loss curve go down, by design no more.

    >>> from pipeline.student.png_plot import write_line_chart
    >>> write_line_chart("/tmp/x.png", [{"loss": ([0, 1, 2], [3.0, 2.0, 1.5])}])
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]
Series = dict[str, tuple[Sequence[float], Sequence[float]]]


def encode_png(image: np.ndarray) -> bytes:
    """RGB uint8 (H, W, 3) array -> PNG bytes."""
    h, w, _ = image.shape
    raw = b"".join(b"\x00" + image[y].tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + \
        chunk(b"IEND", b"")


def draw_line(img: np.ndarray, x0: float, y0: float, x1: float, y1: float, colour) -> None:
    steps = int(max(abs(x1 - x0), abs(y1 - y0))) + 1
    xs = np.linspace(x0, x1, steps).round().astype(int)
    ys = np.linspace(y0, y1, steps).round().astype(int)
    for dy in (0, 1):
        img[np.clip(ys + dy, 0, img.shape[0] - 1), np.clip(xs, 0, img.shape[1] - 1)] = colour


def draw_panel(img: np.ndarray, series: Series, box: tuple[int, int, int, int]) -> None:
    top, left, height, width = box
    img[top:top + height, left] = 0
    img[top + height - 1, left:left + width] = 0
    for frac in (0.25, 0.5, 0.75):
        img[top + int(height * frac), left + 1:left + width:4] = 200
    points = [(np.asarray(x, float), np.asarray(y, float)) for x, y in series.values()]
    finite = [(x[np.isfinite(y)], y[np.isfinite(y)]) for x, y in points]
    xs = np.concatenate([x for x, _ in finite] or [np.zeros(1)])
    ys = np.concatenate([y for _, y in finite] or [np.zeros(1)])
    if xs.size == 0:
        return
    xlo, xhi = xs.min(), max(xs.max(), xs.min() + 1e-9)
    ylo, yhi = ys.min(), max(ys.max(), ys.min() + 1e-9)
    for colour, (x, y) in zip(COLOURS, finite):
        px = left + 2 + (x - xlo) / (xhi - xlo) * (width - 6)
        py = top + height - 3 - (y - ylo) / (yhi - ylo) * (height - 6)
        for i in range(len(px) - 1):
            draw_line(img, px[i], py[i], px[i + 1], py[i + 1], colour)
        if len(px) == 1:
            img[int(py[0]) - 2:int(py[0]) + 3, int(px[0]) - 2:int(px[0]) + 3] = colour


def write_line_chart(path: str | Path, panels: Sequence[Series], width: int = 640,
                     panel_height: int = 220) -> None:
    """One panel per entry of `panels`, stacked vertically; series coloured in COLOURS order."""
    img = np.full((panel_height * len(panels) + 20, width, 3), 255, np.uint8)
    for i, series in enumerate(panels):
        draw_panel(img, series, (10 + i * panel_height, 40, panel_height - 20, width - 60))
    Path(path).write_bytes(encode_png(img))
