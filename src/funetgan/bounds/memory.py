"""The memory that size-like settings imply, checked before anything is allocated.

Each part is a *lower bound* (a few of the tensors the settings certainly create), so a refusal
is never wrong: settings refused here could not run on this machine; settings accepted may still
need several times as much. Plain arithmetic on numbers: no PyTorch, and no import of the
settings (config.py calls this).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Bytes per parameter in training: float32 weights, their gradients and Adam's two moments.
TRAINING_BYTES_PER_PARAMETER = 16
FLOAT32 = 4
# Where the machine's memory cannot be read (no sysconf): a cap no single machine reaches.
UNKNOWN_MEMORY_CAP = 1 << 40
DEFLATE_MAX_RATIO = 1032  # deflate's largest compression ratio (long runs of one byte)


@dataclass(frozen=True)
class Sizes:
    """The size-like settings (config.py fills it from the settings)."""

    image_size: int  # model.image_size: the patch the networks see
    channels: int
    width: int
    z_dim: int
    batch: int  # the larger of batch_size and score.batch_size
    resolution: int | None  # the working resolution (None: "native", not known before reading)


def parts(sizes: Sizes) -> list[tuple[int, str, str]]:
    """(bytes at least, what, the settings that set it) of each part."""
    s, width, z = sizes.image_size, sizes.width, sizes.z_dim
    w4, w8 = width * min(16, s // 4), width * min(16, s // 8)  # nn.blocks.widths at 4 and 8 px
    # G's first linear layer and E's last (z_dim x 16 * w4 each), and one 3 x 3 convolution
    # between the 8 px and 4 px levels in each of G, D and E.
    parameters = 2 * 16 * w4 * z + 3 * 9 * w4 * w8
    # The density terms' precision matrices (nn.density): z_dim^2 and (bottleneck channels)^2.
    precisions = z * z + w4 * w4
    # One full-size feature map (width channels) per image in each of G, D and E.
    activations = sizes.batch * 3 * width * s * s
    found = [
        (
            parameters * TRAINING_BYTES_PER_PARAMETER,
            "the networks' weights, gradients and Adam state",
            "model.z_dim, model.width",
        ),
        (precisions * FLOAT32, "the density terms' precision matrices", "model.z_dim, model.width"),
        (
            activations * FLOAT32,
            "one feature map per network for a full batch",
            "batch_size, score.batch_size, model.width, model.image_size",
        ),
    ]
    if sizes.resolution is not None:  # one image (uint8) and one float32 map at the working size
        found.append((sizes.resolution**2 * (sizes.channels + FLOAT32), "one image and its map", "data.resolution"))
    return found


def physical_memory() -> int:
    """This machine's memory in bytes (UNKNOWN_MEMORY_CAP where the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return UNKNOWN_MEMORY_CAP


def max_inflated(path: Path) -> int:
    """The most bytes a file can hold once decompressed: its size, or for gzip (.gz) its size
    times deflate's largest ratio. What a header promises beyond this is a lie or a truncation."""
    size = path.stat().st_size
    return size * DEFLATE_MAX_RATIO if path.suffix == ".gz" else size


def unaffordable(sizes: Sizes, available: int | None = None) -> str | None:
    """Why the settings cannot fit in `available` bytes (default: this machine's memory), or None."""
    available = physical_memory() if available is None else available
    found = parts(sizes)
    total = sum(size for size, _, _ in found)
    if total <= available:
        return None
    size, what, keys = max(found)
    return (
        f"these settings need at least {human_bytes(total)} of memory, more than this machine's "
        f"{human_bytes(available)}; the most for {what} ({human_bytes(size)}): lower {keys}"
    )


def human_bytes(count: int) -> str:
    """1536 -> '1.5 KiB'; any size, however large (Python's ints have no limit, floats do)."""
    units = ("bytes", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB")
    unit = 0
    while count >= 1024 ** (unit + 1) and unit < len(units) - 1:
        unit += 1
    if unit == 0:
        return f"{count} bytes"
    if count >= 1024 ** (unit + 1):
        return f"more than 1024 {units[unit]}"
    return f"{count / 1024**unit:.1f} {units[unit]}"
