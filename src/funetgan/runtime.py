"""Where and how the networks run: device choice, mixed precision, and data-parallel
training under `torchrun` (gradients averaged across processes by all-reduce).

DDP is done by hand rather than with `DistributedDataParallel` because the critic step needs
double backward (gradient penalty) and several forward passes per backward, which DDP's
reducer does not support; averaging gradients after `backward()` is exact and simple.
"""

from __future__ import annotations

import contextlib
import os
import signal
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn

from .errors import SettingsError

M = TypeVar("M", bound=nn.Module)


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp: bool = False  # bf16 autocast in training; scoring and calibration always run float32

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def autocast(self):
        """bf16 autocast where `amp` (training only: scoring and calibration are float32, as
        the ONNX graph and the CPU compute them, so thresholds mean the same everywhere)."""
        if not self.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    # Batches and networks are channels-last: faster convolutions on CPUs and GPUs alike (5 % at
    # 64 px on a 2-core CPU, within the noise at 32 px: CHANGELOG.md, "Speed").
    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        return batch.contiguous(memory_format=torch.channels_last)

    def to_device(self, host: torch.Tensor) -> torch.Tensor:
        """A host tensor on the device, without making the host wait: on CUDA through pinned
        (page-locked) memory, whose copies run in the background (a copy from ordinary memory
        waits for the device to finish its queued work first)."""
        if self.device.type == "cuda":
            host = host.pin_memory()
        return host.to(self.device, non_blocking=True)

    def place(self, module: M) -> M:
        # Module.to takes memory_format (PyTorch's documentation); its type stubs leave it out.
        return module.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]

    def adam_options(self) -> dict:
        """How Adam steps here: one fused kernel on CUDA; elsewhere each update as one operation
        over all parameters (foreach) rather than one per parameter, which on the CPU computes
        exactly what the per-parameter loop does."""
        return {"fused": True} if self.device.type == "cuda" else {"foreach": True}

    def sync_parameters(self, module: nn.Module) -> None:
        """Make every process start from rank 0's weights and buffers."""
        if self.distributed:
            for tensor in list(module.parameters()) + list(module.buffers()):
                dist.broadcast(tensor.data, src=0)

    def average_gradients(self, module: nn.Module) -> None:
        """The mean of every process's gradients of `module`, by one all-reduce of them all
        joined in one buffer; a few operations whatever the number of parameters (on a GPU the
        per-parameter copies would be most of a small step's kernel launches)."""
        if not self.distributed:
            return
        grads = [in_memory_order(p.grad) for p in module.parameters() if p.grad is not None]
        flat = torch.cat(grads)
        dist.all_reduce(flat)
        flat /= self.world_size
        torch._foreach_copy_(grads, list(flat.split([g.numel() for g in grads])))

    def any_rank(self, flag: bool) -> bool:
        """True on every process when `flag` is true on any (e.g. a time limit reached)."""
        return bool(self.max_rank(int(flag)))

    def max_rank(self, value: int) -> int:
        """The largest of every process's `value`, on every process (e.g. a reason to stop)."""
        if not self.distributed:
            return value
        tensor = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())


def in_memory_order(tensor: torch.Tensor) -> torch.Tensor:
    """A dense tensor's elements as a 1-D view, in the order they lie in memory: a view (no
    copy) for channels-last tensors too, whose `flatten()` would copy. Gradients are dense:
    they take their parameter's layout."""
    if not (tensor.is_contiguous() or tensor.is_contiguous(memory_format=torch.channels_last)):
        raise ValueError(f"a tensor of shape {tuple(tensor.shape)} and strides {tensor.stride()} is not dense")
    return tensor.as_strided((tensor.numel(),), (1,), tensor.storage_offset())


def is_main_process() -> bool:
    """Rank 0, or the only process; usable before the process group exists."""
    return int(os.environ.get("RANK", "0")) == 0


def world_size() -> int:
    """The number of processes (torchrun's WORLD_SIZE); usable before the process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def select_device(name: str = "auto") -> torch.device:
    if name != "auto":
        device = torch.device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SettingsError(f"device {name!r} asked for, but CUDA is not available in this torch build")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise SettingsError(f"device {name!r} asked for, but MPS is not available")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def setup(device: str = "auto", amp: bool = True) -> Runtime:
    """One Runtime per process. Under torchrun (WORLD_SIZE > 1) joins the process group:
    NCCL with one GPU per process on CUDA, gloo on the CPU."""
    processes = world_size()
    rank = int(os.environ.get("RANK", "0"))
    chosen = select_device(device)
    if processes > 1:
        if chosen.type == "cuda":
            chosen = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(chosen)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    exact_float32()
    if chosen.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: cuDNN times its algorithms once, keeps the fastest
    # bf16 autocast only where the hardware runs it natively: on CPUs without bf16 units it is
    # ~15x slower than fp32 (measured on the 2-core EPYC this was built on).
    use_amp = amp and chosen.type == "cuda" and has_bf16_units(chosen)
    return Runtime(chosen, rank, processes, use_amp)


def exact_float32() -> None:
    """float32 means float32 in this process: no TF32 in CUDA matrix products or cuDNN
    convolutions (PyTorch's default allows it in convolutions on Ampere and newer GPUs, which
    keeps 10 of float32's 23 mantissa bits). Scoring and calibration must compute what the CPU
    and the ONNX graph compute, so that thresholds mean the same everywhere; training's speed
    comes from bf16 autocast (`amp`), which this leaves as it is."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def has_bf16_units(device: torch.device) -> bool:
    """Whether a CUDA device computes bf16 in hardware: compute capability 8.0 (Ampere) or
    later. `torch.cuda.is_bf16_supported()` also says yes on a V100 or T4, where bf16 is
    emulated and slower than fp32."""
    return torch.cuda.get_device_capability(device) >= (8, 0)


def leave_together() -> None:
    """After training stopped on a signal (checkpoint saved): ignore further SIGTERM and SIGINT
    and wait for every process, so that all exit with the stop's status. torchrun sends SIGTERM
    to the processes still running once one has exited, which would otherwise kill rank 0
    while it reports the stop (exit status -15, and torchrun's report of a failure)."""
    for stop in (signal.SIGTERM, signal.SIGINT):
        signal.signal(stop, signal.SIG_IGN)
    if dist.is_initialized():
        dist.barrier()


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
