"""Peak memory and loading time of a lung CT set: generates N volumes of 512 x 512 x Z int16
HU (.nii.gz, with lesion and lung masks) in the COVID-19 CT layout, then in a fresh process
each: loads it (`load_dataset`, with --cache through the slice cache), with --train trains a
few steps on it, with --test also runs `funetgan test` on it (its work after loading the model:
the data again, scoring, metrics, the default files into --results). Prints and writes, per
phase, seconds, peak resident memory (VmHWM: file pages of the memory-mapped cache count,
though the kernel can drop them) and peak anonymous memory (sampled every 50 ms).

    python benchmarks/ct_memory.py --volumes 40 --slices 100 --data /tmp/ct-bench --cache /tmp/ct-cache
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PROBE = """
import json, sys, threading, time
from funetgan.config import Config
from funetgan.data import load_dataset

def status(key):
    return [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key)][0]

anon = [0]  # peak anonymous memory (not file pages: mapped cache pages are reclaimable)
def sample():
    while True:
        anon[0] = max(anon[0], status("RssAnon:"))
        time.sleep(0.05)
threading.Thread(target=sample, daemon=True).start()
phases = {{}}
def phase(name, since):
    time.sleep(0.1)
    phases[name] = {{"seconds": round(time.monotonic() - since, 1), "peak_rss_mib": round(status("VmHWM:") / 1024),
                    "peak_anon_mib": round(max(anon[0], status("RssAnon:")) / 1024)}}
    open("/proc/self/clear_refs", "w").write("5")  # reset VmHWM for the next phase
    anon[0] = 0
    return time.monotonic()

started = time.monotonic()
config = Config()
config.model.image_size = {size}
config.data.cache_dir = {cache!r}
splits = load_dataset({data!r}, config.model.image_size, 1, config.data)
mark = phase("load", started)
if {train}:
    from funetgan.model import FUNetGAN
    for key, value in (("gan", 5), ("encoder", 5)):
        getattr(config, key).iterations = value
    config.gan.n_critic, config.batch_size, config.device = 1, 16, "cpu"
    model = FUNetGAN(config).fit(splits.train)
    mark = phase("train", mark)
    if {test}:
        # All of `funetgan test` after the model is loaded: data (cache), scoring, metrics and
        # its default files (report, example overlays, volumes' NIfTI maps and masks).
        import argparse
        from pathlib import Path
        from funetgan.commands.trained import test_one
        from funetgan.outputs.selection import TEST_DEFAULT
        args = argparse.Namespace(outputs=list(TEST_DEFAULT), overwrite=True, threshold=None, pixel_threshold=None)
        test_one(model, Path({data!r}), Path({results!r}), args)
        mark = phase("test", mark)
print(json.dumps({{"phases": phases, "total_seconds": round(time.monotonic() - started, 1),
                  "train_slices": len(splits.train), "test_slices": len(splits.test)}}))
"""


def generate(root: Path, volumes: int, slices: int, side: int = 512) -> None:
    """Smooth synthetic chests: body at 40 HU, two lungs at -850 HU, air at -1000, a lesion in
    the upper third of the slices; stored int16 with gzip level 1."""
    import nibabel

    nibabel.openers.Opener.default_compresslevel = 1
    yy, xx = np.mgrid[:side, :side] / side
    body = ((yy - 0.5) / 0.4) ** 2 + ((xx - 0.5) / 0.45) ** 2 < 1
    lungs = (((yy - 0.45) / 0.25) ** 2 + ((np.abs(xx - 0.5) - 0.2) / 0.13) ** 2) < 1
    plane = np.where(body, 40, -1000).astype(np.int16)
    plane[lungs] = -850
    lesion_plane = lungs & (((yy - 0.4) / 0.05) ** 2 + ((xx - 0.3) / 0.05) ** 2 < 1)
    affine = np.diag([-0.7, -0.7, 2.5, 1.0])
    for folder in ("ct_scans", "infection_mask", "lung_mask"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for v in range(volumes):
        name = f"case{v:03d}.nii.gz"
        if (root / "lung_mask" / name).exists():
            continue
        scan = np.repeat(plane.T[:, :, None], slices, 2) + rng.integers(-20, 20, (side, side, 1), dtype=np.int16)
        lesion = np.zeros(scan.shape, np.uint8)
        lesion[:, :, 2 * slices // 3 :] = lesion_plane.T[:, :, None]
        scan[lesion > 0] = -100
        nibabel.Nifti1Image(scan, affine).to_filename(root / "ct_scans" / name)
        nibabel.Nifti1Image(lesion, affine).to_filename(root / "infection_mask" / name)
        nibabel.Nifti1Image(np.repeat(lungs.T[:, :, None], slices, 2).astype(np.uint8), affine).to_filename(
            root / "lung_mask" / name
        )


def main() -> None:
    parser = argparse.ArgumentParser(prog="benchmarks/ct_memory.py", description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=40)
    parser.add_argument("--slices", type=int, default=100)
    parser.add_argument("--size", type=int, default=64, help="model.image_size (working size)")
    parser.add_argument("--data", default="/tmp/ct-bench", help="where the set is generated (kept)")
    parser.add_argument("--cache", help="data.cache_dir (default: none, slices in memory)")
    parser.add_argument("--train", action="store_true", help="also train 5 + 5 steps")
    parser.add_argument("--test", action="store_true", help="with --train: also run `funetgan test` on the set")
    parser.add_argument("--results", default="/tmp/ct-memory-test", help="--test's output folder (replaced)")
    parser.add_argument("--out", default="results/ct_memory.json")
    args = parser.parse_args()
    data = Path(args.data)
    started = time.monotonic()
    generate(data, args.volumes, args.slices)
    print(
        f"data: {args.volumes} volumes of 512 x 512 x {args.slices} in {data} "
        f"(generated in {time.monotonic() - started:.0f} s)"
    )
    code = PROBE.format(
        size=args.size, data=str(data), cache=args.cache, train=args.train, test=args.test, results=args.results
    )
    load_before = os.getloadavg()
    probe = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if probe.returncode:
        sys.exit(f"the measured run failed:\n{probe.stderr[-2000:]}")
    result = json.loads(probe.stdout.strip().splitlines()[-1])
    result.update(
        volumes=args.volumes,
        slices=args.slices,
        image_size=args.size,
        cache=args.cache,
        command=" ".join(sys.argv),
        load_average_1min={"start": load_before[0], "end": os.getloadavg()[0]},
    )
    print(json.dumps(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
