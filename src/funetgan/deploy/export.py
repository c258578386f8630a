"""ONNX export with a parity check: a model file is only written once it passes the ONNX
checker and scores like PyTorch.

What the graph holds: uint8 tiles B x S x S x C (B dynamic) -> E, G, D -> the raw network
terms, one output each, named and ordered as the table of terms says (`scoring.terms`,
`nn.residuals.ScoringNetwork`). What it does not: tiling, the normal-level
normalisation, the blur and the image score. Those run in `scoring.Scorer`, the same numpy
code for PyTorch and onnxruntime, configured from the settings and calibration stored in the
graph's metadata (docs/design.md: with tiling the blur must run on the stitched
map, so an in-graph blur would be a second implementation beside the tiled one, and two
implementations are what drift apart after an export).

The check scores the same images with PyTorch (float32, CPU) and with onnxruntime through
that shared code and compares the final maps and image scores: the largest error relative
to the largest reference value must stay within `tolerance` (PARITY_TOLERANCE, below).
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn.utils import parametrize

from .. import __version__
from ..config import Config, scored_in_tiles, tile_stride, working_size
from ..data import ImageSet, load_dataset
from ..files import atomic_write
from ..nn.residuals import ScoringNetwork
from ..nn.tensors import uint8_to_float
from ..scoring.calibration import calibration_split
from ..scoring.combine import formula, image_smoothness_weight
from ..scoring.scorer import Scorer
from ..scoring.terms import IMAGE, MAP, all_terms, named_terms, network_terms
from .onnx_scorer import FORMAT, INPUT, META_KEY, OnnxScorer, require

# Largest accepted error of the ONNX model's maps and scores, relative to the largest value of
# each in PyTorch. Measured (docs/deployment.md): 1e-6 to 1e-5 on trained models (float32 on
# both sides, other kernels and summation orders), up to a few 1e-4 on untrained networks, where
# D's features of x and of G(E(x)) nearly cancel. A broken export (weights without their
# spectral norm, another resampling rule, a batch size frozen into the graph) is off by 1e-2 to
# 1. At 1e-3 a score can move by 0.1 % of the largest score, so a decision changes only for an
# image that close to the threshold.
PARITY_TOLERANCE = 1e-3
OPSET = 17  # onnxruntime >= 1.14, OpenVINO, TensorRT 8.6 all read it
EXPORTERS = ("torchscript", "dynamo")
CHECK_IMAGES = 256  # at most this many images are scored twice by the check


class ParityError(ValueError):
    """The exported graph does not score like PyTorch; nothing was written."""


class ExportGraph(nn.Module):
    """What the ONNX graph computes: uint8 tiles B x S x S x C -> the network terms."""

    def __init__(self, network: ScoringNetwork):
        super().__init__()
        self.network = network

    def forward(self, tiles: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.network(uint8_to_float(tiles))


@dataclass
class Parity:
    """How far the exported model's outputs are from PyTorch's on the same images."""

    images: int
    source: str  # where the images came from
    maps_max_abs: float
    maps_max_rel: float  # max |onnx - torch| / max |torch|
    scores_max_abs: float
    scores_max_rel: float
    decisions_changed: int  # images on the other side of the image threshold
    mask_pixels_changed: int  # map pixels on the other side of the pixel threshold
    tolerance: float
    runtime: str

    @property
    def passed(self) -> bool:
        return max(self.maps_max_rel, self.scores_max_rel) <= self.tolerance

    def lines(self) -> list[str]:
        verdict = "passed" if self.passed else "FAILED"
        return [
            f"parity check on {self.images} {self.source} ({self.runtime}):",
            f"  maps:   max abs error {self.maps_max_abs:.3g}, max relative error {self.maps_max_rel:.3g}",
            f"  scores: max abs error {self.scores_max_abs:.3g}, max relative error {self.scores_max_rel:.3g}",
            f"  decisions changed: {self.decisions_changed} of {self.images} images, "
            f"{self.mask_pixels_changed} mask pixels",
            f"  tolerance: relative error <= {self.tolerance:g}: {verdict}",
        ]


def export_onnx(
    model,
    path: str | Path,
    check_images: ImageSet | np.ndarray | None = None,
    tolerance: float = PARITY_TOLERANCE,
    exporter: str = "torchscript",
    source: str | None = None,
) -> Parity:
    """Write `model` (a calibrated FUNetGAN) to `path` as ONNX after checking it: the ONNX
    checker, then parity with PyTorch on `check_images` (uint8 N x H x W x C at the working
    resolution; None: generated images, which test the arithmetic, not the data). Raises
    ParityError, and writes nothing, when the outputs differ by more than `tolerance`."""
    if model.calibration is None:
        raise RuntimeError("the model is not calibrated: fit it, or load a trained run")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, got {exporter!r}")
    onnx = require("onnx")
    if check_images is None:
        images, source = generated_images(model.config), "generated images (no data given: pass validation images)"
    else:
        images = check_images.images if isinstance(check_images, ImageSet) else np.asarray(check_images)
        images, source = images[:CHECK_IMAGES], source or "check images"
    model._check_images(images)
    if not len(images):
        raise ValueError("the parity check needs at least one image")

    proto = onnx.load_from_string(_trace(export_graph(model), model.config, exporter))
    meta = metadata(model)
    _set_metadata(proto, meta, model.config)
    onnx.checker.check_model(proto, full_check=True)
    parity = check_parity(model, proto.SerializeToString(), images, tolerance, source)
    if not parity.passed:
        raise ParityError(
            "the exported model does not score like PyTorch, nothing written:\n" + "\n".join(parity.lines())
        )
    _set_metadata(proto, {**meta, "parity": {**asdict(parity), "passed": True}}, model.config)

    def write(tmp: Path) -> None:
        tmp.write_bytes(proto.SerializeToString())

    atomic_write(path, write)
    return parity


def export_graph(model) -> ExportGraph:
    """The scoring network on float32 CPU copies of E, G, D and the feature densities, with
    spectral norm folded into the weights (in eval mode it is a fixed rescaling; ONNX has no
    op for its vdot)."""
    densities = {name: _plain_copy(density) for name, density in model.densities.items()}
    network = ScoringNetwork(
        _plain_copy(model.E), _plain_copy(model.G), _plain_copy(model.D), densities, network_terms()
    )
    return ExportGraph(network).eval()


def _plain_copy(net: nn.Module) -> nn.Module:
    """A float32 CPU eval-mode copy of `net` whose parametrized weights are plain parameters
    holding their current values. By hand rather than `remove_parametrizations`: a deep copy
    shares its parametrized classes with the original, and that function edits the class."""
    net = copy.deepcopy(net).float().cpu().eval()
    net = net.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]  # (not in torch's stubs)
    for module in net.modules():
        if parametrize.is_parametrized(module):
            names = list(module.parametrizations)  # type: ignore[arg-type]
            values = {name: getattr(module, name).detach().clone() for name in names}
            module.__class__ = module.__class__.__bases__[0]  # the layer's own class (Conv2d, Linear)
            del module._modules["parametrizations"]
            for name, value in values.items():
                module.register_parameter(name, nn.Parameter(value))
    return net.requires_grad_(False)


def _trace(graph: ExportGraph, config, exporter: str) -> bytes:
    patch, channels = config.model.image_size, config.model.channels
    example = torch.randint(0, 256, (2, patch, patch, channels), dtype=torch.uint8)
    outputs = [term.name for term in network_terms()]  # in the order the network returns them
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice; tracer notes
        if exporter == "dynamo":
            require("onnxscript")
            # optimize=False: onnxscript's constant folding fails on CBAM's split over a dynamic
            # batch. Its own opset (18): converting down to OPSET fails on the Split node too.
            program = torch.onnx.export(
                graph,
                (example,),
                dynamo=True,
                optimize=False,
                verbose=False,
                input_names=[INPUT],
                output_names=outputs,
                dynamic_shapes=({0: torch.export.Dim.DYNAMIC},),
            )
            assert program is not None  # the dynamo exporter returns its program
            return program.model_proto.SerializeToString()
        buffer = io.BytesIO()
        torch.onnx.export(
            graph,
            (example,),
            buffer,  # type: ignore[arg-type]  # (a file object)
            dynamo=False,
            opset_version=OPSET,
            input_names=[INPUT],
            output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in [INPUT, *outputs]},
        )
        return buffer.getvalue()


def metadata(model) -> dict:
    return {
        "format": FORMAT,
        "funetgan": __version__,
        "torch": torch.__version__,
        "config": model.config.to_dict(),
        "calibration": model.calibration.to_dict(),
        "training": model.training,
    }


def _set_metadata(proto, meta: dict, config: Config) -> None:
    """The full settings and calibration as JSON (what OnnxScorer reads), plus flat entries
    for tools that only show key/value pairs, and the graph's contract in its doc string."""
    calibration, score, tiled = meta["calibration"], config.score, scored_in_tiles(config)
    entries = {
        META_KEY: json.dumps(meta),
        "image_size": config.model.image_size,
        "channels": config.model.channels,
        "working_resolution": config.data.resolution or config.model.image_size,
        **{key: calibration[key] for key in ("image_threshold", "pixel_threshold", "blur_sigma")},
        "normal_levels": json.dumps(calibration["levels"]),
        **{term.weight: getattr(score, term.weight) for term in all_terms() if term.weight},
        "image_smoothness_weight": image_smoothness_weight(score, tiled),
        "image_score": score.image_score,
        "tile_stride": tile_stride(config),
    }
    del proto.metadata_props[:]
    for key, value in entries.items():
        proto.metadata_props.add(key=key, value=str(value))
    proto.producer_name, proto.producer_version = "funetgan", __version__
    outputs = {kind: ", ".join(t.name for t in network_terms() if t.kind == kind) for kind in (MAP, IMAGE)}
    proto.doc_string = (
        f"F-UNetGAN scoring network. Input '{INPUT}': uint8 B x S x S x C tiles (S = image_size). Outputs: the raw "
        f"terms {outputs[MAP]} (B x S x S) and {outputs[IMAGE]} (B). {formula(config)} "
        f"The levels are normal_levels; funetgan's OnnxScorer (onnxruntime + numpy) does this and the tiling."
    )


class _TorchGraph(Scorer):
    """The exported module run by PyTorch (float32, CPU): the reference for a model on a GPU,
    whose kernels round otherwise than the CPU's that onnxruntime is compared on."""

    def __init__(self, model):
        self.config, self.calibration, self.graph = model.config, model.calibration, export_graph(model)

    @torch.inference_mode()
    def _score_tiles(self, tiles: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        return named_terms([t.numpy() for t in self.graph(torch.from_numpy(np.ascontiguousarray(tiles)))])


def reference(model) -> Scorer:
    """PyTorch's side of the check: the model itself where it runs on the CPU (scoring is
    float32 whatever `amp`: autocast is for training only)."""
    return model if model.runtime.device.type == "cpu" else _TorchGraph(model)


def check_parity(model, graph: bytes, images: np.ndarray, tolerance: float, source: str) -> Parity:
    """Final maps and scores of `images` from PyTorch and from onnxruntime, compared."""
    onnx_model = OnnxScorer.load(graph)
    ours, theirs = onnx_model.score(images), reference(model).score(images)
    ort = require("onnxruntime")

    def errors(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        diff = float(np.max(np.abs(a.astype(np.float64) - b)))
        return diff, diff / max(float(np.max(np.abs(b))), 1e-12)

    maps_abs, maps_rel = errors(ours.maps, theirs.maps)
    scores_abs, scores_rel = errors(ours.scores, theirs.scores)
    image_t, rule = model.image_threshold, model.mask_rule
    return Parity(
        images=len(images),
        source=source,
        maps_max_abs=maps_abs,
        maps_max_rel=maps_rel,
        scores_max_abs=scores_abs,
        scores_max_rel=scores_rel,
        decisions_changed=int(np.sum((ours.scores >= image_t) != (theirs.scores >= image_t))),
        mask_pixels_changed=int(
            np.sum(rule(ours.maps, ours.scores >= image_t) != rule(theirs.maps, theirs.scores >= image_t))
        ),
        tolerance=tolerance,
        runtime=f"onnxruntime {ort.__version__} vs PyTorch {torch.__version__}, float32, CPU",
    )


def validation_images(model, data: Path) -> tuple[np.ndarray, str]:
    """The run's own validation images from its dataset folder: its val/ split, or the share of
    training normals that training held out (the same draw: it depends on the run's seed only)."""
    config = model.config
    splits = load_dataset(data, working_size(config), config.model.channels, config.data)
    _, val = calibration_split(splits.train, splits.val, config.data.val_fraction, config.seed)
    shown = f"the first {CHECK_IMAGES} of {len(val)}" if len(val) > CHECK_IMAGES else f"{len(val)}"
    return val.images[:CHECK_IMAGES], f"validation images of {data} ({shown})"


def generated_images(config, n: int = 32, seed: int = 0) -> np.ndarray:
    """Inputs of the right shape when no data is given: half uniform noise, half smooth random
    images (the two ends of what the maps see). "native" runs get images of two patches a side,
    so that tiling and stitching are part of the check."""
    patch, channels = config.model.image_size, config.model.channels
    size = working_size(config) or 2 * patch
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (n - n // 2, size, size, channels), dtype=np.uint8)
    coarse = rng.integers(0, 256, (n // 2, 6, 6, channels), dtype=np.uint8)
    smooth = np.stack(
        [
            np.stack(
                [
                    np.asarray(Image.fromarray(c[..., k]).resize((size, size), Image.Resampling.BICUBIC))
                    for k in range(channels)
                ],
                -1,
            )
            for c in coarse
        ]
    )
    return np.concatenate([noise, smooth])
