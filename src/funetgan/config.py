"""Settings as nested dataclasses, read from and written to YAML.

Every key is addressable as a dotted path (``model.image_size``, ``gan.iterations``) so the
command line can override any of them with ``--set key=value``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import functools
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .bounds.memory import Sizes, unaffordable
from .bounds.settings_values import BOUNDS, check_bound, check_finite, coerce, load_file
from .errors import SettingsError
from .scoring.tiling import check_tile_stride

VARIANTS = ("conv", "conv_attn", "res", "res_attn")
CRITIC_HEADS = ("unet", "global")  # the critics model.CRITICS builds

# Named sets of settings (`funetgan train --recipe NAME`), applied under the settings file and --set.
RECIPES = {
    # Useful maps from minutes of CPU time (docs/design.md): stage 1 spends 40% of its
    # budget on an autoencoder warm-up (a step costs a fifth to a tenth of an adversarial one),
    # then keeps a reconstruction term; one critic step per generator step at a 4x critic
    # learning rate; penalties on every 4th critic step. Budgets, not step counts, end the stages.
    "cpu": [
        "gan.warmup_iterations=100000",
        "gan.n_critic=1",
        "gan.lr_d=0.0004",
        "gan.gp_every=4",
        "gan.iterations=100000",
        "gan.max_minutes=15",
        "encoder.iterations=100000",
        "encoder.max_minutes=5",
    ]
}


@dataclass
class ModelConfig:
    image_size: int = 64
    channels: int = 1
    width: int = 8
    z_dim: int = 128
    variant: str = "res_attn"
    critic_head: str = "unet"  # "unet" (F-UNetGAN) or "global" (f-AnoGAN baseline critic)


@dataclass
class GANConfig:
    iterations: int = 2000  # generator steps
    # G+E autoencoder steps before the adversarial stage (0: none, the published method); under
    # max_minutes the warm-up stops at train.WARMUP_SHARE of it. After a warm-up, L_G keeps its
    # loss at train.RECON_WEIGHT (the CPU recipe's measured pair; docs/design.md).
    warmup_iterations: int = 0
    max_minutes: float | None = None  # wall-clock cap on stage 1, warm-up included
    lr_g: float = 1e-4
    lr_d: float = 1e-4
    n_critic: int = 5
    lambda_gp: float = 10.0
    lambda_cons: float = 1.0
    consistency: str = "mixup"  # "mixup", "cutmix" or "none"
    gp_every: int = 1  # lazy regularisation: penalties every k-th critic step, weighted by k
    pixel_gp: str = "local"  # GP_p on "mean" of D_p (as published) or "local": per-pixel (losses.py)


@dataclass
class EncoderConfig:
    iterations: int = 2000
    max_minutes: float | None = None
    lr: float = 1e-4
    kappa: float = 1.0


@dataclass
class ScoreConfig:
    kappa: float = 1.0  # weight of D-feature residuals in maps and image scores
    # Weight of the feature-density term pixel_density in the map (nn/density.py: how unlike
    # training normals' D's bottleneck features are at each location). With the smoothness
    # term beside it, 1 beat 2 on all three selection textures (pixel AUROC and AUPRO;
    # CHANGELOG.md, "Textures and localisation"). 0: residual maps only, as published.
    density_weight: float = 1.0
    # Weight of the smoothness term pixel_contrast: how far below calibration normals' local
    # contrast (the standard deviation in a 5 x 5 window of the image itself) each pixel's is,
    # in their spreads (scoring.terms, "below"): a smooth defect on a stochastic texture is rebuilt
    # well by G and missed by the residual. 2 was chosen on the selection split: it raised
    # pixel AUROC / AUPRO on grass and gravel by 0.1-0.2 and cost brick little (CHANGELOG.md,
    # "Localisation"). 0: off.
    smoothness_weight: float = 2.0
    image_score: str = "izif"  # "izif" (f-AnoGAN mse terms), "max" or "topk" of the pixel map
    # Weight of the latent-density term in izif (nn/density.py: how unlike training normals'
    # codes E's latent code z = E(x) is, one Gaussian of its z_dim values). 8 was chosen on the
    # selection splits: image AUROC +0.066 on Fashion-MNIST (5 classes x 3 seeds), +0.042 on
    # grass, +0.006 on brick, -0.007 on gravel (docs/design.md). 0: izif as published.
    latent_density_weight: float = 8.0
    # Smoothness evidence in the izif image score: the score becomes the larger of izif and this
    # weight times the image's smoothest region (the maximum of the blurred smoothness term),
    # each standardised by its mean and spread over calibration normals
    # (calibration.image_evidence_levels):
    # izif misses what G rebuilds well, a smudge or a flat patch on a stochastic texture. None:
    # 1 on images scored in tiles, 0 (izif alone) on whole images (combine.TILED_IMAGE_SMOOTHNESS;
    # chosen on the selection splits: CHANGELOG.md, "Textures and localisation").
    image_smoothness_weight: float | None = None
    # The map's blur, in the map's pixels; None: 4 px at a model size of 128, scaled with the
    # size, and twice that on maps stitched from tiles (combine.TILED_BLUR).
    blur_sigma: float | None = None
    normal_quantile: float = 0.99  # threshold rule when validation has no anomalies
    # Tiled scoring (with data.resolution): tiles start every tile_stride px (None: half the
    # patch); image terms of the tiles become one per image by their maximum.
    tile_stride: int | None = None
    batch_size: int = 64  # images (or tiles) per pass of the networks: bounds scoring memory
    lung_only: bool = True  # CT with lung masks: maps, scores, metrics and thresholds in the lung only


@dataclass
class DataConfig:
    # Working resolution: None resizes every image to model.image_size (whole images); a number
    # N resizes to N x N and the networks see patches of model.image_size (training: random
    # patches; scoring: overlapping tiles stitched back); "native" keeps each image's own size
    # (all images of a set must share it).
    resolution: str | None = None
    val_fraction: float = 0.1  # normal training images held out for calibration
    category: str | None = None  # MVTec AD category when --data is the dataset root
    normal_class: int | None = None  # one-class protocol for labelled sets (IDX)
    on_bad_file: str = "error"  # "error" or "skip" (skipped files are listed)
    hu_window: tuple[float, float] = (-1000.0, 400.0)  # CT lung window
    # CT volumes without a lung mask: the lung found as the air-like voxels inside the body
    # (HU below this, e.g. -320; data/lungs.py) and scored as a lung mask would be; None: none.
    lung_threshold: float | None = None
    test_fraction: float = 0.3  # CT volumes (patients) held out for testing; split by volume
    split_seed: int = 0  # seed of that patient split, fixed so the test set never changes
    # Volume sets (CT, MSD): a folder for the memory-mapped slice cache (data/cache.py), so
    # volumes are decoded once and slices are read from disk; None: decoded into memory.
    cache_dir: str | None = None


@dataclass
class LogConfig:
    # Experiment tracking beside log.jsonl and samples/ (tracking.py): losses, sample grids,
    # reconstructions, final figures. Off: nothing of either is imported.
    tensorboard: bool = False  # event files in the run's (or test's) folder, tensorboard/
    # One MLflow run per train or test, at MLflow's MLFLOW_TRACKING_URI (default ./mlflow.db),
    # in experiment MLFLOW_EXPERIMENT_NAME (default "funetgan").
    mlflow: bool = False


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    data: DataConfig = field(default_factory=DataConfig)
    log: LogConfig = field(default_factory=LogConfig)
    # The global batch: under torchrun each of N processes draws batch_size / N images (rounded
    # down to a multiple of N); lowered, with a note, where the training images are fewer.
    batch_size: int = 64
    seed: int = 0
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:1", "mps"
    # bf16 autocast in training where the device has bf16 units (CUDA compute capability >= 8.0);
    # never on a CPU. Scoring and calibration always run float32.
    amp: bool = True
    log_every: int = 25
    checkpoint_every: int = 250  # a checkpoint and sample grids every this many steps

    def validate(self) -> Config:
        m = self.model
        if m.image_size < 32 or m.image_size > 256 or m.image_size & (m.image_size - 1):
            raise SettingsError(f"model.image_size must be a power of two in 32..256, got {m.image_size}")
        if m.channels not in (1, 3):
            raise SettingsError(f"model.channels must be 1 or 3, got {m.channels}")
        if m.variant not in VARIANTS:
            raise SettingsError(f"model.variant must be one of {VARIANTS}, got {m.variant!r}")
        if m.critic_head not in CRITIC_HEADS:
            raise SettingsError(f"model.critic_head must be one of {CRITIC_HEADS}, got {m.critic_head!r}")
        if self.gan.consistency not in ("mixup", "cutmix", "none"):
            raise SettingsError(f"gan.consistency must be mixup, cutmix or none, got {self.gan.consistency!r}")
        if self.gan.pixel_gp not in ("mean", "local"):
            raise SettingsError(f"gan.pixel_gp must be mean or local, got {self.gan.pixel_gp!r}")
        working_size(self)  # checks data.resolution
        if self.score.tile_stride is not None:
            check_tile_stride(self.score.tile_stride, m.image_size)
        if self.score.image_score not in ("izif", "max", "topk"):
            raise SettingsError(f"score.image_score must be izif, max or topk, got {self.score.image_score!r}")
        if self.data.on_bad_file not in ("error", "skip"):
            raise SettingsError(f"data.on_bad_file must be error or skip, got {self.data.on_bad_file!r}")
        for key in all_keys():
            check_finite(key, get_key(self, key))
        for key, bound in BOUNDS.items():
            check_bound(key, get_key(self, key), bound)
        # Size-like settings whose tensors cannot fit in this machine's memory, refused before
        # anything is allocated (bounds/memory.py: lower bounds, so a refusal is certain).
        problem = unaffordable(
            Sizes(
                m.image_size,
                m.channels,
                m.width,
                m.z_dim,
                max(self.batch_size, self.score.batch_size),
                working_size(self),
            )
        )
        if problem:
            raise SettingsError(problem)
        low, high = self.data.hu_window
        if not low < high:
            raise SettingsError(f"data.hu_window's low end must lie below its high end, got [{low:g}, {high:g}]")
        return self

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict[str, Any], base: Config | None = None) -> Config:
        """`values` (nested, as in YAML) set on `base` (default: the defaults)."""
        config = copy.deepcopy(base) if base is not None else cls()
        for key, value in _flatten(values).items():
            set_key(config, key, value)
        return config.validate()

    @classmethod
    def recipe(cls, name: str, minutes: float | None = None) -> Config:
        """The defaults with recipe `name` on top, as `funetgan train --recipe NAME` (RECIPES).
        `minutes`: the whole training budget instead of the recipe's, shared between the stages
        as the recipe shares its own (the CPU recipe's 15 + 5: 3.75 + 1.25 minutes for 5)."""
        if name not in RECIPES:
            raise SettingsError(f"no recipe {name!r}; the recipes are {', '.join(RECIPES)}")
        config = apply_overrides(cls(), RECIPES[name])
        if minutes is None:
            return config
        check_bound("minutes", minutes, "positive")
        stages: tuple[GANConfig | EncoderConfig, ...] = (config.gan, config.encoder)
        budgets = [stage.max_minutes or 0.0 for stage in stages]
        if not sum(budgets):
            raise SettingsError(f"recipe {name!r} has no time budget to set to {minutes:g} minutes")
        for stage, budget in zip(stages, budgets):
            if stage.max_minutes is not None:  # a stage without a budget keeps its step count
                stage.max_minutes = budget * minutes / sum(budgets)
        return config

    @classmethod
    def load(cls, path: str | Path, base: Config | None = None) -> Config:
        """Settings from a YAML file, on top of `base` (default: the defaults)."""
        path = Path(path)
        try:
            values = load_file(path) or {}
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
            raise SettingsError(f"{path}: cannot read settings: {' '.join(str(err).split())}") from None
        if not isinstance(values, dict):
            raise SettingsError(f"{path}: settings must be a mapping of keys to values")
        return cls.from_saved(values, str(path), base)

    @classmethod
    def from_saved(cls, values: dict[str, Any], source: str, base: Config | None = None) -> Config:
        """`from_dict` of settings stored in `source` (a settings file, a model's metadata): a
        key this version does not know, or a bad value, is one line naming the source."""
        try:
            return cls.from_dict(values, base)
        except (KeyError, ValueError, TypeError, SettingsError) as err:
            raise SettingsError(f"{source}: {err}") from None


def working_size(config: Config) -> int | None:
    """The size images are loaded at: the model's size without data.resolution, N for a
    resolution of N, None for "native" (no resizing)."""
    resolution, patch = config.data.resolution, config.model.image_size
    if resolution is None:
        return patch
    if str(resolution).strip().lower() == "native":
        return None
    try:
        size = int(str(resolution))
    except ValueError:
        raise SettingsError(f"data.resolution must be a number of pixels or 'native', got {resolution!r}") from None
    if size < patch:
        raise SettingsError(
            f"data.resolution ({size}) must be at least model.image_size ({patch}), the patch the networks see"
        )
    return size


def scored_in_tiles(config: Config) -> bool:
    """Whether maps are stitched from tiles: a working resolution other than the patch's."""
    return working_size(config) != config.model.image_size


def tile_stride(config: Config) -> int:
    """Pixels between tile starts when scoring: score.tile_stride, else half a patch."""
    return config.score.tile_stride or max(1, config.model.image_size // 2)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _flatten(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def all_keys(section: type | None = None, prefix: str = "") -> list[str]:
    """Every dotted setting key, e.g. ``model.image_size``."""
    section = section or Config
    hints = typing.get_type_hints(section)
    keys = []
    for f in dataclasses.fields(section):
        kind = hints[f.name]
        section_type = isinstance(kind, type) and dataclasses.is_dataclass(kind)
        keys += all_keys(kind, f"{prefix}{f.name}.") if section_type else [prefix + f.name]
    return keys


@functools.cache
def _known_keys() -> frozenset[str]:
    """all_keys() once: every setting's lookup checks its key (type hints cost ~1 ms a class)."""
    return frozenset(all_keys())


def _resolve(config: Config, key: str) -> tuple[Any, str]:
    if key not in _known_keys():
        close = difflib.get_close_matches(key, all_keys(), n=3)
        hint = f" (did you mean {' or '.join(close)}?)" if close else ""
        raise SettingsError(f"unknown setting {key!r}{hint}")
    *parents, leaf = key.split(".")
    node = config
    for part in parents:
        node = getattr(node, part)
    return node, leaf


def get_key(config: Config, key: str) -> Any:
    node, leaf = _resolve(config, key)
    return getattr(node, leaf)


def set_key(config: Config, key: str, value: Any) -> None:
    """Set a dotted key, converting ``value`` (a string from the command line, or a YAML
    value) to the setting's declared type."""
    node, leaf = _resolve(config, key)
    kind = typing.get_type_hints(type(node))[leaf]
    setattr(node, leaf, coerce(key, kind, value))


def apply_overrides(config: Config, overrides: list[str]) -> Config:
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise SettingsError(f"--set expects key=value, got {item!r}")
        set_key(config, key.strip(), value.strip())
    return config.validate()
