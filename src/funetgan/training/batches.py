"""Training batches: random batches (or random patches) of a uint8 image set, the same on
any device and for a resumed run as for an uninterrupted one."""

from __future__ import annotations

import numpy as np
import torch

from ..nn.tensors import uint8_to_float
from ..runtime import Runtime
from ..scoring import tiling


class BatchSource:
    """Random batches of `batch_size` (this process's share) from a uint8 set: rows `rows` of
    `images` (all rows by default).

    An in-memory set is copied to the device once; a memory-mapped one (`np.memmap`, the
    slice cache of `data.cache`) stays on disk and each batch's rows are read from it, so
    memory holds one batch whatever the set's size. Both give the same batches.

    Batch `i` is a pure function of (seed, i): epoch e visits the permutation seeded by
    (seed, e), each process taking every world_size-th index as DistributedSampler does; so a
    resumed run sees exactly the batches an uninterrupted one would. With `patch` smaller
    than the images, each batch item is a random patch of its image (positions seeded by
    (seed, i) too) and an epoch draws `tiling.patches_per_image` patches from every image.
    """

    def __init__(
        self,
        images: np.ndarray,
        batch_size: int,
        seed: int,
        runtime: Runtime,
        patch: int | None = None,
        rows: np.ndarray | None = None,
    ):
        self.mapped = images if isinstance(images, np.memmap) else None
        if self.mapped is not None:
            self.rows = np.arange(len(images)) if rows is None else np.asarray(rows)
        else:
            chosen = images if rows is None else images[rows]
            self.data = torch.from_numpy(np.ascontiguousarray(chosen)).to(runtime.device)
        self.count = len(images) if rows is None else len(rows)
        self.batch_size, self.seed, self.runtime = batch_size, seed, runtime
        self.size = images.shape[1:3]
        self.patch = patch if patch is not None and self.size != (patch, patch) else None
        self.draws = tiling.patches_per_image(self.size[0], self.size[1], self.patch) if self.patch else 1
        self.per_epoch = (self.count * self.draws // runtime.world_size) // batch_size  # >= 1: data.fit_batch
        self._epoch, self._order = -1, torch.empty(0, dtype=torch.long)  # epoch -1: drawn on first use

    def __len__(self) -> int:
        return self.count

    def batch(self, index: int) -> torch.Tensor:
        epoch, position = divmod(index, self.per_epoch)
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(self.count * self.draws, generator=g, device="cpu") % self.count
            self._order = order[self.runtime.rank :: self.runtime.world_size]
            self._epoch = epoch
        pick = self._order[position * self.batch_size : (position + 1) * self.batch_size]
        return self.runtime.prepare(self._inputs(pick, np.random.default_rng((self.seed, index, self.runtime.rank))))

    def images(self, start: int, stop: int) -> torch.Tensor:
        """Training images start..stop-1 in their stored order (a random patch of each where
        the source draws patches), the same on every process."""
        pick = torch.arange(start, min(stop, self.count), device="cpu")
        return self.runtime.prepare(self._inputs(pick, np.random.default_rng((self.seed, start))))

    def _inputs(self, pick: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
        """Images `pick` (or a random patch of each, positions drawn from `rng`) as a float
        batch on the device.

        What is random is drawn on the host, so batch i is the same on any device; it reaches
        the device in one copy that the host does not wait for (`Runtime.to_device`), and an
        in-memory set is indexed there. A memory-mapped set is indexed where it is read, and
        its batch copied the same way."""
        draws = torch.zeros(len(pick), 3, dtype=torch.int64, device="cpu")  # row, patch corner (top, left)
        draws[:, 0] = pick
        if self.patch is not None:
            height, width = self.size
            draws[:, 1:3] = torch.from_numpy(tiling.random_corners(len(pick), height, width, self.patch, rng))
        if self.mapped is None:
            return uint8_to_float(self._gather(self.data, self.runtime.to_device(draws)))
        read = torch.from_numpy(self.mapped[self.rows[pick.numpy()]])  # the batch's rows, from the page cache
        draws[:, 0] = torch.arange(len(pick), device="cpu")
        return uint8_to_float(self.runtime.to_device(self._gather(read, draws)))

    def _gather(self, data: torch.Tensor, draws: torch.Tensor) -> torch.Tensor:
        """The rows and patches of `draws` (B x 3, on `data`'s device) from uint8 N x H x W x C
        `data`, in one indexing operation."""
        if self.patch is None:
            return data[draws[:, 0]]
        rows = draws[:, 1:2] + torch.arange(self.patch, device=data.device)  # B x patch
        cols = draws[:, 2:3] + torch.arange(self.patch, device=data.device)
        return data[draws[:, 0, None, None], rows[:, :, None], cols[:, None, :]]
