"""Where the networks run: mixed precision only where the hardware has it, scoring always in
float32 (as the ONNX graph and --device cpu compute it)."""
import numpy as np
import pytest
import torch

from conftest import random_images, tiny_config
from funetgan import runtime
from funetgan.model import FUNetGAN


@pytest.mark.parametrize("capability, amp", [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)],
                         ids=["V100", "T4", "A100", "H100"])
def test_bf16_autocast_only_on_gpus_with_bf16_units(monkeypatch, capability, amp):
    """torch.cuda.is_bf16_supported() is true on a V100 or T4 too (emulated bf16): the compute
    capability decides."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)  # restored after the test
    chosen = runtime.setup("cuda")
    assert chosen.device.type == "cuda" and chosen.amp is amp
    assert torch.backends.cudnn.benchmark  # fixed shapes: let cuDNN pick its fastest algorithms
    assert runtime.setup("cuda", amp=False).amp is False


def test_scoring_and_calibration_are_float32_under_amp(monkeypatch):
    """A run that trains under bf16 autocast scores and fits its densities exactly as without:
    on the CPU autocast would round to bf16 too, so any autocast left in scoring shows here."""
    images = random_images(12, seed=3).images
    model = FUNetGAN(tiny_config())
    terms, densities = [], []
    for amp in (False, True):
        monkeypatch.setattr(model.runtime, "amp", amp)
        model.fit_density(images)
        densities.append({k: v.clone() for k, v in model.image_density.state_dict().items()})
        terms.append(model.residual_terms(images))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast works here: the check can see it
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    for name in ("pixel_residual", "pixel_features", "pixel_density", "image_features", "latent_density"):
        np.testing.assert_array_equal(getattr(terms[0], name), getattr(terms[1], name), err_msg=name)
    assert all(torch.equal(densities[0][k], densities[1][k]) for k in densities[0])
