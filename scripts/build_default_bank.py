"""Build the default shape bank shipped with the package from the 5 TotalSegmentator subjects.

python scripts/build_default_bank.py [--data ../shared/data/shape_bank_subjects]
    [--out synth_transforms/data/default_bank.npz] [--spacing 1.5]
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

from synth_transforms.bank import DEFAULT_BANK_PATH, ShapeBank

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "shape_bank_subjects"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with <subject>/label_total117.nii.gz")
    parser.add_argument("--out", type=Path, default=DEFAULT_BANK_PATH)
    parser.add_argument("--spacing", type=float, default=1.5)
    parser.add_argument("--contact_margin", type=int, default=2, help="shell thickness (voxels) for contact stats")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    maps = {p.parent.name: p for p in sorted(args.data.glob("*/label_total117.nii.gz"))}
    if not maps:
        raise SystemExit(f"no */label_total117.nii.gz under {args.data}")
    start = time.perf_counter()
    # contact_margin=2: organs parted by a single unlabelled voxel (a 1.5 mm fat plane) count as touching, so the
    # topology graph lets them share a boundary under jitter instead of rejecting every near miss
    bank = ShapeBank.build(
        maps, args.data / "class_map_totalseg_v2_total.json", spacing=args.spacing, contact_margin=args.contact_margin
    )
    bank.source["label_maps"] = {k: f"shape_bank_subjects/{k}/{v.name}" for k, v in maps.items()}
    bank.save(args.out)
    print(bank.info())
    print(f"built in {time.perf_counter() - start:.1f} s -> {args.out} ({args.out.stat().st_size / 2**20:.2f} MiB)")


if __name__ == "__main__":
    main()
