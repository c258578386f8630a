"""Where the networks run: mixed precision only where the hardware has it, scoring always in
float32 (as the ONNX graph and --device cpu compute it)."""

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from funetgan import runtime
from funetgan.model import FUNetGAN
from funetgan.training.trainer import Trainer


@pytest.mark.parametrize(
    "capability, amp",
    [((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)],
    ids=["V100", "T4", "A100", "H100"],
)
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


def test_scoring_and_calibration_are_float32_under_amp(monkeypatch, random_images, tiny_config):
    """A run that trains under bf16 autocast scores and fits its densities exactly as without:
    on the CPU autocast would round to bf16 too, so any autocast left in scoring shows here."""
    images = random_images(80, seed=3).images  # enough to fit every density
    model = FUNetGAN(tiny_config())
    terms, densities = [], []
    for amp in (False, True):
        monkeypatch.setattr(model.runtime, "amp", amp)
        model.fit_densities(images)
        densities.append(
            {k: v.clone() for density in model.densities.values() for k, v in density.state_dict().items()}
        )
        terms.append(model.residual_terms(images))
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast works here: the check can see it
        assert torch.mm(torch.ones(2, 2), torch.ones(2, 2)).dtype == torch.bfloat16
    for name in ("pixel_residual", "pixel_features", "pixel_density", "image_features", "latent_density"):
        np.testing.assert_array_equal(terms[0][name], terms[1][name], err_msg=name)
    assert all(torch.equal(densities[0][k], densities[1][k]) for k in densities[0])


class Operations(TorchDispatchMode):
    """Counts the operations that compute (views aside): on a GPU, roughly kernel launches."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += not func.is_view
        return func(*args, **(kwargs or {}))


def two_process_critic(tiny_config, monkeypatch, other_rank: float):
    """D with gradients, in a runtime of two processes whose all-reduce adds `other_rank` x
    this process's gradients (no process group: the collective is faked)."""

    def all_reduce(tensor, op=None):
        tensor.mul_(1 + other_rank)

    monkeypatch.setattr(torch.distributed, "all_reduce", all_reduce)
    monkeypatch.setattr(torch.distributed, "broadcast", lambda tensor, src: None)
    model = FUNetGAN(tiny_config(), runtime=runtime.Runtime(torch.device("cpu"), world_size=2))
    out = model.D(model.runtime.prepare(torch.randn(2, 1, 32, 32)))
    (out.score.sum() + out.pixel.sum()).backward()
    return model


def test_gradients_are_averaged_in_place_whatever_their_layout(monkeypatch, tiny_config):
    model = two_process_critic(tiny_config, monkeypatch, other_rank=2.0)  # the other process's gradients: twice these
    grads = {name: p.grad.clone() for name, p in model.D.named_parameters() if p.grad is not None}
    assert any(g.dim() == 4 and not g.is_contiguous() for g in grads.values())  # channels-last ones too
    model.runtime.average_gradients(model.D)
    for name, p in model.D.named_parameters():
        if name in grads:
            assert torch.allclose(p.grad, 1.5 * grads[name], rtol=1e-6), name  # (g + 2g) / 2


def test_per_step_bookkeeping_is_a_few_operations_whatever_the_number_of_parameters(
    monkeypatch, tiny_config, random_images
):
    """Averaging gradients: a handful of operations for the critic's dozens of parameter
    tensors (each operation is a kernel launch on a GPU, where a small step's time is mostly
    launches)."""
    model = two_process_critic(tiny_config, monkeypatch, other_rank=1.0)
    parameters = len(list(model.D.parameters()))
    with Operations() as averaging:
        model.runtime.average_gradients(model.D)
    assert parameters > 40 and averaging.count <= 4
    images = random_images(4).images
    trainer = Trainer(model, images, images, None)
    assert trainer.opt_d.defaults["foreach"] and runtime.Runtime(torch.device("cuda")).adam_options() == {"fused": True}


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_scoring_never_runs_in_tf32_even_on_an_ampere_gpu(monkeypatch, device):
    """PyTorch allows TF32 in cuDNN convolutions by default, so on Ampere and newer GPUs scoring
    and calibration kept 10 mantissa bits where the CPU and ONNX keep 23."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))  # an A100
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True  # as a user may have set
    try:
        chosen = runtime.setup(device)
        assert chosen.device.type == device and chosen.amp is (device == "cuda")  # training keeps bf16
        assert torch.backends.cudnn.allow_tf32 is False and torch.backends.cuda.matmul.allow_tf32 is False
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved
