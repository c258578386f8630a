import json
import os
import signal

import numpy as np
import pytest
import torch

from funetgan.errors import TrainingDiverged, TrainingStopped
from funetgan.model import FUNetGAN
from funetgan.nn.tensors import to_tensor
from funetgan.runtime import Runtime
from funetgan.training import stages
from funetgan.training import trainer as train
from funetgan.training.batches import BatchSource
from funetgan.training.trainer import Trainer


def state_of(net):
    return {k: v.clone() for k, v in net.state_dict().items()}


def same(a, b):
    return all(torch.equal(a[k], b[k]) for k in a)


def trainer_of(model):
    """A trainer of `model` on 8 random 32-px grey images (4 of them its validation images)."""
    images = (np.random.default_rng(0).random((8, 32, 32, 1)) * 255).astype(np.uint8)
    return Trainer(model, images, images[:4], None)


def test_batches_are_a_function_of_the_index_and_shard_disjointly():
    images = np.arange(24, dtype=np.uint8).reshape(24, 1, 1, 1).repeat(2, 1).repeat(2, 2)
    one = BatchSource(images, 4, seed=3, runtime=Runtime(torch.device("cpu")))
    again = BatchSource(images, 4, seed=3, runtime=Runtime(torch.device("cpu")))
    assert torch.equal(one.batch(7), again.batch(7))
    epoch = torch.cat([one.batch(i) for i in range(6)]).flatten(1)[:, 0]
    assert len(epoch.unique()) == 24  # one epoch visits every image once
    ranks = [BatchSource(images, 4, 3, Runtime(torch.device("cpu"), rank=r, world_size=2)) for r in (0, 1)]
    seen = [set(torch.cat([s.batch(i) for i in range(3)]).flatten(1)[:, 0].tolist()) for s in ranks]
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 24


def test_gan_step_updates_g_and_d_only(random_images, tiny_config):
    model = FUNetGAN(tiny_config())
    trainer = Trainer(model, random_images(8).images, random_images(4).images, None)
    before = {n: state_of(getattr(model, n)) for n in "GDE"}
    stats = trainer.gan_step(0)
    assert {"wd_global", "wd_pixel", "consistency", "gp", "loss_d", "loss_g"} <= set(stats)
    assert trainer.state.critic_steps == model.config.gan.n_critic
    assert not same(before["G"], state_of(model.G)) and not same(before["D"], state_of(model.D))
    assert same(before["E"], state_of(model.E))


def test_encoder_stage_trains_e_through_frozen_g_and_d(random_images, tiny_config):
    model = FUNetGAN(tiny_config())
    trainer = Trainer(model, random_images(8).images, random_images(4).images, None)
    trainer.freeze_gan()
    before = {n: state_of(getattr(model, n)) for n in "GDE"}
    trainer.encoder_step(0)
    assert same(before["G"], state_of(model.G)), "G (weights or batch-norm statistics) changed"
    assert same(before["D"], state_of(model.D))
    assert not same(before["E"], state_of(model.E))
    assert all(p.grad is None for p in list(model.G.parameters()) + list(model.D.parameters()))
    assert all(p.grad is not None for p in model.E.parameters())


def test_fit_writes_logs_samples_and_model(tmp_path, random_images, tiny_config):
    model = FUNetGAN(tiny_config()).fit(random_images(12), run_dir=tmp_path)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in records] == ["gan"] * 3 + ["encoder"] * 3
    assert all(np.isfinite(r["loss_d"]) for r in records[:3])
    assert (tmp_path / "samples" / "gan_000003.png").exists()
    assert (tmp_path / "samples" / "recon_000003.png").exists()
    assert (tmp_path / "model.safetensors").exists()
    assert model.calibration.rule == "normal quantile 0.99" and model.calibration.normals == 1
    done = FUNetGAN.load(tmp_path).training
    assert done["gan"]["steps"] == 3 and done["gan"]["critic_steps"] == 3 * model.config.gan.n_critic
    assert done["encoder"]["steps"] == 3


def test_time_budget_stops_a_stage(tmp_path, random_images, tiny_config):
    cfg = tiny_config()
    cfg.gan.iterations, cfg.gan.max_minutes = 1000, 0.0
    model = FUNetGAN(cfg).fit(random_images(12), run_dir=tmp_path)
    assert set(model.training) == {"warmup", "gan", "encoder"}  # every stage finished
    assert not any(json.loads(line)["stage"] == "gan" for line in (tmp_path / "log.jsonl").read_text().splitlines())


def test_fit_shows_the_clis_progress_bars_unless_told_not_to(capfd, random_images, tiny_config):
    """From Python as from `funetgan train`: a bar per stage and the budget's note; progress=False: nothing."""
    cfg = tiny_config()
    cfg.gan.max_minutes = 0.0
    FUNetGAN(cfg).fit(random_images(12))
    shown = capfd.readouterr()
    assert "gan (budget 0 min)" in shown.err and "encoder: 100%" in shown.err
    assert "gan: time budget of 0 min reached at step 0" in shown.out
    FUNetGAN(cfg).fit(random_images(12), progress=False)
    assert capfd.readouterr() == ("", "")


def test_warmup_and_encoder_reconstructions_are_kept_apart(tmp_path, random_images, tiny_config):
    FUNetGAN(tiny_config(gan__warmup_iterations=2)).fit(random_images(12), run_dir=tmp_path)
    samples = sorted(p.name for p in (tmp_path / "samples").iterdir())
    assert "warmup_000002.png" in samples and "recon_000003.png" in samples


def test_warmup_counts_against_the_stage_1_budget(monkeypatch, random_images, tiny_config):
    budgets = {}
    stage_init = stages.Stage.__init__

    def record(self, name, total, max_minutes, trainer):
        budgets[name] = max_minutes
        stage_init(self, name, total, max_minutes, trainer)

    monkeypatch.setattr(stages.Stage, "__init__", record)
    cfg = tiny_config(gan__warmup_iterations=100_000)
    cfg.gan.iterations, cfg.gan.max_minutes = 100_000, 0.01
    model = FUNetGAN(cfg).fit(random_images(12))
    done = model.training
    assert 0 < done["warmup"]["steps"] < 100_000  # stopped by its share of the budget
    assert budgets["warmup"] == pytest.approx(train.WARMUP_SHARE * 0.01)
    assert budgets["gan"] == pytest.approx(0.01 - done["warmup"]["seconds"] / 60, abs=1e-4)
    assert budgets["encoder"] is None and done["encoder"]["steps"] == 3


@pytest.mark.parametrize(
    "size, settings, stage",
    [(32, {}, "encoder"), (48, {"data__resolution": "48"}, "encoder"), (32, {"gan__warmup_iterations": 2}, "gan")],
    ids=["whole", "patches", "warmup-stopped-in-stage-1"],
)
def test_interrupted_run_resumes_to_the_same_weights(
    tmp_path, monkeypatch, size, settings, stage, random_images, tiny_config
):
    images = random_images(12, size=size)
    config = lambda: tiny_config(**settings)  # noqa: E731
    straight = FUNetGAN(config()).fit(images, run_dir=tmp_path / "a")

    step_name = f"{stage}_step"
    original = getattr(Trainer, step_name)

    def ctrl_c_during_second_step(self, step):
        if step == 1:
            os.kill(os.getpid(), signal.SIGINT)  # noted; the loop stops once this step is done
        return original(self, step)

    monkeypatch.setattr(Trainer, step_name, ctrl_c_during_second_step)
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN where the suite runs in the background
    with pytest.raises(TrainingStopped, match=f"stopped by SIGINT at {stage} step 2; checkpoint saved"):
        FUNetGAN(config()).fit(images, run_dir=tmp_path / "b")
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored
    monkeypatch.setattr(Trainer, step_name, original)
    resumed = FUNetGAN(config()).fit(images, run_dir=tmp_path / "b", resume=True)
    for name in "GDE":
        assert same(state_of(getattr(straight, name)), state_of(getattr(resumed, name))), name
    assert resumed.calibration.levels == pytest.approx(straight.calibration.levels)
    assert resumed.image_threshold == pytest.approx(straight.image_threshold)


def test_resumed_ranks_draw_their_own_latents(tmp_path, tiny_config):
    saved = trainer_of(FUNetGAN(tiny_config()))
    saved.latent(3)
    saved.save_checkpoint(tmp_path / "c.safetensors")
    expected = saved.latent(4)
    ranks = []
    for rank in (0, 1, 2):
        model = FUNetGAN(tiny_config())
        model.runtime = Runtime(torch.device("cpu"), rank=rank, world_size=3)
        trainer = trainer_of(model)
        trainer.resume(tmp_path / "c.safetensors")
        ranks.append(trainer.latent(4))
    assert torch.equal(ranks[0], expected)  # rank 0 (and a single process) continues exactly
    assert not torch.equal(ranks[1], ranks[0]) and not torch.equal(ranks[2], ranks[1])


def test_warmup_trains_g_and_e_as_an_autoencoder_and_leaves_d(random_images, tiny_config):
    model = FUNetGAN(tiny_config(gan__warmup_iterations=2))
    trainer = Trainer(model, random_images(8).images, random_images(4).images, None)
    before = {n: state_of(getattr(model, n)) for n in "GDE"}
    stats = trainer.warmup_step(0)
    assert stats["loss_warmup"] > 0
    assert not same(before["G"], state_of(model.G)) and not same(before["E"], state_of(model.E))
    assert same(before["D"], state_of(model.D))


def test_warmup_codes_have_the_prior_moments(random_images, tiny_config):
    model = FUNetGAN(tiny_config())
    trainer = Trainer(model, random_images(8).images, random_images(4).images, None)
    z = trainer.warmup_codes(trainer.source.batch(0))
    assert z.mean(0).abs().max() < 1e-5 and (z.std(0) - 1).abs().max() < 1e-3


def test_reconstruction_term_in_stage_one_after_a_warmup_also_trains_e(random_images, tiny_config):
    for warmup, e_changes in ((0, False), (2, True)):
        model = FUNetGAN(tiny_config(gan__warmup_iterations=warmup))
        trainer = Trainer(model, random_images(8).images, random_images(4).images, None)
        before = state_of(model.E)
        stats = trainer.gan_step(0)
        assert ("loss_warmup" in stats) == e_changes
        assert (not same(before, state_of(model.E))) == e_changes


def test_encoder_codes_are_standardised_before_stage_two(random_images, tiny_config):
    model = FUNetGAN(tiny_config())
    images = random_images(16).images
    trainer = Trainer(model, images, images, None)
    trainer.standardise_encoder()
    with torch.no_grad():
        z = model.E(to_tensor(images))
    assert z.mean(0).abs().max() < 1e-4 and (z.std(0) - 1).abs().max() < 1e-3


def test_same_seed_and_steps_give_bit_identical_weights_and_metrics_on_the_cpu(tmp_path, random_images, tiny_config):
    """What is logged, sampled and saved, and when, changes nothing: one run writes samples,
    logs and checkpoints every step, the other writes nothing. (Sample grids drawn in
    training mode advanced G's spectral-norm power iteration.)"""
    from funetgan.evaluation.metrics import evaluate

    images = random_images(12)
    test = random_images(6, seed=1)
    test.labels[:3] = 1
    runs = []
    for every, run_dir in ((1, tmp_path), (1000, None)):
        cfg = tiny_config(gan__warmup_iterations=2, checkpoint_every=every, log_every=every)
        model = FUNetGAN(cfg).fit(images, run_dir=run_dir)
        result = model.score(test)
        runs.append(
            (model, result, evaluate(result.scores, result.maps, test, model.image_threshold, model.pixel_threshold))
        )
    assert (tmp_path / "samples" / "warmup_000001.png").exists()
    (a, result_a, metrics_a), (b, result_b, metrics_b) = runs
    for name in "GDE":
        assert same(state_of(getattr(a, name)), state_of(getattr(b, name))), name
    assert a.calibration == b.calibration and metrics_a == metrics_b
    assert np.array_equal(result_a.scores, result_b.scores) and np.array_equal(result_a.maps, result_b.maps)


def test_building_a_model_leaves_the_callers_random_state_alone(tiny_config):
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = FUNetGAN(tiny_config(seed=1))
    assert torch.equal(torch.rand(3), expected)
    again = FUNetGAN(tiny_config(seed=1))  # still the seed's weights
    assert same(state_of(first.G), state_of(again.G))


def _poison_after(monkeypatch, step_name: str, at: int, poison) -> None:
    """Make `Trainer.<step_name>` call `poison(trainer, stats)` from step `at` on."""
    original = getattr(Trainer, step_name)

    def step(self, index):
        stats = original(self, index)
        if index >= at:
            poison(self, stats)
        return stats

    monkeypatch.setattr(Trainer, step_name, step)


@pytest.mark.parametrize(
    "poison, what",
    [
        (lambda trainer, stats: stats.update(loss_d=torch.tensor(float("nan"))), "loss_d"),
        (lambda trainer, stats: next(trainer.model.D.parameters()).data.fill_(float("inf")), "weights"),
    ],
)
def test_divergence_stops_training_and_keeps_the_last_finite_checkpoint(
    tmp_path, monkeypatch, poison, what, random_images, tiny_config
):
    cfg = tiny_config(log_every=2, checkpoint_every=2)
    cfg.gan.iterations = 50
    _poison_after(monkeypatch, "gan_step", 3, poison)  # poisoned after step 4 is computed, before its log
    with pytest.raises(TrainingDiverged, match=rf"stage gan at step 4 \(non-finite {what}\).*lower gan.lr_d"):
        FUNetGAN(cfg).fit(random_images(12), run_dir=tmp_path)
    saved = trainer_of(FUNetGAN(cfg))
    saved.resume(tmp_path / "checkpoint.safetensors")
    assert saved.state.step == 2
    assert all(torch.isfinite(p).all() for p in saved.model.D.parameters())
    assert not (tmp_path / "model.safetensors").exists()


def test_a_checkpoint_with_non_finite_weights_is_never_written(tmp_path, monkeypatch, random_images, tiny_config):
    """Between log steps a checkpoint step checks the weights itself."""
    cfg = tiny_config(log_every=100, checkpoint_every=1)
    _poison_after(
        monkeypatch, "gan_step", 1, lambda trainer, stats: next(trainer.model.G.parameters()).data.fill_(float("nan"))
    )
    with pytest.raises(TrainingDiverged, match="at step 2 .non-finite weights"):
        FUNetGAN(cfg).fit(random_images(12), run_dir=tmp_path)
    saved = trainer_of(FUNetGAN(cfg))
    saved.resume(tmp_path / "checkpoint.safetensors")
    assert saved.state.step == 1 and all(torch.isfinite(p).all() for p in saved.model.G.parameters())


@pytest.mark.parametrize("patch", [None, 32])
def test_a_memory_mapped_set_gives_the_same_batches_as_in_memory(tmp_path, patch, random_images):
    images = random_images(10, size=64).images
    mapped = np.lib.format.open_memmap(tmp_path / "x.npy", "w+", np.uint8, images.shape)
    mapped[:] = images
    rows = np.array([0, 2, 3, 5, 6, 7, 9])  # a calibration split's training rows
    cpu = Runtime(torch.device("cpu"))
    memory = BatchSource(images[rows], 4, 3, cpu, patch=patch)
    disk = BatchSource(np.load(tmp_path / "x.npy", mmap_mode="c"), 4, 3, cpu, patch=patch, rows=rows)
    assert disk.mapped is not None and len(disk) == len(memory) == 7
    for i in range(5):  # past the end of the first epoch
        assert torch.equal(memory.batch(i), disk.batch(i))
    assert torch.equal(memory.images(2, 6), disk.images(2, 6))
