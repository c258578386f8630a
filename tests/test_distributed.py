"""The data-parallel path on the CPU: two and four processes, gloo backend."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from funetgan.data.demo import make_texture_dataset
from funetgan.model import FUNetGAN
from funetgan.runtime import setup, teardown


def _fit_one_rank(rank: int, folder: str, port: int, config, training) -> None:
    os.environ.update(
        RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    if rank == 1:  # E's codes come out otherwise here, as a GPU's kernels may round them on each rank
        from funetgan.training.batches import BatchSource

        images = BatchSource.images
        BatchSource.images = lambda self, start, stop: images(self, start, stop) * 0.99
    model = FUNetGAN(config, runtime=setup("cpu"))
    model.fit(training, run_dir=os.path.join(folder, "run"))  # rank 0 draws samples
    save_file(
        {f"{n}.{k}": v.contiguous() for n in "GDE" for k, v in getattr(model, n).state_dict().items()},
        os.path.join(folder, f"rank{rank}.safetensors"),
    )
    teardown()


def test_two_processes_stay_in_sync(tmp_path, random_images, tiny_config):
    """Every stage, E's standardisation before stage 2 included (computed apart on each rank)."""
    port = 29500 + os.getpid() % 1000
    config, images = tiny_config(gan__warmup_iterations=2), random_images(16)
    mp.spawn(_fit_one_rank, args=(str(tmp_path), port, config, images), nprocs=2, join=True)
    a, b = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert set(a) == set(b) and any(k.startswith("G.") for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # G, D, E and G's spectral-norm state


TORCHRUN_ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _torchrun_train(data, out, *settings: str, launcher: str = "torch.distributed.run") -> list[str]:
    """`funetgan train` of tiny networks in two processes under torchrun (`launcher`), on a
    small brick set written to `data`; `settings` are extra --set values."""
    make_texture_dataset(data, crop=64, n_train=20, n_test_good=2, n_per_defect=1)
    tiny = [
        "model.image_size=32",
        "model.width=4",
        "model.z_dim=16",
        "batch_size=4",
        "gan.n_critic=1",
        "encoder.iterations=2",
        *settings,
    ]
    return [
        sys.executable,
        "-m",
        launcher,
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "funetgan",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--device",
        "cpu",
        *(item for setting in tiny for item in ("--set", setting)),
    ]


def test_torchrun_trains_and_only_rank_zero_writes(tmp_path):
    out = tmp_path / "run"
    command = _torchrun_train(tmp_path / "data", out, "gan.iterations=2")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=TORCHRUN_ENV)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model.safetensors").exists()
    assert result.stdout.count("trained in") == 1  # one summary: rank 0's
    assert len((out / "log.jsonl").read_text().splitlines()) == 2  # last step of each stage, rank 0 only


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _rank_of(pid: int) -> int | None:
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    ranks = [v[5:] for v in environ if v.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


@pytest.mark.slow
@pytest.mark.parametrize("to", ["rank 1", "launcher"])
def test_sigterm_stops_every_rank_at_the_same_step_and_the_launcher_in_one_line(tmp_path, to):
    """SIGTERM to rank 1 only, or to the launcher (which passes it to every rank): rank 0 (the
    writer) stops after the same step and saves; funetgan-torchrun ends in one line, with the
    ranks' status 128 + 15 and no traceback (torchrun's own would be 1 and a SignalException)."""
    import json
    import signal
    import time

    from funetgan.training import checkpoint

    out = tmp_path / "run"
    command = _torchrun_train(
        tmp_path / "data", out, "gan.iterations=100000", "log_every=1", launcher="funetgan.commands.launch"
    )
    agent = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=TORCHRUN_ENV)
    deadline = time.monotonic() + 180
    log = out / "log.jsonl"
    while not log.exists() or len(log.read_text().splitlines()) < 3:
        assert agent.poll() is None and time.monotonic() < deadline, agent.communicate()[1][-2000:]
        time.sleep(0.2)
    workers = {_rank_of(pid): pid for pid in _children(agent.pid)}
    os.kill(workers[1] if to == "rank 1" else agent.pid, signal.SIGTERM)
    _, err = agent.communicate(timeout=120)
    assert agent.returncode == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err and "Error" not in err, err[-2000:]
    assert err.count("funetgan: stopped by SIGTERM at gan step") == 1 and "continue with" in err  # rank 0 only
    assert err.count("funetgan-torchrun: ") == 1
    stopped_at = int(err.split("gan step ")[1].split(";")[0])
    _, meta = checkpoint.load(out / "checkpoint.safetensors")
    assert meta["state"]["step"] == stopped_at == json.loads(log.read_text().splitlines()[-1])["step"]


RANK_FIT = """
import os, sys

import numpy as np
import torch
from safetensors.torch import save_file

from funetgan.config import Config, apply_overrides, working_size
from funetgan.data import ct, load_dataset
from funetgan.model import FUNetGAN

real = ct.read_scan

def noted(path):  # which process decodes a volume
    with open(os.path.join(sys.argv[2], "decoded.txt"), "a") as log:
        log.write(f"{os.environ['RANK']}\\n")
    return real(path)

ct.read_scan = noted
torch.set_num_threads(1)
config = apply_overrides(Config(), sys.argv[3:])
splits = load_dataset(sys.argv[1], working_size(config), config.model.channels, config.data)
assert isinstance(splits.train.images, np.memmap)  # mapped from the cache
model = FUNetGAN(config).fit(splits.train, splits.val, run_dir=os.path.join(sys.argv[2], "run"))
weights = {f"{n}.{k}": v.contiguous() for n in "GDE" for k, v in getattr(model, n).state_dict().items()}
save_file(weights, os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.safetensors"))
"""


def noisy_ct_set(save_nifti, root, volumes: int, slices: int):
    """Lung CT volumes of random tissue (8 x 8 x `slices`, HU), a lesion in the last two slices."""
    pytest.importorskip("nibabel")

    rng = np.random.default_rng(0)
    for v in range(volumes):
        save_nifti(root / "ct_scans" / f"case{v}.nii.gz", rng.integers(-1000, 400, (8, 8, slices), dtype=np.int16))
        lesion = np.zeros((8, 8, slices), np.uint8)
        lesion[4:, 4:, slices - 2 :] = 1
        save_nifti(root / "infection_mask" / f"case{v}.nii.gz", lesion)
    return root


@pytest.mark.slow
def test_four_processes_on_a_cached_volume_set_build_it_once_and_end_with_the_same_weights(tmp_path, save_nifti):
    """torchrun with 4 gloo processes, every stage (warm-up, logs between which ranks must
    not wait), the training slices memory-mapped from a slice cache that one of them builds."""
    data = noisy_ct_set(save_nifti, tmp_path / "ct", volumes=8, slices=6)
    script = tmp_path / "fit.py"
    script.write_text(RANK_FIT)
    settings = [
        "device=cpu",
        "model.image_size=32",
        "model.width=4",
        "model.z_dim=16",
        "batch_size=8",
        "gan.n_critic=1",
        "gan.warmup_iterations=2",
        "gan.iterations=4",
        "encoder.iterations=3",
        "log_every=2",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "4",
        str(script),
        str(data),
        str(tmp_path),
        *settings,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=TORCHRUN_ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    decoders = (tmp_path / "decoded.txt").read_text().split()
    assert len(decoders) == 8 and len(set(decoders)) == 1  # one process decoded each volume once
    weights = [load_file(tmp_path / f"rank{rank}.safetensors") for rank in range(4)]
    assert any(k.startswith("E.") for k in weights[0])
    for other in weights[1:]:
        assert [k for k in weights[0] if not torch.equal(weights[0][k], other[k])] == []
