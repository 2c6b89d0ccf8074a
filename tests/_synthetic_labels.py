"""Small synthetic label maps with a class map of their own, for bank, anchor, topology and placement tests.

The maps mimic what a user brings: ids and names that are not TotalSegmentator's, anisotropic voxels
(0.75 x 0.75 x 2.5 mm) and an LPS voxel order (the NIfTI affine is ``diag(-1, -1, 2.5)``). Objects are boxes and one
ball, so their volumes and centroids are known analytically:

- ``block_a`` and ``block_b`` share a face (``block_b`` is two classes, front and back, merged by the organ set);
- ``core`` lies inside ``capsule``;
- ``far_ball`` touches nothing;
- ``lobe_left`` / ``lobe_right`` are two different, left-right asymmetric L-shapes (a mirror pair);
- ``table`` is a class of the class map that the organ set leaves out.
"""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np

#: Voxel grid (i, j, k) of every synthetic subject; with 0.75 x 0.75 x 2.5 mm voxels it spans 72 x 72 x 75 mm.
#: In-plane voxels of half the bank's 1.5 mm make the resampling exact: every 1.5 mm sample falls on a voxel centre
#: (1 mm voxels would put half the samples on voxel boundaries, where rounding shifts box edges by a voxel).
GRID = (96, 96, 30)
VOXEL_MM = (0.75, 0.75, 2.5)
#: LPS voxel order: i runs to the left, j to the back, k up.
AFFINE = np.diag([-VOXEL_MM[0], -VOXEL_MM[1], VOXEL_MM[2], 1.0])
AFFINE[:3, 3] = (40.0, 25.0, -100.0)

CLASS_MAP = {
    "3": "table",
    "7": "block_a",
    "12": "block_b_front",
    "13": "block_b_back",
    "21": "capsule",
    "22": "core",
    "40": "far_ball",
    "51": "lobe_left",
    "52": "lobe_right",
}
ID = {name: int(i) for i, name in CLASS_MAP.items()}

#: Organ set with one merge rule; class ids of the bank follow this order (far_ball = 1, ..., lobe_right = 7).
ORGANS = {
    "far_ball": ["far_ball"],
    "block_a": ["block_a"],
    "block_b": ["block_b_front", "block_b_back"],
    "capsule": ["capsule"],
    "core": ["core"],
    "lobe_left": ["lobe_left"],
    "lobe_right": ["lobe_right"],
}
MIRROR_PAIRS = [("lobe_left", "lobe_right")]

# Boxes as half-open voxel index ranges (i0, i1, j0, j1, k0, k1); i, j in 0.75 mm steps, k in 2.5 mm steps.
# Every edge length is a multiple of 1.5 mm, so the resampled boxes keep their exact volume.
BLOCK_A = (8, 24, 8, 24, 4, 10)  # 12 x 12 x 15 mm
BLOCK_B_FRONT = (24, 40, 8, 16, 4, 10)  # shares the face i = 24 with block_a
BLOCK_B_BACK = (24, 40, 16, 24, 4, 10)
CAPSULE = (44, 68, 8, 32, 3, 12)  # 18 x 18 x 22.5 mm, hollowed by the core
CORE = (52, 60, 16, 24, 6, 9)  # 6 x 6 x 7.5 mm at the capsule's centre
LOBE_RIGHT = (40, 52, 48, 80, 14, 20)
LOBE_RIGHT_NOTCH = (44, 52, 48, 60, 14, 17)
LOBE_LEFT = (60, 76, 48, 80, 14, 20)
LOBE_LEFT_NOTCH = (60, 68, 68, 80, 14, 20)
TABLE = (0, GRID[0], 0, GRID[1], 0, 1)
BALL_CENTER_VOX = (20.0, 60.0, 18.0)
BALL_RADIUS_MM = 9.0
#: Translation of the second default subject's objects: (3, 3, 7.5) mm, whole 1.5 mm voxels.
SHIFT_VOX = (4, 4, 3)


def _box_volume_ml(box) -> float:
    i0, i1, j0, j1, k0, k1 = box
    return (i1 - i0) * (j1 - j0) * (k1 - k0) * float(np.prod(VOXEL_MM)) / 1000.0


def _box_center_vox(box) -> np.ndarray:
    i0, i1, j0, j1, k0, k1 = box
    return np.array([(i0 + i1 - 1) / 2, (j0 + j1 - 1) / 2, (k0 + k1 - 1) / 2])


#: Analytic organ volumes (ml) and centroids (voxel indices of the original grid).
EXPECTED_VOLUME_ML = {
    "far_ball": 4.0 / 3.0 * np.pi * BALL_RADIUS_MM**3 / 1000.0,
    "block_a": _box_volume_ml(BLOCK_A),
    "block_b": _box_volume_ml(BLOCK_B_FRONT) + _box_volume_ml(BLOCK_B_BACK),
    "capsule": _box_volume_ml(CAPSULE) - _box_volume_ml(CORE),
    "core": _box_volume_ml(CORE),
    "lobe_left": _box_volume_ml(LOBE_LEFT) - _box_volume_ml(LOBE_LEFT_NOTCH),
    "lobe_right": _box_volume_ml(LOBE_RIGHT) - _box_volume_ml(LOBE_RIGHT_NOTCH),
}
EXPECTED_CENTER_VOX = {
    "far_ball": np.array(BALL_CENTER_VOX),
    "block_a": _box_center_vox(BLOCK_A),
    "block_b": _box_center_vox((24, 40, 8, 24, 4, 10)),
    "capsule": _box_center_vox(CAPSULE),  # the core sits at the capsule's centre, so the hollow box keeps it
    "core": _box_center_vox(CORE),
}


def _fill(labels: np.ndarray, box, value: int) -> None:
    i0, i1, j0, j1, k0, k1 = box
    labels[i0:i1, j0:j1, k0:k1] = value


def label_array(shift_vox=(0, 0, 0)) -> np.ndarray:
    """The synthetic subject as a ``GRID`` uint8 array; ``shift_vox`` translates every object except the table."""
    labels = np.zeros(GRID, dtype=np.uint8)
    _fill(labels, TABLE, ID["table"])
    body = np.zeros(GRID, dtype=np.uint8)
    _fill(body, BLOCK_A, ID["block_a"])
    _fill(body, BLOCK_B_FRONT, ID["block_b_front"])
    _fill(body, BLOCK_B_BACK, ID["block_b_back"])
    _fill(body, CAPSULE, ID["capsule"])
    _fill(body, CORE, ID["core"])
    _fill(body, LOBE_LEFT, ID["lobe_left"])
    _fill(body, LOBE_LEFT_NOTCH, 0)
    _fill(body, LOBE_RIGHT, ID["lobe_right"])
    _fill(body, LOBE_RIGHT_NOTCH, 0)
    idx = np.indices(GRID, dtype=float)
    dist_mm = np.sqrt(sum(((idx[a] - BALL_CENTER_VOX[a]) * VOXEL_MM[a]) ** 2 for a in range(3)))
    body[dist_mm <= BALL_RADIUS_MM] = ID["far_ball"]
    body = np.roll(body, shift_vox, axis=(0, 1, 2))
    labels[body > 0] = body[body > 0]
    return labels


def world_mm(index_vox) -> np.ndarray:
    """World (RAS) position in mm of a voxel index of the original grid."""
    return (AFFINE @ np.append(np.asarray(index_vox, dtype=float), 1.0))[:3]


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    """Write ``array`` as NIfTI at ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def write_class_map(path: Path, class_map: dict | None = None) -> Path:
    """Write a class map JSON (default :data:`CLASS_MAP`)."""
    path.write_text(json.dumps(class_map if class_map is not None else CLASS_MAP))
    return path


def write_subjects(root: Path, shifts: dict[str, tuple[int, int, int]] | None = None) -> tuple[dict[str, Path], Path]:
    """Write one label map per subject under ``root/<subject>/labels.nii.gz`` plus ``root/classes.json``.

    Args:
        root: output folder.
        shifts: subject -> voxel translation of its objects (default: ``{"syn1": (0, 0, 0), "syn2": SHIFT_VOX}``).

    Returns:
        ``({subject: label path}, class map path)``.
    """
    shifts = shifts if shifts is not None else {"syn1": (0, 0, 0), "syn2": SHIFT_VOX}
    paths = {s: write_nifti(root / s / "labels.nii.gz", label_array(shift)) for s, shift in shifts.items()}
    return paths, write_class_map(root / "classes.json")


def build_bank(root: Path, **kwargs):
    """Write the default two subjects under ``root`` and build their bank (organ set :data:`ORGANS`, lobes mirrored).

    Returns:
        ``(bank, {subject: label path}, class map path)``.
    """
    from synth_transforms import ShapeBank

    paths, class_map = write_subjects(root)
    options = {"organs": ORGANS, "mirror_pairs": MIRROR_PAIRS, **kwargs}
    return ShapeBank.build(paths, class_map, **options), paths, class_map


# ------------------------------------------------------------------------------ label maps of another dataset
#: An AMOS-style class map: its own names, with the side written two ways (``kidney_L``, ``left adrenal gland``).
AMOS_CLASS_MAP = {
    "1": "liver",
    "2": "gall bladder",
    "3": "kidney_L",
    "4": "kidney_R",
    "5": "left adrenal gland",
    "6": "right adrenal gland",
    "7": "colon",
}
AMOS_ID = {name: int(i) for i, name in AMOS_CLASS_MAP.items()}
#: 1.5 mm isotropic RAS grid: index i runs to the subject's right, so left organs sit at low i.
AMOS_GRID = (64, 48, 40)
AMOS_AFFINE = np.diag([1.5, 1.5, 1.5, 1.0])
AMOS_BOXES = {
    "liver": [(40, 60, 10, 40, 20, 34)],
    "gall bladder": [(42, 48, 30, 36, 16, 20)],
    "kidney_L": [(10, 20, 8, 20, 6, 20)],
    "kidney_R": [(44, 54, 8, 20, 4, 18)],
    "left adrenal gland": [(12, 18, 10, 16, 20, 23)],
    "right adrenal gland": [(46, 52, 10, 16, 18, 21)],
    "colon": [(22, 30, 30, 40, 2, 10), (30, 38, 30, 40, 24, 32)],  # two segments that do not touch
}
#: Notches cut from the kidneys so that each is left-right asymmetric and differs from its partner.
AMOS_NOTCHES = {"kidney_L": (10, 14, 8, 12, 6, 10), "kidney_R": (50, 54, 16, 20, 14, 18)}
#: A single kidney_L voxel far from the kidney (a stray island): about 100 mm away, at the grid's far corner.
AMOS_STRAY_VOXEL = (60, 44, 36)


def amos_array(stray: bool = True, shift_vox=(0, 0, 0)) -> np.ndarray:
    """An AMOS-style subject on :data:`AMOS_GRID`; ``stray`` adds :data:`AMOS_STRAY_VOXEL` to kidney_L."""
    labels = np.zeros(AMOS_GRID, dtype=np.uint8)
    for name, boxes in AMOS_BOXES.items():
        for box in boxes:
            _fill(labels, box, AMOS_ID[name])
    for box in AMOS_NOTCHES.values():
        _fill(labels, box, 0)
    labels = np.roll(labels, shift_vox, axis=(0, 1, 2))
    if stray:
        labels[AMOS_STRAY_VOXEL] = AMOS_ID["kidney_L"]
    return labels


def amos_box_dims(name: str) -> tuple[int, int, int]:
    """Voxel dims of an AMOS-style organ's bounding box (without stray islands)."""
    boxes = np.array(AMOS_BOXES[name])
    return tuple(int(boxes[:, 2 * a + 1].max() - boxes[:, 2 * a].min()) for a in range(3))


def write_amos_subjects(root: Path, arrays: dict[str, np.ndarray] | None = None) -> tuple[dict[str, Path], Path]:
    """Write AMOS-style subjects (default: ``amos1`` with the stray voxel, ``amos2`` shifted without it)."""
    if arrays is None:
        arrays = {"amos1": amos_array(), "amos2": amos_array(stray=False, shift_vox=(2, 1, 1))}
    paths = {s: write_nifti(root / s / "labels.nii.gz", a, AMOS_AFFINE) for s, a in arrays.items()}
    return paths, write_class_map(root / "amos_classes.json", AMOS_CLASS_MAP)


#: A tilted ellipsoid "blob" (radii mm, tilt in the x-z plane) centred in a 60 mm cube, for thick-slice maps.
BLOB_CENTER_MM = (30.0, 30.0, 30.0)
BLOB_RADII_MM = (22.0, 15.0, 24.0)
BLOB_TILT = 0.5


def blob_mask(shape, voxel_mm) -> np.ndarray:
    """The blob sampled at voxel centres ``index * voxel_mm`` (the first voxel's centre at the origin)."""
    x, y, z = (np.indices(shape, dtype=float).T * np.asarray(voxel_mm, dtype=float)).T - np.reshape(
        BLOB_CENTER_MM, (3, 1, 1, 1)
    )
    c, s = np.cos(BLOB_TILT), np.sin(BLOB_TILT)
    u, w = x * c - z * s, x * s + z * c
    return (u / BLOB_RADII_MM[0]) ** 2 + (y / BLOB_RADII_MM[1]) ** 2 + (w / BLOB_RADII_MM[2]) ** 2 <= 1.0


def write_blob(path: Path, voxel_mm=(0.75, 0.75, 5.0)) -> Path:
    """The blob (class 1) as a NIfTI of ``voxel_mm`` voxels spanning 60 mm per axis (thick slices by default)."""
    shape = tuple(int(round(60.0 / v)) for v in voxel_mm)
    return write_nifti(path, blob_mask(shape, voxel_mm).astype(np.uint8), np.diag([*voxel_mm, 1.0]))
