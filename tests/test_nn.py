import pytest
import torch

from funetgan.config import VARIANTS
from funetgan.nn import Discriminator, Encoder, Generator
from funetgan.nn.blocks import CBAM, Block, widths


def test_widths_double_per_halving_capped_at_16x():
    assert widths(32, 8) == {32: 8, 16: 16, 8: 32, 4: 64}
    assert widths(256, 2)[4] == 32 and widths(256, 2)[256] == 2


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
def test_generator_and_encoder_shapes(size, channels):
    G, E = Generator(size, channels, 4, 16), Encoder(size, channels, 4, 16)
    x = G(torch.randn(2, 16))
    assert x.shape == (2, channels, size, size)
    assert x.abs().max() <= 1  # tanh output, the data range
    assert E(x).shape == (2, 16)


@pytest.mark.parametrize("size", [32, 64, 128])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("variant", VARIANTS)
def test_discriminator_shapes(size, channels, variant):
    D = Discriminator(size, channels, 4, variant)
    out = D(torch.randn(2, channels, size, size))
    assert out.score.shape == (2,)
    assert out.pixel.shape == (2, 1, size, size)
    assert out.f_g.shape == (2, widths(size, 4)[4], 4, 4)
    assert out.f_p.shape == (2, 4, size, size)


def test_discriminator_variants_differ_in_structure():
    def count(variant):
        D = Discriminator(32, 1, 4, variant, attn_max_size=32)
        return (
            sum(isinstance(m, CBAM) for m in D.modules()),
            sum(b.residual for b in D.modules() if isinstance(b, Block)),
        )

    assert count("conv") == (0, 0)
    assert count("conv_attn")[0] == 3 and count("conv_attn")[1] == 0
    assert count("res")[0] == 0 and count("res")[1] > 0
    assert count("res_attn")[0] == 3 and count("res_attn")[1] > 0


def test_global_only_critic_has_no_pixel_head():
    out = Discriminator(32, 1, 4, pixel_head=False)(torch.randn(2, 1, 32, 32))
    assert out.pixel is None and out.f_p is None and out.score.shape == (2,)


def test_spectral_norm_is_never_in_d_and_always_in_g():
    def normalised(net):
        layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
        return [hasattr(m, "parametrizations") for m in layers]

    assert not any(normalised(Discriminator(32, 1, 4)))
    assert all(normalised(Generator(32, 1, 4, 16)))


def test_pixel_map_depends_on_location():
    """The decoder's skips make D_p local: changing one corner changes the map there most."""
    torch.manual_seed(0)
    D = Discriminator(32, 1, 4, "res")
    x = torch.zeros(1, 1, 32, 32)
    y = x.clone()
    y[..., :8, :8] = 1
    change = (D(y).pixel - D(x).pixel).abs()[0, 0]
    assert change[:8, :8].mean() > 3 * change[24:, 24:].mean()


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)  # a small attention MLP can start with all its ReLUs off
    G, D, E = Generator(32, 1, 4, 16), Discriminator(32, 1, 4), Encoder(32, 1, 4, 16)
    out = D(G(E(torch.randn(2, 1, 32, 32))))
    (out.score.sum() + out.pixel.sum()).backward()
    for net in (G, D, E):
        missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not missing, missing
