"""The table of terms: every raw term of the anomaly map and of izif, declared once.

A term's entry says what it is (`about`), how it is computed (a function of one pass of E, G
and D, `nn.residuals.Forward`, which makes it an output of the scoring network and of the
ONNX graph; or a Gaussian fitted on features of that pass, a density term; or a numpy
function of the images themselves), the setting that weighs it and how it is measured
against calibration normals. Scoring (`combine`), calibration, the scoring network, the ONNX
export and docs/architecture.md's list all read `TERMS`; adding a term is one entry and, where
no existing function fits, one function here.

Network functions use tensor methods only: this module is imported by the numpy-only ONNX
path (`deploy.onnx_scorer`), which must work where PyTorch is not installed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:
    import torch

    from ..nn.residuals import Forward

MAP, IMAGE = "map", "image"  # a term per pixel (N x H x W), or one value per tile (N x T)
LEVEL, BELOW = "level", "below"  # how a term is measured against calibration normals (`combine.normalised`)


@dataclass(frozen=True)
class Term:
    """One raw term. `kind`: MAP or IMAGE. How it is computed, one of: `network` (a function
    of the pass: B x S x S for a map, B for an image term), `features` (a density term: the
    features B x C x h x w whose distance to a Gaussian fitted on training normals it is;
    `channels` gives C from the model), `images` (numpy, uint8 N x H x W x C -> N x H x W).
    `weight`: the `score.*` setting that weighs it (None: 1). `normaliser`: LEVEL divides by its
    mean over calibration normals; BELOW measures how far below that mean it is, in their
    spread (0 above it). `in_region` (image terms): its value counting only a scoring region's
    pixels (`restrict`; None: it sees the whole image)."""

    name: str
    kind: str
    about: str
    network: Callable[[Forward], torch.Tensor] | None = None
    features: Callable[[Forward], torch.Tensor] | None = None
    channels: Callable[[Any], int] | None = None
    images: Callable[[np.ndarray], np.ndarray] | None = None
    weight: str | None = None
    normaliser: str = LEVEL
    in_region: Callable[[Terms, np.ndarray], np.ndarray] | None = None

    def __post_init__(self) -> None:
        ways = [way for way in (self.network, self.features, self.images) if way is not None]
        assert len(ways) == 1, f"term {self.name}: give one of network, features, images"
        assert (self.features is None) == (self.channels is None), f"term {self.name}: features need channels"
        assert self.kind in (MAP, IMAGE) and self.normaliser in (LEVEL, BELOW), f"term {self.name}: kind, normaliser"

    @property
    def fitted(self) -> bool:
        """A density term: calibration fits its Gaussian first, and without one it counts 0."""
        return self.features is not None


# ---- how the terms are computed --------------------------------------------------------------
def pixel_residual(f: Forward) -> torch.Tensor:
    return (f.x.float() - f.recon.float()).abs().mean(1)


def pixel_features(f: Forward) -> torch.Tensor:
    """D's decoder features of x against those of G(E(x)); a global-only critic has none: zeros."""
    if f.out_x.f_p is None or f.out_r.f_p is None:
        import torch  # only ever called with PyTorch at hand

        return torch.zeros_like(f.x[:, 0].float())
    return (f.out_x.f_p - f.out_r.f_p).abs().mean(1).float()


def image_residual(f: Forward) -> torch.Tensor:
    return (f.x.float() - f.recon.float()).pow(2).flatten(1).mean(1)


def image_features(f: Forward) -> torch.Tensor:
    return (f.out_x.f_g - f.out_r.f_g).float().pow(2).flatten(1).mean(1)


def residual_in_region(terms: Terms, inside: np.ndarray) -> np.ndarray:
    """The mean squared residual over the region's pixels (for grey images, as CT is, the squared
    per-pixel residual is exactly the image mse's summand), N x 1."""
    area = np.maximum(inside.reshape(len(inside), -1).sum(1), 1)
    squared = (terms["pixel_residual"] ** 2 * inside).reshape(len(inside), -1).sum(1, dtype=np.float64)
    return (squared / area)[:, None]


def local_contrast(images: np.ndarray, window: int = 5) -> np.ndarray:
    """N x H x W float32: the standard deviation of uint8 N x H x W x C `images`' pixels (on
    the networks' [-1, 1] scale, channels averaged) in a `window` x `window` neighbourhood,
    mirrored at the edges."""
    x = images.astype(np.float32) / np.float32(127.5) - np.float32(1)
    size = (1, window, window, 1)
    mean = ndimage.uniform_filter(x, size, mode="mirror")
    variance = ndimage.uniform_filter(x * x, size, mode="mirror") - mean * mean
    return np.sqrt(np.maximum(variance, 0)).mean(3)


# ---- the table (default weights: `config.ScoreConfig`) ---------------------------------------
TERMS: tuple[Term, ...] = (
    Term("pixel_residual", MAP, "|x - G(E(x))|, channels averaged", network=pixel_residual),
    Term(
        "pixel_features",
        MAP,
        "D's last decoder features of x against those of G(E(x))",
        network=pixel_features,
        weight="kappa",
    ),
    Term(
        "pixel_density",
        MAP,
        "how unlike normal images' D's bottleneck features of x are at each location",
        features=lambda f: f.out_x.f_g,
        channels=lambda model: model.D.bottleneck_width,
        weight="density_weight",
    ),
    Term(
        "pixel_contrast",
        MAP,
        "the local contrast of x (its pixels' spread in a 5 x 5 window): "
        "where it falls below normal texture's, a smudge or a flat foreign object",
        images=local_contrast,
        weight="smoothness_weight",
        normaliser=BELOW,
    ),
    Term("image_residual", IMAGE, "mse(x, G(E(x)))", network=image_residual, in_region=residual_in_region),
    Term(
        "image_features",
        IMAGE,
        "mse of D's bottleneck features of x and of G(E(x))",
        network=image_features,
        weight="kappa",
    ),
    Term(
        "latent_density",
        IMAGE,
        "how unlike normal images' codes E's code of x is",
        features=lambda f: f.z[:, :, None, None],
        channels=lambda model: model.config.model.z_dim,
        weight="latent_density_weight",
    ),
)
# The term whose smoothest region is image evidence on tiled images (`combine.image_evidence`).
SMOOTHNESS = "pixel_contrast"


# Other modules read the table through these functions, at the time of the call (a test adds a
# term to `TERMS` for its duration).
def all_terms() -> tuple[Term, ...]:
    return TERMS


def of_kind(kind: str) -> tuple[Term, ...]:
    return tuple(term for term in TERMS if term.kind == kind)


def network_terms() -> tuple[Term, ...]:
    """The terms the scoring network computes, in the order of its (and the ONNX graph's) outputs."""
    return tuple(term for term in TERMS if term.images is None)


def density_terms() -> tuple[Term, ...]:
    return tuple(term for term in TERMS if term.fitted)


def term(name: str) -> Term:
    return next(t for t in TERMS if t.name == name)


@dataclass
class Terms:
    """Raw terms by name: maps N x H x W (stitched at working resolution), image terms N x T
    (one per tile; T = 1 for whole images); `region` N x H x W bool: the pixels that count
    (None: all)."""

    arrays: dict[str, np.ndarray]
    region: np.ndarray | None = None

    def __getitem__(self, name: str) -> np.ndarray:
        return self.arrays[name]

    def rows(self, index: np.ndarray) -> Terms:
        """The terms of the images at `index` only."""
        return Terms(
            {name: value[index] for name, value in self.arrays.items()},
            None if self.region is None else self.region[index],
        )

    def normal_levels(self) -> dict[str, float]:
        return normal_levels([self])


def named_terms(outputs: list[np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """The scoring network's outputs (`network_terms`' order) by kind and name: what a tile
    scorer returns (`tiling.TileScorer`), whichever runtime ran them."""
    named = dict(zip((t.name for t in network_terms()), outputs))
    return {
        "maps": {t.name: named[t.name] for t in network_terms() if t.kind == MAP},
        "values": {t.name: named[t.name] for t in network_terms() if t.kind == IMAGE},
    }


def image_terms(images: np.ndarray) -> dict[str, np.ndarray]:
    """The terms computed from uint8 `images` themselves (no network)."""
    return {t.name: t.images(images) for t in TERMS if t.images is not None}


def normal_levels(chunks: Iterable[Terms]) -> dict[str, float]:
    """Mean of each term over the images of `chunks` (the calibration normals, a chunk of
    images at a time), and "<name>_std", the standard deviation, of the BELOW terms; map terms
    over the scoring region's pixels only (they are 0 outside it)."""
    sums: dict[str, float] = {}
    counts = {MAP: 0, IMAGE: 0}
    spread = [t.name for t in TERMS if t.normaliser == BELOW]
    for terms in chunks:
        first = {kind: terms[of_kind(kind)[0].name] for kind in (MAP, IMAGE)}
        counts[MAP] += first[MAP].size if terms.region is None else int(terms.region.sum())
        counts[IMAGE] += first[IMAGE].size
        for t in TERMS:
            sums[t.name] = sums.get(t.name, 0.0) + float(terms[t.name].sum(dtype=np.float64))
        for name in spread:
            square = float(np.square(terms[name], dtype=np.float64).sum())
            sums[f"{name}_square"] = sums.get(f"{name}_square", 0.0) + square
    counts[MAP] = max(counts[MAP], 1)
    levels = {t.name: sums[t.name] / counts[t.kind] for t in TERMS}
    for name in spread:
        levels[f"{name}_std"] = math.sqrt(max(sums[f"{name}_square"] / counts[MAP] - levels[name] ** 2, 0.0))
    return levels


def restrict(terms: Terms, region: np.ndarray) -> Terms:
    """`terms` counting only `region`'s pixels: map terms 0 outside it, image terms as their
    `in_region` says."""
    inside = region.astype(np.float32)

    def restricted(t: Term) -> np.ndarray:
        if t.kind == MAP:
            return terms[t.name] * inside
        return terms[t.name] if t.in_region is None else t.in_region(terms, inside)

    return Terms({t.name: restricted(t) for t in TERMS}, region)
