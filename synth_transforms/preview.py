"""PNG figures with Pillow: a montage of synthetic samples and a drawing of the topology graph.

- :func:`sample_montage`: one row per sample; the image, then the image with its label overlaid, in the axial,
  coronal and sagittal planes through the patch centre (radiological view: patient right on the left, anterior or
  superior at the top, for RAS voxel order). Each class keeps one colour in every figure; an optional legend
  names the classes shown.
- :func:`graph_image`: organs on a circle, explicit relations as coloured edges.
- :func:`save_png`: atomic PNG writer.
"""

from __future__ import annotations

import colorsys
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ._args import check_fraction, check_positive_int
from .io import atomic_path
from .topology import ADJACENT, DISJOINT, INSIDE, TopologyGraph

__all__ = ["class_colours", "orthogonal_slices", "sample_montage", "graph_image", "save_png", "RELATION_COLOURS"]

PLANES = ("axial", "coronal", "sagittal")
#: Edge colours of the topology drawing.
RELATION_COLOURS = {ADJACENT: (46, 160, 67), INSIDE: (31, 111, 235), DISJOINT: (218, 54, 51)}
_BACKGROUND = (255, 255, 255)
_TEXT = (20, 20, 20)
_GAP = 4


def class_colours(num_classes: int) -> np.ndarray:
    """``(num_classes, 3)`` uint8 colours, fixed per class id: hues spaced by the golden angle; class 0 is black."""
    colours = np.zeros((num_classes, 3), dtype=np.uint8)
    for k in range(1, num_classes):
        hue = (k * 0.618033988749895) % 1.0
        value = 1.0 if k % 2 else 0.8
        colours[k] = np.round(np.asarray(colorsys.hsv_to_rgb(hue, 0.75, value)) * 255)
    return colours


def orthogonal_slices(volume: np.ndarray) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices through the centre of a ``(X, Y, Z)`` RAS volume, oriented for display.

    Rows run from anterior (axial) or superior (coronal, sagittal) to the opposite side; columns from the
    patient's right (axial, coronal) or front (sagittal) to the other side.
    """
    volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(f"orthogonal_slices: expected a 3D volume, got shape {volume.shape}")
    cx, cy, cz = (s // 2 for s in volume.shape)
    planes = (volume[:, :, cz], volume[:, cy, :], volume[cx, :, :])
    return [np.flip(p.T, (0, 1)) for p in planes]


def _to_rgb(image: np.ndarray) -> np.ndarray:
    gray = np.clip(np.nan_to_num(image.astype(np.float32)), 0.0, 1.0)
    return np.repeat((gray * 255).round().astype(np.uint8)[..., None], 3, axis=-1)


def _overlay(image: np.ndarray, label: np.ndarray, colours: np.ndarray, alpha: float) -> np.ndarray:
    rgb = _to_rgb(image).astype(np.float32)
    ids = np.clip(label.astype(np.int64), 0, len(colours) - 1)
    mask = ids > 0
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colours[ids[mask]]
    return rgb.round().astype(np.uint8)


def _font() -> ImageFont.ImageFont:
    return ImageFont.load_default()


def _tile(array: np.ndarray, size: int, zoom: int) -> Image.Image:
    """An RGB array scaled by ``zoom`` (nearest) and centred on a ``size`` x ``size`` black square."""
    tile = Image.new("RGB", (size, size), (0, 0, 0))
    img = Image.fromarray(array, "RGB").resize((array.shape[1] * zoom, array.shape[0] * zoom), Image.NEAREST)
    tile.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
    return tile


def _legend(names: Sequence[str], ids: Sequence[int], colours: np.ndarray, height: int) -> Image.Image:
    """Swatches and names of the classes ``ids``, in as many columns as ``height`` needs."""
    font, row = _font(), 14
    per_column = max(1, (height - _GAP) // row)
    columns = [ids[i : i + per_column] for i in range(0, len(ids), per_column)] or [[]]
    width = max((_text_width(font, f"{k} {names[k]}") for k in ids), default=0) + 20
    legend = Image.new("RGB", (len(columns) * (width + _GAP), height), _BACKGROUND)
    draw = ImageDraw.Draw(legend)
    for c, column in enumerate(columns):
        for r, k in enumerate(column):
            x, y = c * (width + _GAP), _GAP + r * row
            draw.rectangle([x, y + 1, x + 10, y + 11], fill=tuple(int(v) for v in colours[k]))
            draw.text((x + 14, y), f"{k} {names[k]}", fill=_TEXT, font=font)
    return legend


def _text_width(font, text: str) -> int:
    left, _, right, _ = font.getbbox(text)
    return int(right - left)


def sample_montage(
    samples: Sequence[tuple[np.ndarray, np.ndarray]],
    class_names: Sequence[str] | None = None,
    num_classes: int | None = None,
    legend: bool = True,
    zoom: int = 2,
    alpha: float = 0.5,
) -> Image.Image:
    """Montage of ``(image, label)`` pairs: per row, 3 image planes then 3 planes with the label overlaid.

    Args:
        samples: ``(image, label)`` pairs of ``(X, Y, Z)`` arrays (a leading channel of 1 is dropped); images in
            [0, 1], labels integer class ids.
        class_names: names of the class ids (index 0 = background), for the legend.
        num_classes: number of classes (default: ``len(class_names)``, else the largest label + 1); fixes colours.
        legend: add a legend of the classes shown.
        zoom: integer upscaling of each slice (nearest).
        alpha: opacity of the label colours.

    Returns:
        An RGB ``PIL.Image``.
    """
    if not samples:
        raise ValueError("sample_montage: no samples to draw")
    zoom, alpha = check_positive_int(zoom, "zoom", "sample_montage"), check_fraction(alpha, "alpha", "sample_montage")
    pairs = [(_squeeze(img), _squeeze(lab)) for img, lab in samples]
    if num_classes is None:
        num_classes = len(class_names) if class_names else int(max(lab.max() for _, lab in pairs)) + 1
    colours = class_colours(num_classes)
    size = max(max(img.shape) for img, _ in pairs) * zoom
    font, header = _font(), 16
    width = 6 * size + 7 * _GAP
    grid = Image.new("RGB", (width, header + len(pairs) * (size + _GAP) + _GAP), _BACKGROUND)
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate([f"image {p}" for p in PLANES] + [f"label {p}" for p in PLANES]):
        draw.text((_GAP + c * (size + _GAP) + 2, 2), title, fill=_TEXT, font=font)
    shown: set[int] = set()
    for r, (image, label) in enumerate(pairs):
        label_planes = orthogonal_slices(label)
        for c, (img2d, lab2d) in enumerate(zip(orthogonal_slices(image), label_planes, strict=True)):
            y = header + r * (size + _GAP)
            grid.paste(_tile(_to_rgb(img2d), size, zoom), (_GAP + c * (size + _GAP), y))
            grid.paste(_tile(_overlay(img2d, lab2d, colours, alpha), size, zoom), (_GAP + (c + 3) * (size + _GAP), y))
            shown.update(int(v) for v in np.unique(lab2d) if 0 < v < num_classes)
    if not legend or not shown:
        return grid
    names = list(class_names) if class_names else [str(k) for k in range(num_classes)]
    key = _legend(names, sorted(shown), colours, grid.height)
    out = Image.new("RGB", (grid.width + key.width + _GAP, grid.height), _BACKGROUND)
    out.paste(grid, (0, 0))
    out.paste(key, (grid.width + _GAP, 0))
    return out


def _squeeze(array) -> np.ndarray:
    array = np.asarray(array.detach().cpu() if hasattr(array, "detach") else array)
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 3:
        raise ValueError(f"sample_montage: expected (X, Y, Z) or (1, X, Y, Z) arrays, got shape {array.shape}")
    return array


def graph_image(graph: TopologyGraph, size: int = 900) -> Image.Image:
    """Draw a topology graph: organs on a circle, explicit relations as edges coloured by relation.

    ``inside`` edges end in a dot at the parent. Pairs without an edge have the graph's default relation, named in
    the legend.
    """
    font = _font()
    n = len(graph.organs)
    margin = max(_text_width(font, o) for o in graph.organs) + 20
    canvas = size + 2 * margin
    img = Image.new("RGB", (canvas, canvas + 60), _BACKGROUND)
    draw = ImageDraw.Draw(img)
    centre, radius = canvas / 2, size / 2 - 10
    points = {}
    for k, organ in enumerate(graph.organs):
        angle = 2 * math.pi * k / n - math.pi / 2
        points[organ] = (centre + radius * math.cos(angle), centre + radius * math.sin(angle))
    for a, relation, b in graph.edges():
        colour = RELATION_COLOURS[relation]
        draw.line([points[a], points[b]], fill=colour, width=2)
        if relation == INSIDE:  # b is the parent
            x, y = points[b]
            draw.ellipse([x - 6, y - 6, x + 6, y + 6], outline=colour, width=2)
    for k, organ in enumerate(graph.organs):
        x, y = points[organ]
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=_TEXT)
        angle = 2 * math.pi * k / n - math.pi / 2
        tx, ty = x + 12 * math.cos(angle), y + 12 * math.sin(angle)
        if math.cos(angle) < -0.1:
            tx -= _text_width(font, organ)
        draw.text((tx, ty - 5), organ, fill=_TEXT, font=font)
    y = canvas + 10
    for k, relation in enumerate((ADJACENT, INSIDE, DISJOINT)):
        x = 20 + k * 200
        draw.line([(x, y + 6), (x + 30, y + 6)], fill=RELATION_COLOURS[relation], width=3)
        draw.text((x + 36, y), relation + (" (dot: parent)" if relation == INSIDE else ""), fill=_TEXT, font=font)
    draw.text((20, y + 24), f"{graph!r}; unnamed pairs are {graph.default}", fill=_TEXT, font=font)
    return img


def save_png(image: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as PNG to ``path`` atomically; returns the path."""
    path = Path(path)
    with atomic_path(path, suffix=".png") as tmp:
        image.save(tmp, format="PNG")
    return path
