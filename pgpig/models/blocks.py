"""Blocks shared by several generators and discriminators: the normalisation factory, the ResNet-style encoder
stem (7x7 convolution, then stride-2 convolutions) and its mirror decoder of the pix2pix/CycleGAN family, the
two-conv block of the PAT and Xing blocks, and the official ``init_weights(init_type="normal")``.

They return plain modules or flat lists of them, so a model can put them in one ``nn.Sequential`` and keep the
official code's state-dict indices (``stream1_down.1.weight`` ...).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from pgpig.errors import TrainError

__all__ = ["NORMS", "conv_pair", "decoder_layers", "encoder_layers", "init_official_normal", "norm_layer",
           "norm_uses_bias"]

NORMS = ("instance", "batch")


def norm_layer(norm: str) -> Callable[[int], nn.Module]:
    """The normalisation layer by name, as a ``channels -> module`` factory.

    ``"instance"`` is ``InstanceNorm2d`` without affine parameters or running statistics and ``"batch"`` is an
    affine ``BatchNorm2d``: the pix2pix code's ``get_norm_layer``, which PATN and XingGAN inherit. The difference
    shows in the parameter count and the buffers (running mean/var only with batch norm).
    """
    if norm == "instance":
        return lambda channels: nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    if norm == "batch":
        return lambda channels: nn.BatchNorm2d(channels, affine=True)
    raise TrainError(f"unknown norm {norm!r}; choose one of {', '.join(NORMS)}")


def norm_uses_bias(norm: str) -> bool:
    """Whether convolutions before this norm carry a bias: only before instance norm, whose lack of an affine
    shift would otherwise leave them none (batch norm's own shift makes a conv bias redundant)."""
    norm_layer(norm)  # validates the name
    return norm == "instance"


def encoder_layers(in_channels: int, ngf: int, n_downsampling: int, norm: str) -> list[nn.Module]:
    """Reflection-pad + 7x7 conv to ``ngf``, then ``n_downsampling`` stride-2 3x3 convs doubling the width, each
    followed by norm and ReLU: ``(B, in_channels, H, W) -> (B, ngf * 2**n_downsampling, H / 2**n, W / 2**n)``.

    A flat list: conv weights sit at indices 1, 4, 7, ... and norms at 2, 5, 8, ... once put in a Sequential.
    """
    make_norm, bias = norm_layer(norm), norm_uses_bias(norm)
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(3),
        nn.Conv2d(in_channels, ngf, kernel_size=7, bias=bias),
        make_norm(ngf),
        nn.ReLU(inplace=True),
    ]
    for i in range(n_downsampling):
        width = ngf * 2**i
        layers += [
            nn.Conv2d(width, width * 2, kernel_size=3, stride=2, padding=1, bias=bias),
            make_norm(width * 2),
            nn.ReLU(inplace=True),
        ]
    return layers


def conv_pair(
    in_channels: int, mid_channels: int, out_channels: int, norm: str, dropout: float, final_norm: bool
) -> nn.Sequential:
    """pad, conv3x3, norm, ReLU, dropout, pad, conv3x3[, norm]: the convs at indices 1 and 6, norms at 2 and 7."""
    make_norm, bias = norm_layer(norm), norm_uses_bias(norm)
    layers: list[nn.Module] = [
        nn.ReflectionPad2d(1),
        nn.Conv2d(in_channels, mid_channels, kernel_size=3, bias=bias),
        make_norm(mid_channels),
        nn.ReLU(inplace=True),
        nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
        nn.ReflectionPad2d(1),
        nn.Conv2d(mid_channels, out_channels, kernel_size=3, bias=bias),
    ]
    if final_norm:
        layers.append(make_norm(out_channels))
    return nn.Sequential(*layers)


def decoder_layers(ngf: int, n_upsampling: int, norm: str, out_channels: int) -> list[nn.Module]:
    """``n_upsampling`` stride-2 3x3 transposed convs halving the width, each followed by norm and ReLU, then
    reflection-pad + 7x7 conv to ``out_channels`` and tanh: ``(B, ngf * 2**n, h, w) -> (B, out_channels, h * 2**n,
    w * 2**n)`` in ``[-1, 1]``, the mirror of ``encoder_layers``.

    A flat list: transposed convs at indices 0, 3, ..., norms at 1, 4, ..., the last conv at ``3 * n + 1``.
    """
    make_norm, bias = norm_layer(norm), norm_uses_bias(norm)
    layers: list[nn.Module] = []
    for i in range(n_upsampling):
        width = ngf * 2 ** (n_upsampling - i)
        layers += [
            nn.ConvTranspose2d(width, width // 2, 3, stride=2, padding=1, output_padding=1, bias=bias),
            make_norm(width // 2),
            nn.ReLU(inplace=True),
        ]
    return layers + [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, kernel_size=7), nn.Tanh()]


def init_official_normal(module: nn.Module) -> None:
    """The pix2pix code's ``init_weights(init_type="normal")`` for ``Module.apply``: conv and transposed-conv weights
    ``N(0, 0.02)``, batch-norm weights ``N(1, 0.02)`` and biases 0; conv biases and other parameters keep theirs."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
