"""E, G and D as one scoring network: images in, the raw network terms out.

One module serves PyTorch scoring and ONNX export, so both compute the same terms. Which
terms, and how each is computed from one pass of the networks (`Forward`), is the table of
terms' (`scoring.terms`): this module only runs the functions it is given, in their order.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import cached_property
from typing import Protocol

import torch
from torch import nn

from .density import up_sampled
from .discriminator import CriticOutput


class Forward:
    """One pass of E, G and D on a batch x (float B x C x S x S in [-1, 1]), each network run
    the first time a term asks for its output: fitting one density needs only D(x) or E(x)."""

    def __init__(self, x: torch.Tensor, encoder: nn.Module, generator: nn.Module, critic: nn.Module):
        self.x, self.E, self.G, self.D = x, encoder, generator, critic

    @cached_property
    def z(self) -> torch.Tensor:
        """E(x): B x z_dim."""
        return self.E(self.x)

    @cached_property
    def recon(self) -> torch.Tensor:
        """G(E(x)), channels-last (the layout D's weights are in: it speeds D up on CPUs and GPUs alike)."""
        return self.G(self.z).contiguous(memory_format=torch.channels_last)

    @cached_property
    def out_x(self) -> CriticOutput:
        return self.D(self.x)

    @cached_property
    def out_r(self) -> CriticOutput:
        return self.D(self.recon)


class NetworkTerm(Protocol):
    """What the scoring network needs of a term (`scoring.terms.Term`)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...  # "map": B x S x S; "image": B

    @property
    def network(self) -> Callable[[Forward], torch.Tensor] | None: ...

    @property
    def features(self) -> Callable[[Forward], torch.Tensor] | None: ...


class ScoringNetwork(nn.Module):
    """x (float B x C x S x S in [-1, 1]) -> each of `terms` in its order: `term.network` of
    the pass, or for a density term (`term.features`) the density of its features at each
    location (`nn.density`), up-sampled to the pixels for a map and averaged for an image
    term. The densities (by term name) are meaningless until calibration has fitted them, and
    then used only by a calibration that has their normal levels."""

    def __init__(
        self,
        encoder: nn.Module,
        generator: nn.Module,
        critic: nn.Module,
        densities: Mapping[str, nn.Module],
        terms: Sequence[NetworkTerm],
    ):
        super().__init__()
        self.E, self.G, self.D = encoder, generator, critic
        self.densities = nn.ModuleDict(densities)
        self.terms = tuple(terms)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        step = Forward(x, self.E, self.G, self.D)
        return tuple(self.term(term, step) for term in self.terms)

    def term(self, term: NetworkTerm, step: Forward) -> torch.Tensor:
        if term.features is None:
            assert term.network is not None, f"term {term.name} has no network function"
            return term.network(step)
        density = self.densities[term.name](term.features(step))
        return up_sampled(density, step.x.shape[-1]) if term.kind == "map" else density.flatten(1).mean(1)
