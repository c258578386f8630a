"""The data-parallel path on the CPU: two processes, gloo backend."""
import os
import subprocess
import sys

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from conftest import random_images, tiny_config
from funetgan.model import FUNetGAN
from funetgan.runtime import setup, teardown


def _fit_one_rank(rank: int, folder: str, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    model = FUNetGAN(tiny_config(gan__warmup_iterations=2), runtime=setup("cpu"))
    model.fit(random_images(16), run_dir=os.path.join(folder, "run"))  # rank 0 draws samples
    save_file({f"{n}.{k}": v.contiguous() for n in "GDE" for k, v in getattr(model, n).state_dict().items()},
              os.path.join(folder, f"rank{rank}.safetensors"))
    teardown()


def test_two_processes_stay_in_sync(tmp_path):
    port = 29500 + os.getpid() % 1000
    mp.spawn(_fit_one_rank, args=(str(tmp_path), port), nprocs=2, join=True)
    a, b = load_file(tmp_path / "rank0.safetensors"), load_file(tmp_path / "rank1.safetensors")
    assert set(a) == set(b) and any(k.startswith("G.") for k in a)
    assert [k for k in a if not torch.equal(a[k], b[k])] == []  # G, D, E and G's spectral-norm state


def test_torchrun_trains_and_only_rank_zero_writes(tmp_path):
    from funetgan.data.demo import make_texture_dataset

    data = make_texture_dataset(tmp_path / "data", crop=64, n_train=20, n_test_good=2, n_per_defect=1)
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "funetgan", "train", "--data", str(data), "--out", str(out), "--device", "cpu",
               "--set", "model.image_size=32", "--set", "model.width=4", "--set", "model.z_dim=16",
               "--set", "batch_size=4", "--set", "gan.iterations=2", "--set", "gan.n_critic=1",
               "--set", "encoder.iterations=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (out / "model.safetensors").exists()
    assert result.stdout.count("trained in") == 1  # one summary: rank 0's
    assert len((out / "log.jsonl").read_text().splitlines()) == 2  # last step of each stage, rank 0 only
