"""The three networks of F-UNetGAN."""

from .discriminator import CriticOutput, Discriminator
from .encoder import Encoder
from .generator import Generator

__all__ = ["CriticOutput", "Discriminator", "Encoder", "Generator"]
