import pytest
import torch

from funetgan.errors import RunFolderError
from funetgan.model import FUNetGAN
from funetgan.training import checkpoint


def test_round_trip_keeps_tensors_and_metadata(tmp_path):
    path = tmp_path / "c.safetensors"
    tensors = {"a.w": torch.randn(3, 4), "b": torch.arange(5)}
    checkpoint.save(path, tensors, {"step": 7, "nested": {"x": [1, 2]}})
    loaded, meta = checkpoint.load(path)
    assert meta == {"step": 7, "nested": {"x": [1, 2]}}
    assert all(torch.equal(tensors[k], loaded[k]) for k in tensors)
    assert not list(tmp_path.glob(".*tmp"))  # no temporary file left behind


def test_optimizer_state_round_trip():
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=0.01, betas=(0.0, 0.9))
    net(torch.randn(4, 3)).sum().backward()
    opt.step()
    tensors, meta = checkpoint.optimizer_state("opt", opt)
    fresh = torch.optim.Adam(net.parameters(), lr=0.5)
    checkpoint.load_optimizer_state(fresh, "opt", tensors, meta)
    assert fresh.param_groups[0]["lr"] == 0.01 and fresh.param_groups[0]["betas"] == (0.0, 0.9)
    for p in net.parameters():
        assert torch.equal(fresh.state[p]["exp_avg"], opt.state[p]["exp_avg"])


def test_unreadable_checkpoint_gives_one_line_error(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"this is not a safetensors file")
    with pytest.raises(RunFolderError, match="not a readable funetgan checkpoint"):
        checkpoint.load(bad)
    with pytest.raises(RunFolderError, match="no such checkpoint"):
        checkpoint.load(tmp_path / "missing.safetensors")


def test_saved_model_loads_and_scores_identically(tmp_path, tiny_model, random_images):
    images = random_images(12)
    tiny_model.save(tmp_path / "model.safetensors")
    loaded = FUNetGAN.load(tmp_path)
    a, b = tiny_model.score(images), loaded.score(images)
    assert a.scores.tolist() == pytest.approx(b.scores.tolist())
    assert loaded.image_threshold == tiny_model.image_threshold
    assert loaded.config.to_dict() == tiny_model.config.to_dict()


def test_weights_from_other_settings_are_refused(tmp_path, tiny_config):
    FUNetGAN(tiny_config()).save(tmp_path / "m.safetensors")
    tensors, meta = checkpoint.load(tmp_path / "m.safetensors")
    meta["config"]["model"]["width"] = 8
    checkpoint.save(tmp_path / "m.safetensors", tensors, meta)
    with pytest.raises(RunFolderError, match="weights do not fit the settings"):
        FUNetGAN.load(tmp_path / "m.safetensors")


def test_atomic_writes_get_the_usual_file_mode(tmp_path):
    import os

    from funetgan.files import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644


def as_saved_on_a_gpu(path) -> None:
    """Rewrite a CPU checkpoint as a CUDA run writes it: a CUDA generator's state (its seed and
    offset, 16 bytes) and fused Adam."""
    tensors, meta = checkpoint.load(path)
    seed_and_offset = torch.tensor([12345, 64], dtype=torch.int64)
    tensors["rng"] = seed_and_offset.view(torch.uint8).clone()
    for name in ("opt_g", "opt_d", "opt_e"):
        meta[name]["param_groups"] = [{**g, "fused": True, "foreach": None} for g in meta[name]["param_groups"]]
    checkpoint.save(path, tensors, meta)


def test_a_checkpoint_from_a_gpu_resumes_on_the_cpu(tmp_path, random_images, tiny_config):
    from funetgan.training.trainer import Trainer

    images = random_images(12)
    saved = Trainer(FUNetGAN(tiny_config()), images.images, images.images, None)
    saved.gan_step(0)
    saved.save_checkpoint(tmp_path / "checkpoint.safetensors")
    as_saved_on_a_gpu(tmp_path / "checkpoint.safetensors")
    draws = []
    for _ in range(2):
        resumed = Trainer(FUNetGAN(tiny_config()), images.images, images.images, None)
        resumed.resume(tmp_path / "checkpoint.safetensors")
        draws.append(resumed.latent(3))
        # how the optimisers step is this device's choice, not the checkpoint's
        assert all(g["foreach"] is True and not g["fused"] for g in resumed.opt_d.param_groups)
    assert torch.equal(draws[0], draws[1])  # a stream seeded from the saved state: reproducible
    model = FUNetGAN(tiny_config()).fit(images, run_dir=tmp_path, resume=True)
    assert set(model.training) == {"warmup", "gan", "encoder"}


class CudaLikeGenerator:
    """What a CUDA generator does with a state: takes its own 16 bytes, refuses any other size."""

    device = torch.device("cuda")

    def __init__(self):
        self.seeds = []

    def set_state(self, state: torch.Tensor) -> None:
        if state.numel() != 16:
            raise RuntimeError("RNG state is wrong size")

    def manual_seed(self, seed: int) -> "CudaLikeGenerator":
        self.seeds.append(seed)
        return self


def test_a_checkpoint_from_the_cpu_resumes_on_a_gpu(tmp_path, tiny_config, random_images):
    from funetgan.training.trainer import Trainer

    images = random_images(8).images
    Trainer(FUNetGAN(tiny_config()), images, images, None).save_checkpoint(tmp_path / "c.safetensors")
    seeds = []
    for _ in range(2):
        trainer = Trainer(FUNetGAN(tiny_config()), images, images, None)
        trainer.rng = CudaLikeGenerator()
        trainer.resume(tmp_path / "c.safetensors")
        seeds += trainer.rng.seeds
    assert len(seeds) == 2 and seeds[0] == seeds[1]  # seeded once, from the saved state
