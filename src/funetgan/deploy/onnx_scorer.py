"""Scoring with an exported model: onnxruntime and numpy, no PyTorch.

    scorer = OnnxScorer.load("model.onnx")
    result = scorer.score(images)        # the same `Scores` as FUNetGAN.score

The ONNX graph (written by `funetgan export`, see `export.py`) is the networks' part of
scoring: uint8 tiles B x S x S x C (any B) -> the raw network terms (`scoring.terms`). Everything around
it (tiling and stitching, normal-level normalisation, blur, image scores, thresholds) is the
same numpy code the PyTorch model runs (`scoring.Scorer`), configured from the settings and
calibration stored in the graph's metadata. onnxruntime is the optional `onnx` extra.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import ModuleType

import numpy as np

from ..config import Config
from ..errors import MissingExtra, RunFolderError
from ..scoring.calibration import Calibration
from ..scoring.scorer import Scorer
from ..scoring.terms import named_terms, network_terms

META_KEY = "funetgan"  # metadata entry holding settings, calibration and parity as JSON
FORMAT = 1  # of what the graph computes and of META_KEY's content; other formats are refused
INPUT = "images"  # uint8 B x S x S x C tiles; the outputs are the network terms, by name


def require(package: str) -> ModuleType:
    try:
        return importlib.import_module(package)
    except ImportError:
        raise MissingExtra(f"ONNX export and scoring need {package}: pip install funetgan[onnx]") from None


class OnnxScorer(Scorer):
    """An exported F-UNetGAN detector, scored with onnxruntime: `score`, `residual_terms`,
    `scores_from_terms`, `image_threshold`, `pixel_threshold` and `config` as on FUNetGAN."""

    def __init__(self, session, meta: dict, source: str = "<bytes>"):
        self.session = session
        self.source = source
        self.config = Config.from_saved(meta["config"], source)
        self.calibration = Calibration.from_dict(meta["calibration"], source)
        self.training = meta.get("training", {})
        self.parity = meta.get("parity", {})
        names = [output.name for output in session.get_outputs()]
        if [i.name for i in session.get_inputs()] != [INPUT] or set(names) != {t.name for t in network_terms()}:
            raise RunFolderError(
                f"{source}: not a funetgan graph (inputs {[i.name for i in session.get_inputs()]}, outputs {names})"
            )

    @classmethod
    def load(
        cls, path: str | Path | bytes, threads: int | None = None, providers: list[str] | None = None
    ) -> OnnxScorer:
        """An exported model from a .onnx file (or its bytes). `threads`: onnxruntime's
        intra-op threads (default: its choice, one per physical core); `providers`: its
        execution providers (default: the CPU)."""
        ort = require("onnxruntime")
        source = "<bytes>" if isinstance(path, bytes) else str(path)
        if not isinstance(path, bytes) and not Path(path).is_file():
            raise RunFolderError(f"{path}: no such model file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            session = ort.InferenceSession(
                path if isinstance(path, bytes) else str(path), options, providers=providers or ["CPUExecutionProvider"]
            )
        except Exception as err:  # onnxruntime raises its own exception types
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RunFolderError(f"{source}: not a readable ONNX model ({first})") from None
        return cls(session, read_metadata(session.get_modelmeta().custom_metadata_map, source), source)

    def _score_tiles(self, tiles: np.ndarray) -> dict[str, dict[str, np.ndarray]]:
        outputs = [term.name for term in network_terms()]
        return named_terms(self.session.run(outputs, {INPUT: np.ascontiguousarray(tiles)}))


def read_metadata(entries: dict[str, str], source: str) -> dict:
    """The funetgan entry of an ONNX model's metadata, checked for the format this code reads."""
    if META_KEY not in entries:
        raise RunFolderError(
            f"{source}: not a funetgan model (no '{META_KEY}' metadata; export it with funetgan export)"
        )
    try:
        meta = json.loads(entries[META_KEY])
    except json.JSONDecodeError as err:
        raise RunFolderError(f"{source}: unreadable funetgan metadata ({err})") from None
    if meta.get("format") != FORMAT:
        raise RunFolderError(
            f"{source}: exported in format {meta.get('format')}, this funetgan reads format "
            f"{FORMAT}; export the run again"
        )
    return meta
