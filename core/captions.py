"""Panel tiling and caption strips of recorded videos (``qgf record``, the viewer's record
button).

Frame layout everywhere: ``[H, W, 3]`` uint8 RGB, row 0 at the top.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

Color = tuple[int, int, int]
SUCCESS_COLOR: Color = (80, 220, 100)
DONE_COLOR: Color = (235, 170, 60)
_STRIP_BG: Color = (24, 24, 28)
_TEXT: Color = (235, 235, 235)
_TEXT_DIM: Color = (160, 160, 170)


# ---------------------------------------------------------------------------------------------
# Tiling


def grid_shape(n: int, cols: int | None = None) -> tuple[int, int]:
    """``(rows, cols)`` for ``n`` panels: ``cols`` if given, else as square as possible."""
    if n < 1:
        raise ValueError(f"need at least one panel, got {n}")
    if cols is None:
        cols = int(np.ceil(np.sqrt(n)))
    if cols < 1:
        raise ValueError(f"cols must be >= 1, got {cols}")
    cols = min(cols, n)
    return int(np.ceil(n / cols)), cols


def tile(
    panels: Sequence[np.ndarray],
    cols: int | None = None,
    gap: int = 2,
    fill: Color = (0, 0, 0),
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Tile equal-size panels row-major into one frame.

    Args:
        panels: ``P`` arrays ``[h, w, 3]`` uint8, all the same shape.
        cols: panels per row (default: as square as possible).
        gap: pixels between panels, filled with ``fill``; none around the edge.
        out: optional ``[H, W, 3]`` buffer to draw into (from a previous call), reused.

    Returns:
        ``[rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3]`` uint8.
    """
    if not panels:
        raise ValueError("need at least one panel")
    h, w = panels[0].shape[:2]
    for p in panels:
        if p.shape != panels[0].shape:
            raise ValueError(f"panels differ in shape: {list(panels[0].shape)} vs {list(p.shape)}")
    rows, cols = grid_shape(len(panels), cols)
    shape = (rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap, 3)
    if out is None or out.shape != shape:
        out = np.empty(shape, np.uint8)
    out[...] = fill
    for i, p in enumerate(panels):
        r, c = divmod(i, cols)
        y, x = r * (h + gap), c * (w + gap)
        out[y : y + h, x : x + w] = p
    return out


def draw_border(frame: np.ndarray, color: Color, width: int = 3) -> np.ndarray:
    """Draw a ``width``-pixel frame of ``color`` inside the edge of ``frame``, in place."""
    frame[:width] = color
    frame[-width:] = color
    frame[:, :width] = color
    frame[:, -width:] = color
    return frame


# ---------------------------------------------------------------------------------------------
# Captions


@dataclass
class CaptionFields:
    """What the caption strip under a panel says.

    Attributes:
        env: env / dataset name.
        estimator: gradient estimator name (``qgf``, ``none``, ...).
        weight: guidance weight w.
        step: env step of the episode shown.
        q: Q of the executed action at this step (None when not known).
        success: the episode has succeeded.
        done: the episode has ended (success or time limit); the panel holds its last frame.
        episode: episode index, shown when not None.
        path_scale: magnification of the drawn candidate paths; shown when not 1, since a
            scaled view must say so.
    """

    env: str
    estimator: str
    weight: float
    step: int
    q: float | None = None
    success: bool = False
    done: bool = False
    episode: int | None = None
    path_scale: float = 1.0

    @property
    def status(self) -> str:
        """``"SUCCESS"``, ``"DONE"`` (ended without success) or ``""`` while running."""
        if self.success:
            return "SUCCESS"
        return "DONE" if self.done else ""


@lru_cache(maxsize=8)
def _font(size: int):  # -> PIL.ImageFont.FreeTypeFont | ImageFont
    from PIL import ImageFont

    # Pillow's bundled default font: no system font needed, same look on every machine.
    return ImageFont.load_default(size=size)


def caption_height(width: int) -> int:
    """Height in pixels of the caption strip for a panel ``width`` pixels wide."""
    return 2 * _font_size(width) + 3 * _line_gap(width)


def _font_size(width: int) -> int:
    return int(np.clip(width // 25, 10, 22))


def _line_gap(width: int) -> int:
    return max(3, _font_size(width) // 3)


def _fit(draw, text: str, font, max_width: float) -> str:
    """``text`` cut with an ellipsis so that it fits ``max_width`` pixels."""
    if draw.textlength(text, font=font) <= max_width:
        return text
    while text and draw.textlength(text + "...", font=font) > max_width:
        text = text[:-1]
    return text + "..."


def caption_strip(fields: CaptionFields, width: int) -> np.ndarray:
    """Render the caption for one panel.

    Line 1: estimator and weight, with the status (SUCCESS green, DONE amber) on the right.
    Line 2: env, episode, step and Q.

    Returns:
        ``[caption_height(width), width, 3]`` uint8.
    """
    from PIL import Image, ImageDraw

    size, gap = _font_size(width), _line_gap(width)
    font = _font(size)
    im = Image.new("RGB", (width, caption_height(width)), _STRIP_BG)
    draw = ImageDraw.Draw(im)
    pad = gap + 1
    status = fields.status
    status_w = draw.textlength(status, font=font) if status else 0.0
    if status:
        color = SUCCESS_COLOR if fields.success else DONE_COLOR
        draw.text((width - pad - status_w, gap), status, font=font, fill=color)
    head = f"{fields.estimator}   w = {fields.weight:g}"
    if fields.path_scale != 1.0:
        head += f"   paths x{fields.path_scale:g}"
    draw.text((pad, gap), _fit(draw, head, font, width - 3 * pad - status_w), font=font, fill=_TEXT)
    parts = [fields.env]
    if fields.episode is not None:
        parts.append(f"ep {fields.episode}")
    parts.append(f"step {fields.step}")
    if fields.q is not None:
        parts.append(f"Q = {fields.q:.2f}")
    tail = "   ".join(parts[1:])
    tail_w = draw.textlength(tail, font=font)
    env = _fit(draw, parts[0], font, width - 3 * pad - tail_w)
    y2 = 2 * gap + size
    draw.text((pad, y2), env, font=font, fill=_TEXT_DIM)
    draw.text((width - pad - tail_w, y2), tail, font=font, fill=_TEXT)
    return np.asarray(im)


def with_caption(frame: np.ndarray, fields: CaptionFields) -> np.ndarray:
    """``frame [H, W, 3]`` with its caption strip appended below: ``[H + h, W, 3]``."""
    strip = caption_strip(fields, frame.shape[1])
    return np.concatenate([frame, strip], axis=0)


# ---------------------------------------------------------------------------------------------
# Start/stop recording for an interactive app
