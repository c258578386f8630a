import subprocess

import numpy as np
import pytest
import torch

from funetgan.config import Config
from funetgan.data.base import ImageSet


@pytest.fixture(autouse=True)
def _single_thread():
    # Tests run beside other work on 2 cores; one thread is faster there and deterministic.
    torch.set_num_threads(1)


def tiny_config(**overrides) -> Config:
    """32x32 grey, width 4: networks small enough for millisecond steps."""
    cfg = Config()
    cfg.model.image_size, cfg.model.channels, cfg.model.width, cfg.model.z_dim = 32, 1, 4, 16
    cfg.batch_size, cfg.gan.n_critic = 4, 2
    cfg.gan.iterations, cfg.encoder.iterations = 3, 3
    cfg.log_every = cfg.checkpoint_every = 1
    cfg.device = "cpu"
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        setattr(getattr(cfg, section) if name else cfg, name or section, value)
    return cfg.validate()


def random_images(n: int, size: int = 32, channels: int = 1, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    images = (rng.random((n, size, size, channels)) * 255).astype(np.uint8)
    return ImageSet(images, np.zeros(n, np.int64), [f"img{i}.png" for i in range(n)], ["good"] * n,
                    np.full((n, 2), size))



@pytest.fixture
def tmpfs():
    """`tmpfs(folder, options)` mounts a tmpfs with `options` ("size=64k", "ro") on a new
    `folder` until the test ends; skips the test where mounting is not allowed (needs root)."""
    mounted = []

    def mount(folder, options: str):
        folder.mkdir(parents=True)
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
                          capture_output=True).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(folder)
        return folder

    yield mount
    for folder in reversed(mounted):
        subprocess.run(["umount", "-l", str(folder)], check=True)
