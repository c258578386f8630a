"""Training as a GPU runs it, checked on the CPU: every tensor made on the device, no step
that waits for the device when it logs nothing, and bf16 autocast agreeing with float32."""

import sys

import numpy as np
import pytest
import torch

from funetgan.model import FUNetGAN
from funetgan.runtime import Runtime
from funetgan.training.trainer import Trainer

# Every stage and every option that adds code to a step: warm-up (and the reconstruction term
# after it), lazy penalties, CutMix, patches of larger images.
SETTINGS = {
    "whole": dict(gan__warmup_iterations=2),
    "patches": dict(gan__warmup_iterations=2, gan__gp_every=2, gan__consistency="cutmix", data__resolution="48"),
}


def mapped(images: np.ndarray, folder) -> np.memmap:
    """`images` memory-mapped from a file, as the slice cache gives them."""
    array = np.memmap(folder / "images.u8", np.uint8, "w+", shape=images.shape)
    array[:] = images
    array.flush()
    return np.memmap(folder / "images.u8", np.uint8, "c", shape=images.shape)


def trainer_for(
    random_images, tiny_config, name: str, memory_mapped: bool = False, run_dir=None, **overrides
) -> Trainer:
    """A trainer of tiny networks under SETTINGS[name] on 12 random images (memory-mapped from
    `run_dir` when `memory_mapped`), writing samples and checkpoints to `run_dir` if given."""
    config = tiny_config(**{**SETTINGS[name], **overrides})
    images = random_images(12, size=48 if name == "patches" else 32).images
    if memory_mapped:
        images = mapped(images, run_dir)
    return Trainer(FUNetGAN(config), images, images, run_dir)


def start_optimisers(trainer: Trainer) -> None:
    """Give each Adam its state (a step of zero gradients changes no weight): on the CPU Adam
    keeps its step counts on the host by design, and makes them without a device."""
    for _, optimiser in trainer.optimisers():
        for group in optimiser.param_groups:
            for p in group["params"]:
                p.grad = torch.zeros_like(p)
        optimiser.step()
        optimiser.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "name, memory_mapped",
    [("whole", False), ("patches", False), ("patches", True)],
    ids=["whole", "patches", "patches-mapped"],
)
def test_every_stage_makes_its_tensors_on_the_device(name, memory_mapped, tmp_path, random_images, tiny_config):
    """With the default device set to `meta`, a tensor made without `device=` lands there and
    the step fails where, on a GPU, it would have been made on the host (and copied, or mixed
    with device tensors). Samples and checkpoints are written at every step."""
    trainer = trainer_for(random_images, tiny_config, name, memory_mapped, tmp_path)
    start_optimisers(trainer)
    with torch.device("meta"):
        trainer.fit()
    assert trainer.state.stage == "done" and (tmp_path / "samples" / "recon_000003.png").exists()
    assert all(
        p.device.type == "cpu" for net in (trainer.model.G, trainer.model.D, trainer.model.E) for p in net.parameters()
    )


# What makes the host wait for a GPU: reading a value back (`numpy()` is not here: it takes host
# tensors only, so a device tensor reaches it through `cpu()`), or a copy from ordinary memory.
READS = ("item", "cpu", "tolist", "__bool__", "__float__", "__int__", "__index__")
COLLECTIVES = ("all_reduce", "broadcast", "all_gather", "all_gather_into_tensor", "reduce_scatter_tensor", "barrier")


class SyncAudit:
    """Records, by (stage, step), what funetgan's own code does that waits for the device:
    a tensor read back (`READS`), a copy to a device that is not `non_blocking`, a tensor made
    from host data straight on a device (`torch.tensor(..., device=...)`), and any collective
    (replaced by no-ops: a two-process runtime without a process group). Bucket (stage, k)
    holds what happens after step k - 1 (its log, when it logs) and in step k."""

    def __init__(self, monkeypatch):
        self.trainer, self.events = None, {}  # `trainer`: set once it is built (its state says the step)
        for name in READS:
            self._wrap(monkeypatch, torch.Tensor, name, lambda *args, **kwargs: True)
        self._wrap(monkeypatch, torch.Tensor, "to", self._blocking_copy)
        self._wrap(monkeypatch, torch, "tensor", lambda *args, **kwargs: "device" in kwargs)
        self._wrap(monkeypatch, torch, "as_tensor", lambda *args, **kwargs: "device" in kwargs)
        for name in COLLECTIVES:
            monkeypatch.setattr(torch.distributed, name, self._collective(name))

    def _wrap(self, monkeypatch, owner, name: str, waits) -> None:
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            caller = sys._getframe(1).f_code
            if "funetgan" in caller.co_filename and waits(*args, **kwargs):
                self.note(f"{name} in {caller.co_name}")
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    @staticmethod
    def _blocking_copy(tensor, *args, **kwargs) -> bool:
        targets = [a for a in (*args, kwargs.get("device")) if isinstance(a, (torch.device, str, torch.Tensor))]
        return bool(targets) and not kwargs.get("non_blocking", False)

    def _collective(self, name: str):
        def record(*args, **kwargs):
            caller = sys._getframe(1).f_code.co_name
            self.note(f"{name} in {caller}")

        return record

    def note(self, what: str) -> None:
        stage, step = (self.trainer.state.stage, self.trainer.state.step) if self.trainer is not None else ("setup", 0)
        self.events.setdefault((stage, step), []).append(what)


def test_steps_that_log_nothing_never_wait_for_the_device(monkeypatch, random_images, tiny_config):
    """Two processes' worth of training (collectives recorded, not run), the optimisers as on
    CUDA (fused: no step counts read on the host), logging only at each stage's last step: every
    step before it makes no read-back, blocking copy or collective but its gradient averages."""
    config = tiny_config(
        **{**SETTINGS["patches"], "gan__iterations": 5, "encoder__iterations": 5, "gan__warmup_iterations": 5}
    )
    config.log_every = config.checkpoint_every = 1000
    audit = SyncAudit(monkeypatch)
    model = FUNetGAN(config, runtime=Runtime(torch.device("cpu"), rank=0, world_size=2))
    images = random_images(24, size=48).images
    trainer = audit.trainer = Trainer(model, images, images, None)
    for name, old in trainer.optimisers():
        setattr(trainer, name, torch.optim.Adam(old.param_groups[0]["params"], lr=1e-4, fused=True))
    trainer.fit()
    quiet = {
        key: [e for e in events if e != "all_reduce in average_gradients"]
        for key, events in audit.events.items()
        if 0 < key[1] < 5
    }
    assert {key: events for key, events in quiet.items() if events} == {}
    averages = {
        key: events.count("all_reduce in average_gradients") for key, events in audit.events.items() if 0 < key[1] < 5
    }
    # warm-up: G and E; stage 1: D at each of 2 critic steps, then G and E (the reconstruction
    # term after the warm-up); stage 2: E
    assert averages == {
        **{("warmup", k): 2 for k in range(1, 5)},
        **{("gan", k): 4 for k in range(1, 5)},
        **{("encoder", k): 1 for k in range(1, 5)},
    }


def test_scoring_reads_each_batch_back_from_the_device_once(monkeypatch, random_images, tiny_config):
    """All eight residual terms of a batch come back in one copy (a copy waits for the device)."""
    model = FUNetGAN(tiny_config(data__resolution="48", score__tile_stride=16))
    audit = SyncAudit(monkeypatch)
    terms = model.residual_terms(random_images(3, size=48).images, batch_size=10)  # 3 x 4 tiles: 2 batches
    reads = [event for events in audit.events.values() for event in events if event.split()[0] in READS]
    assert reads == ["cpu in _score_tiles"] * 2
    assert terms["pixel_residual"].shape == (3, 48, 48) and terms["image_features"].shape == (3, 4)


STEPS = {  # each step, and the networks it trains
    "warmup": (lambda trainer: trainer.warmup_step(0), ("G", "E")),
    "critic": (lambda trainer: trainer.critic_step(), ("D",)),
    "generator": (lambda trainer: trainer.generator_step(0), ("G", "E")),  # with the reconstruction term
    "encoder": (lambda trainer: trainer.encoder_step(0), ("E",)),
}


@pytest.mark.parametrize("stage", list(STEPS))
def test_bf16_autocast_trains_every_stage_as_float32_does(stage, random_images, tiny_config):
    """One step from the same weights and draws, in float32 and under bf16 autocast (as on a
    GPU with bf16 units; this CPU runs it too): finite losses and the same gradients. bf16
    keeps 3 significant digits, so through the networks' depth even sound bf16 steps give
    gradient cosines of 0.997 (warm-up) to 0.9999 (critic) here; what this test caught gave
    0.72 (the warm-up's E codes standardised in bf16) and 0.87 (the critic's penalty in bf16)."""
    step, trained = STEPS[stage]
    grads, stats = [], []
    for amp in (False, True):
        trainer = trainer_for(random_images, tiny_config, "whole")
        trainer.model.runtime.amp = amp
        if stage == "encoder":
            trainer.freeze_gan()
        stats.append(step(trainer))
        grads.append(
            torch.cat(
                [
                    p.grad.flatten()
                    for name in trained
                    for p in getattr(trainer.model, name).parameters()
                    if p.grad is not None
                ]
            )
        )
    assert stats[0].keys() == stats[1].keys() and all(torch.isfinite(value) for value in stats[1].values())
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.995
