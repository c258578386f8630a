"""How well `data.lung_threshold` finds the lung: 3-D Dice of `lungs.segment_lung` against the
lung masks of a CT set in the COVID-19 CT layout (`ct_scans/`, `lung_mask/`), per volume, and
the seconds it takes. On the generated phantoms of ct_memory.py it can only show that the
code does what it says: they are not real scans.

    python benchmarks/lung_threshold.py --data /tmp/ct-bench --volumes 20
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from funetgan.data.lungs import segment_lung
from funetgan.data.medical import read_scan, read_volume


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks/lung_threshold.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a CT set with ct_scans/ and lung_mask/")
    parser.add_argument("--volumes", type=int, default=20, help="the first N volumes (by name)")
    parser.add_argument("--threshold", type=float, default=-320.0, help="HU")
    parser.add_argument("--out", default="results/lung_threshold.json")
    args = parser.parse_args()
    rows = []
    for scan_path in sorted((Path(args.data) / "ct_scans").iterdir())[: args.volumes]:
        scan, _ = read_scan(scan_path)
        truth = read_volume(Path(args.data) / "lung_mask" / scan_path.name) > 0
        started = time.perf_counter()
        found = segment_lung(scan, args.threshold)
        seconds = time.perf_counter() - started
        dice = 2 * np.count_nonzero(found & truth) / max(np.count_nonzero(found) + np.count_nonzero(truth), 1)
        rows.append({"volume": scan_path.name, "dice": dice, "seconds": round(seconds, 2), "shape": list(scan.shape)})
        print(json.dumps(rows[-1]))
    dice = [row["dice"] for row in rows]
    summary = {
        "volumes": len(rows),
        "dice_mean": float(np.mean(dice)),
        "dice_min": float(np.min(dice)),
        "seconds_mean": float(np.mean([row["seconds"] for row in rows])),
        "threshold": args.threshold,
    }
    print(json.dumps(summary))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"summary": summary, "volumes": rows}, indent=2))


if __name__ == "__main__":
    main()
