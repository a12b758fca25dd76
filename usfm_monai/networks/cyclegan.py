"""CycleGAN networks with an optional frozen USFM feature branch (USFM paper §3.3, Fig. 5b; §4.1.2).

For image enhancement the paper uses USFM as a *knowledgeable feature extractor*: the pre-trained encoder is
frozen, and its features are "combined with the encoder features of CycleGAN on the channel level". This module
holds the pieces of that model:

- :class:`FrozenUSFMBranch`: runs a frozen USFM (or any ViT-like) encoder and returns its patch-token feature map.
- :class:`ResnetGenerator`: the ResNet generator of CycleGAN (Zhu et al., ICCV 2017, "Unpaired Image-to-Image
  Translation using Cycle-Consistent Adversarial Networks", arXiv 1703.10593; reference code
  ``junyanz/pytorch-CycleGAN-and-pix2pix: models/networks.py: ResnetGenerator``), with the USFM branch
  concatenated to the encoder features before the residual blocks. Without a branch it is the plain CycleGAN
  generator (the "CycleGAN" row of Table 4).
- :class:`PatchGANDiscriminator`: MONAI's :class:`~monai.networks.nets.PatchDiscriminator` configured as the 70x70
  PatchGAN of CycleGAN, returning only the logits map.
- :class:`ImagePool`: the history buffer of generated images (Shrivastava et al., CVPR 2017) that the
  discriminators are trained on, with its own seeded :class:`torch.Generator`.

Images follow the package convention: ``(B, C, H, W)`` float32 in ``[0, 1]``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.nets import PatchDiscriminator
from monai.networks.utils import normal_init

__all__ = ["FrozenUSFMBranch", "ResnetBlock", "ResnetGenerator", "PatchGANDiscriminator", "ImagePool"]

_NORM_LAYERS = {
    # CycleGAN's choices: instance norm without affine parameters or running stats, and plain batch norm.
    "instance": lambda channels: nn.InstanceNorm2d(channels, affine=False, track_running_stats=False),
    "batch": lambda channels: nn.BatchNorm2d(channels),
}


_RESIDUAL_EPS = 1e-3  # input clamp of the residual output: logit(eps) = -6.9, sigmoid of it = eps


def _make_norm(norm: str, channels: int) -> nn.Module:
    return _NORM_LAYERS[norm](channels)


def _as_pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}.")
    return pair  # type: ignore[return-value]


class FrozenUSFMBranch(nn.Module):
    """Frozen USFM encoder used as a feature extractor (paper §3.3, Fig. 5b: "the weights of USFM are frozen and
    do not participate in network optimization").

    The encoder is switched to eval mode and ``requires_grad_(False)`` at construction, stays in eval mode when
    a parent module calls ``train()`` (so dropout, drop-path and any normalization statistics are fixed), and runs
    under :func:`torch.no_grad`.

    The encoder may be the package's timm ``Beit``-based USFM encoder or any ``nn.Module`` with
    ``forward_features(x) -> (B, P + N, D)`` tokens (``P`` prefix tokens such as the cls token first, then
    ``N = h * w`` patch tokens in row-major order) and an integer ``embed_dim`` attribute ``D``. The number of
    prefix tokens is read from ``encoder.num_prefix_tokens`` (timm convention; default 1) and the patch size from
    ``encoder.patch_embed.patch_size`` (default 16).

    Args:
        encoder: the pre-trained encoder. It is modified in place (frozen, eval mode).
        input_size: ``(H_e, W_e)`` the encoder input is resized to (bilinear) before the forward pass. ``None``
            uses ``encoder.patch_embed.img_size`` when the encoder has one (timm ViTs with relative position bias
            only accept their build size) and otherwise feeds the image at its own size, which must then be
            divisible by the patch size.

    Raises:
        TypeError: when ``encoder`` is not an ``nn.Module`` with a callable ``forward_features`` and an integer
            ``embed_dim``.
        ValueError: when ``input_size`` is not positive or not divisible by the patch size.
    """

    def __init__(self, encoder: nn.Module, input_size: int | Sequence[int] | None = None) -> None:
        super().__init__()
        if not isinstance(encoder, nn.Module):
            raise TypeError(f"encoder must be a torch.nn.Module, got {type(encoder).__name__}.")
        if not callable(getattr(encoder, "forward_features", None)):
            raise TypeError(
                f"encoder ({type(encoder).__name__}) must have a forward_features(x) -> (B, 1 + N, D) method."
            )
        embed_dim = getattr(encoder, "embed_dim", None)
        if not isinstance(embed_dim, int) or embed_dim <= 0:
            raise TypeError(
                f"encoder ({type(encoder).__name__}) must have a positive int attribute embed_dim, got {embed_dim!r}."
            )
        patch_embed = getattr(encoder, "patch_embed", None)
        self.patch_size = _as_pair(getattr(patch_embed, "patch_size", 16), "encoder.patch_embed.patch_size")
        self.num_prefix_tokens = int(getattr(encoder, "num_prefix_tokens", 1))
        if input_size is None and getattr(patch_embed, "img_size", None) is not None:
            input_size = patch_embed.img_size  # type: ignore[union-attr]
        self.input_size = None if input_size is None else _as_pair(input_size, "input_size")
        if self.input_size is not None and any(s % p for s, p in zip(self.input_size, self.patch_size)):
            raise ValueError(
                f"input_size {self.input_size} must be divisible by the encoder patch size {self.patch_size}."
            )
        self.embed_dim = embed_dim
        self.encoder = encoder
        self.encoder.requires_grad_(False)
        self.encoder.eval()

    def train(self, mode: bool = True) -> FrozenUSFMBranch:
        """Set the module mode, but keep the frozen encoder in eval mode whatever ``mode`` is."""
        super().train(mode)
        self.encoder.eval()
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Extract the patch-token feature map.

        Args:
            x: ``(B, C, H, W)`` float images in ``[0, 1]``; ``C`` must equal the encoder's input channels.

        Returns:
            ``(B, D, H_e / p, W_e / p)`` float tensor without gradient, where ``(H_e, W_e)`` is ``input_size``
            (or ``(H, W)`` when there is none) and ``p`` is the patch size.

        Raises:
            ValueError: when no ``input_size`` is set and ``(H, W)`` is not divisible by the patch size, or when
                the encoder returns an unexpected number of tokens.
        """
        size = self.input_size if self.input_size is not None else tuple(x.shape[-2:])
        if any(s % p for s, p in zip(size, self.patch_size)):
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be divisible by the patch size {self.patch_size}.")
        grid = (size[0] // self.patch_size[0], size[1] // self.patch_size[1])
        with torch.no_grad():
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
            tokens = self.encoder.forward_features(x)  # B, P + N, D
            expected = self.num_prefix_tokens + grid[0] * grid[1]
            if tokens.ndim != 3 or tokens.shape[1] != expected or tokens.shape[2] != self.embed_dim:
                raise ValueError(
                    f"encoder.forward_features returned shape {tuple(tokens.shape)}, expected "
                    f"(B, {expected}, {self.embed_dim}) for a {grid[0]}x{grid[1]} patch grid and "
                    f"{self.num_prefix_tokens} prefix token(s)."
                )
            patches = tokens[:, self.num_prefix_tokens :]  # B, N, D
            return patches.transpose(1, 2).reshape(x.shape[0], self.embed_dim, *grid)  # B, D, h, w


class ResnetBlock(nn.Module):
    """CycleGAN residual block: ``x + (pad, conv3x3, norm, ReLU, pad, conv3x3, norm)(x)`` with reflection padding.

    Args:
        channels: number of input and output channels.
        norm: ``"instance"`` or ``"batch"``.
    """

    def __init__(self, channels: int, norm: str = "instance") -> None:
        super().__init__()
        bias = norm == "instance"  # instance norm has no affine shift, so the conv keeps its bias
        self.block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=bias),
            _make_norm(norm, channels),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=bias),
            _make_norm(norm, channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``."""
        return x + self.block(x)


class ResnetGenerator(nn.Module):
    """CycleGAN ResNet generator with an optional frozen USFM feature branch (paper §3.3 Fig. 5b, §4.1.2).

    Layout (Zhu et al. 2017, appendix 7.2): ``c7s1-ngf``, ``n_downsampling`` stride-2 3x3 convs doubling the
    width, ``n_blocks`` residual blocks at width ``ngf * 2**n_downsampling``, ``n_downsampling`` stride-2
    transposed convs, and ``c7s1-out_channels``. Differences from the reference code:

    - **Output range.** The reference ends with ``tanh`` for images in ``[-1, 1]``; our images are in ``[0, 1]``,
      so the output is ``(tanh(z) + 1) / 2`` (the same map moved onto ``[0, 1]``; equal to ``sigmoid(2 z)``).
      Inputs are taken in ``[0, 1]`` unchanged: the first conv is followed by a normalization layer, which removes
      the affine offset that the reference's ``[-1, 1]`` scaling would add.
    - **USFM branch.** With ``usfm_encoder`` set, a :class:`FrozenUSFMBranch` computes the encoder's patch-token
      map ``(B, D, H_e/16, W_e/16)`` from the generator input, which is resized (bilinear) to the generator's
      encoder resolution ``(H / 2**n_downsampling, W / 2**n_downsampling)``, concatenated on the channel axis
      with the CycleGAN encoder features (``ngf * 2**n_downsampling + D`` channels), and reduced back to
      ``ngf * 2**n_downsampling`` channels by a 1x1 conv + norm + ReLU. The residual trunk and the decoder are
      therefore exactly the plain CycleGAN's; ``usfm_encoder=None`` gives the plain CycleGAN generator.
    - **Residual output** (``residual=True``, not in the reference): the network output ``z`` is added to the
      input in logit space, ``y = sigmoid(logit(x) + 2 z)`` with ``x`` clamped to ``[eps, 1 - eps]``
      (``eps = 1e-3``), and the last conv starts at zero, so the generator starts as the identity (up to the
      clamp) and learns a correction. The output stays in ``(0, 1)`` with gradient everywhere, and black
      (zero) input pixels, such as the background outside a sector scan, stay black unless the network learns
      otherwise. ``z = 0`` gives ``y = x``, the plain output ``(tanh(z) + 1) / 2 = sigmoid(2 z)`` is the same
      squashing without the input term.
    - **Optimizer.** The branch is frozen (``requires_grad=False``) and its weights are still part of
      ``state_dict()`` so a checkpoint is self-contained. Give the optimizer :meth:`trainable_parameters`, which
      leaves the branch out (``parameters()`` still lists it, as for any ``nn.Module``).

    Weights are initialized as in the reference (``N(0, 0.02)`` convs, ``N(1, 0.02)`` batch-norm scales), except
    the USFM encoder, which keeps its pre-trained weights.

    Args:
        in_channels: input image channels (1 for grayscale ultrasound).
        out_channels: output image channels.
        ngf: width of the first conv layer.
        n_downsampling: number of stride-2 down- and up-sampling stages; ``H`` and ``W`` must be divisible by
            ``2**n_downsampling``.
        n_blocks: number of residual blocks (9 for 256x256 images in the reference).
        norm: ``"instance"`` (CycleGAN default) or ``"batch"``.
        usfm_encoder: frozen feature extractor for the branch (see :class:`FrozenUSFMBranch` for the contract),
            or ``None`` for no branch.
        usfm_channels: channel count ``D`` of the branch features; ``None`` reads ``usfm_encoder.embed_dim``.
        usfm_input_size: size the image is resized to before the encoder (see
            :class:`FrozenUSFMBranch` ``input_size``).
        residual: identity-initialised residual output (see above); needs ``in_channels == out_channels``.
        output_levels: in eval mode, round the output to ``output_levels`` evenly spaced gray levels
            (``round(y * (L - 1)) / (L - 1)``; 256 gives the 8-bit image that inference writes); ``None`` keeps
            the float output. Training mode always returns the float output, so gradients are unchanged.
        scan_level: with ``residual=True``, correct only inside the scanned area: the correction ``z`` is
            multiplied by a mask that is 1 within ``scan_dilation // 2`` pixels of an input pixel above
            ``scan_level`` (an intensity in ``[0, 1]``) and 0 elsewhere, so the black frame around a sector or
            linear scan keeps its input value. Why: a paired model learns a global brightening that also lifts
            the frame by a grey level, and local-correlation scores (LNCC) count every such flat-vs-noisy window
            as uncorrelated. ``None`` (default): no mask.
        scan_dilation: odd side of the max-pooling window that grows the mask over dark speckle inside the scan.

    Raises:
        ValueError: for a non-positive size argument, an unknown ``norm``, ``usfm_channels`` different from the
            encoder's ``embed_dim``, an encoder whose input channels differ from ``in_channels``, or
            ``residual=True`` with ``in_channels != out_channels``, or ``output_levels`` below 2.
        TypeError: for an encoder without ``forward_features``/``embed_dim``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        ngf: int = 64,
        n_downsampling: int = 2,
        n_blocks: int = 9,
        norm: str = "instance",
        usfm_encoder: nn.Module | None = None,
        usfm_channels: int | None = None,
        usfm_input_size: int | Sequence[int] | None = None,
        residual: bool = False,
        output_levels: int | None = None,
        scan_level: float | None = None,
        scan_dilation: int = 7,
    ) -> None:
        super().__init__()
        for name, value, minimum in (
            ("in_channels", in_channels, 1),
            ("out_channels", out_channels, 1),
            ("ngf", ngf, 1),
            ("n_downsampling", n_downsampling, 0),
            ("n_blocks", n_blocks, 0),
        ):
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
        if norm not in _NORM_LAYERS:
            raise ValueError(f"norm must be one of {sorted(_NORM_LAYERS)}, got {norm!r}.")
        if not isinstance(residual, bool):
            raise ValueError(f"residual must be a bool, got {residual!r}.")
        if residual and in_channels != out_channels:
            raise ValueError(
                f"residual=True adds the input to the output, so in_channels ({in_channels}) must equal "
                f"out_channels ({out_channels})."
            )
        if output_levels is not None and (not isinstance(output_levels, int) or isinstance(output_levels, bool)
                                          or output_levels < 2):
            raise ValueError(f"output_levels must be None or an int >= 2, got {output_levels!r}.")
        if scan_level is not None and (not residual or not 0.0 <= float(scan_level) < 1.0):
            raise ValueError(f"scan_level needs residual=True and a value in [0, 1), got {scan_level!r}.")
        if not isinstance(scan_dilation, int) or scan_dilation < 1 or scan_dilation % 2 == 0:
            raise ValueError(f"scan_dilation must be a positive odd int, got {scan_dilation!r}.")
        self.residual = residual
        self.output_levels = output_levels
        self.scan_level = None if scan_level is None else float(scan_level)
        self.scan_dilation = scan_dilation
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.n_downsampling = n_downsampling
        bias = norm == "instance"

        stem: list[nn.Module] = [
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, ngf, kernel_size=7, bias=bias),
            _make_norm(norm, ngf),
            nn.ReLU(inplace=True),
        ]
        for i in range(n_downsampling):
            width = ngf * 2**i
            stem += [
                nn.Conv2d(width, width * 2, kernel_size=3, stride=2, padding=1, bias=bias),
                _make_norm(norm, width * 2),
                nn.ReLU(inplace=True),
            ]
        self.encoder = nn.Sequential(*stem)
        trunk_width = ngf * 2**n_downsampling

        self.usfm_branch: FrozenUSFMBranch | None = None
        self.fuse: nn.Module | None = None
        if usfm_encoder is not None:
            branch = FrozenUSFMBranch(usfm_encoder, input_size=usfm_input_size)
            if usfm_channels is not None and usfm_channels != branch.embed_dim:
                raise ValueError(
                    f"usfm_channels ({usfm_channels}) must equal usfm_encoder.embed_dim ({branch.embed_dim})."
                )
            proj = getattr(getattr(usfm_encoder, "patch_embed", None), "proj", None)
            encoder_in = getattr(proj, "in_channels", in_channels)
            if encoder_in != in_channels:
                raise ValueError(
                    f"usfm_encoder takes {encoder_in} input channel(s) but the generator's in_channels is "
                    f"{in_channels}; build the encoder with in_chans={in_channels}."
                )
            self.fuse = nn.Sequential(
                nn.Conv2d(trunk_width + branch.embed_dim, trunk_width, kernel_size=1, bias=bias),
                _make_norm(norm, trunk_width),
                nn.ReLU(inplace=True),
            )
            self.usfm_branch = branch
        elif usfm_channels is not None or usfm_input_size is not None:
            raise ValueError("usfm_channels and usfm_input_size need a usfm_encoder, but usfm_encoder is None.")

        self.blocks = nn.Sequential(*[ResnetBlock(trunk_width, norm=norm) for _ in range(n_blocks)])

        head: list[nn.Module] = []
        for i in range(n_downsampling):
            width = ngf * 2 ** (n_downsampling - i)
            head += [
                nn.ConvTranspose2d(
                    width, width // 2, kernel_size=3, stride=2, padding=1, output_padding=1, bias=bias
                ),
                _make_norm(norm, width // 2),
                nn.ReLU(inplace=True),
            ]
        head += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, out_channels, kernel_size=7)]
        self.decoder = nn.Sequential(*head)

        # The pre-trained USFM weights must survive, so only the CycleGAN parts are re-initialized.
        for part in (self.encoder, self.fuse, self.blocks, self.decoder):
            if part is not None:
                part.apply(normal_init)
        if residual:  # zero correction at the start: the generator is the identity map
            nn.init.zeros_(self.decoder[-1].weight)
            nn.init.zeros_(self.decoder[-1].bias)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the optimizer should update: everything except the frozen USFM branch."""
        for name, param in self.named_parameters():
            if not name.startswith("usfm_branch."):
                yield param

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder (+ fused USFM features) and residual trunk.

        Args:
            x: ``(B, C_in, H, W)`` float images in ``[0, 1]``.

        Returns:
            ``(B, ngf * 2**n_downsampling, H / 2**n_downsampling, W / 2**n_downsampling)`` trunk features.

        Raises:
            ValueError: when ``x`` is not 4-D with ``in_channels`` channels, or ``H``/``W`` are not divisible
                by ``2**n_downsampling``.
        """
        factor = 2**self.n_downsampling
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input (B, {self.in_channels}, H, W), got shape {tuple(x.shape)}.")
        if x.shape[-2] % factor or x.shape[-1] % factor:
            raise ValueError(
                f"input spatial size {tuple(x.shape[-2:])} must be divisible by 2**n_downsampling = {factor}."
            )
        feats = self.encoder(x)  # B, ngf * 2**n, H / 2**n, W / 2**n
        if self.usfm_branch is not None and self.fuse is not None:
            usfm = self.usfm_branch(x)  # B, D, H_e / 16, W_e / 16
            usfm = F.interpolate(usfm, size=feats.shape[-2:], mode="bilinear", align_corners=False)
            feats = self.fuse(torch.cat([feats, usfm.to(feats.dtype)], dim=1))
        return self.blocks(feats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Translate an image to the other domain.

        Args:
            x: ``(B, C_in, H, W)`` float images in ``[0, 1]``.

        Returns:
            ``(B, C_out, H, W)`` float images in ``[0, 1]`` (``(tanh + 1) / 2`` output, or
            ``sigmoid(logit(x) + 2 z)`` with ``residual=True``), rounded to ``output_levels`` gray levels in eval
            mode when that is set.
        """
        z = self.decoder(self.forward_features(x))
        if self.scan_level is not None:
            inside = (x.amax(dim=1, keepdim=True) > self.scan_level).to(z.dtype)
            z = z * F.max_pool2d(inside, self.scan_dilation, stride=1, padding=self.scan_dilation // 2)
        if self.residual:
            y = torch.sigmoid(torch.logit(x.to(z.dtype), eps=_RESIDUAL_EPS) + 2.0 * z)
        else:
            y = 0.5 * (torch.tanh(z) + 1.0)
        if self.output_levels is not None and not self.training:
            y = torch.round(y * (self.output_levels - 1)) / (self.output_levels - 1)
        return y


class PatchGANDiscriminator(PatchDiscriminator):
    """70x70 PatchGAN discriminator of CycleGAN built on MONAI's :class:`~monai.networks.nets.PatchDiscriminator`.

    With the defaults the layers are those of the reference ``NLayerDiscriminator(n_layers=3)``: ``C64`` (no
    norm), ``C128``, ``C256`` (stride 2), ``C512`` (stride 1), then a 4x4 conv to one logit per patch; 4x4
    kernels, LeakyReLU(0.2), instance norm without affine parameters, and ``N(0, 0.02)`` initialization. MONAI's
    class returns every intermediate feature map; this subclass returns only the last one, the logits map, so it
    plugs into LSGAN losses and the trainer directly.

    Args:
        in_channels: image channels.
        channels: width of the first layer (``ndf``), doubled per layer.
        num_layers_d: number of normalized conv layers after the first (3 gives the 70x70 receptive field).
        norm: MONAI norm name; ``"INSTANCE"`` as in CycleGAN.
        bias: conv bias in the normalized layers; the reference uses a bias with instance norm.
        kwargs: other :class:`~monai.networks.nets.PatchDiscriminator` arguments.
    """

    def __init__(
        self,
        in_channels: int = 1,
        channels: int = 64,
        num_layers_d: int = 3,
        norm: str | tuple = "INSTANCE",
        bias: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            spatial_dims=2,
            channels=channels,
            in_channels=in_channels,
            num_layers_d=num_layers_d,
            norm=norm,
            bias=bias,
            **kwargs,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """Patch logits.

        Args:
            x: ``(B, C, H, W)`` float images in ``[0, 1]``.

        Returns:
            ``(B, 1, H', W')`` unbounded float logits, one per overlapping patch (``H' = H / 8 - 2`` with the
            defaults).
        """
        return super().forward(x)[-1]


class ImagePool:
    """History buffer of generated images for discriminator updates (Shrivastava et al. 2017; CycleGAN §4).

    Until the pool holds ``pool_size`` images every queried image is stored and returned. After that each image
    is, with probability 1/2, swapped with a uniformly chosen stored one (the stored one is returned), and is
    otherwise returned as is. The draws come from the pool's own CPU :class:`torch.Generator` seeded with
    ``seed``, two per image once the pool is full: ``torch.rand(1)`` then, if it is ``> 0.5``,
    ``torch.randint(pool_size, (1,))``. ``pool_size=0`` disables the pool (the input is returned).

    Args:
        pool_size: number of images kept (50 in CycleGAN).
        seed: seed of the pool's random generator.

    Raises:
        ValueError: when ``pool_size`` is not a non-negative int.
    """

    def __init__(self, pool_size: int = 50, seed: int = 0) -> None:
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 0:
            raise ValueError(f"pool_size must be an int >= 0, got {pool_size!r}.")
        self.pool_size = pool_size
        self.generator = torch.Generator().manual_seed(int(seed))
        self.images: list[torch.Tensor] = []

    def __len__(self) -> int:
        return len(self.images)

    def query(self, images: torch.Tensor) -> torch.Tensor:
        """Return a batch drawn from the history, updating it with ``images``.

        Args:
            images: ``(B, C, H, W)`` generated images; they are detached before being stored.

        Returns:
            ``(B, C, H, W)`` detached images, each either from ``images`` or from the pool, on ``images``' device.
        """
        # plain tensors: a MetaTensor in the pool would make checkpoints unloadable with weights_only=True
        images = images.detach().as_subclass(torch.Tensor)
        if self.pool_size == 0:
            return images
        out = []
        for image in images:
            if len(self.images) < self.pool_size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand(1, generator=self.generator).item() > 0.5:
                idx = int(torch.randint(self.pool_size, (1,), generator=self.generator).item())
                out.append(self.images[idx].to(image.device))
                self.images[idx] = image.clone()
            else:
                out.append(image)
        return torch.stack(out, dim=0)

    __call__ = query

    def state_dict(self) -> dict[str, Any]:
        """Tensors and ints only: ``{"pool_size", "images" (list of (C, H, W)), "generator_state"}``."""
        return {
            "pool_size": self.pool_size,
            "images": [img.clone() for img in self.images],
            "generator_state": self.generator.get_state(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the pool written by :meth:`state_dict`.

        Raises:
            KeyError: when a key is missing.
            ValueError: when the stored ``pool_size`` differs from this pool's or more images than it are stored.
        """
        for key in ("pool_size", "images", "generator_state"):
            if key not in state_dict:
                raise KeyError(f"ImagePool state_dict is missing key {key!r}; found {sorted(state_dict)}.")
        if int(state_dict["pool_size"]) != self.pool_size or len(state_dict["images"]) > self.pool_size:
            raise ValueError(
                f"ImagePool state_dict has pool_size {state_dict['pool_size']} with {len(state_dict['images'])} "
                f"image(s), but this pool has pool_size {self.pool_size}."
            )
        self.images = [img.clone() for img in state_dict["images"]]
        self.generator.set_state(state_dict["generator_state"])
