"""Checkpoints as safetensors: network weights, optimiser and RNG state as tensors, everything
else (settings, step, thresholds) as JSON in the file's metadata. Loading never unpickles."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

from ..errors import RunFolderError
from ..files import atomic_write, os_error

META_KEY = "funetgan"
IMPLEMENTATION = ("foreach", "fused", "capturable")  # optimiser settings that say how, not what, it computes


def save(path: str | Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    text = json.dumps(meta)

    def write(tmp: Path) -> None:
        try:
            save_file(tensors, str(tmp), metadata={META_KEY: text})
        except SafetensorError as err:  # e.g. "I/O error: No space left on device (os error 28)"
            raise os_error(err) from None

    atomic_write(path, write)


def load(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise RunFolderError(f"{path}: no such checkpoint")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(META_KEY, "null"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, json.JSONDecodeError) as err:
        raise RunFolderError(f"{path}: not a readable funetgan checkpoint ({err})") from None
    if not isinstance(meta, dict):
        raise RunFolderError(f"{path}: not a funetgan checkpoint (no '{META_KEY}' metadata)")
    return tensors, meta


def prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items()}


def unprefixed(prefix: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    start = len(prefix) + 1
    return {k[start:]: v for k, v in tensors.items() if k.startswith(prefix + ".")}


def optimizer_state(prefix: str, optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimiser's state into tensors (for safetensors) and JSON (param groups)."""
    state = optimizer.state_dict()
    tensors = {
        f"{prefix}.{index}.{name}": value for index, values in state["state"].items() for name, value in values.items()
    }
    return tensors, {"param_groups": state["param_groups"]}


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, prefix: str, tensors: dict[str, torch.Tensor], meta: dict
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in unprefixed(prefix, tensors).items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    # How the optimiser steps (fused on CUDA, foreach on the CPU) is this device's choice, not the
    # checkpoint's: a run saved on a GPU resumes on a CPU and back.
    groups = [
        {
            **saved,
            **({"betas": tuple(saved["betas"])} if "betas" in saved else {}),
            **{key: own[key] for key in IMPLEMENTATION if key in own},
        }
        for saved, own in zip(meta["param_groups"], optimizer.param_groups)
    ]
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def restore_generator(generator: torch.Generator, state: torch.Tensor) -> None:
    """Continue the saved random stream. A checkpoint of another device type holds a state
    this generator cannot take (a CUDA generator's is its seed and offset, a CPU one's a
    Mersenne Twister's): the stream is then seeded from that state, so a resumed run stays
    reproducible, though it draws other numbers than the run would have on its own device."""
    try:
        generator.set_state(state)
    except RuntimeError:
        digest = hashlib.sha256(state.numpy().tobytes()).digest()
        generator.manual_seed(int.from_bytes(digest[:8], "little"))
