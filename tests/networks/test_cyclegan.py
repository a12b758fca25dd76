"""Tests for usfm_monai.networks.cyclegan: generator, frozen USFM branch, PatchGAN, image pool.

Oracles: a transcription of the reference CycleGAN ``ResnetGenerator``/``NLayerDiscriminator``
(junyanz/pytorch-CycleGAN-and-pix2pix, models/networks.py) loaded with the same weights; timm's
``Beit.forward_intermediates`` for the patch-token map; a replay of the pool's random draws.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.beit import Beit

from usfm_monai.networks.cyclegan import FrozenUSFMBranch, ImagePool, PatchGANDiscriminator, ResnetGenerator


def tiny_beit(img_size=32, drop_path_rate=0.0, seed=0) -> Beit:
    torch.manual_seed(seed)
    return Beit(
        img_size=img_size, patch_size=16, in_chans=1, num_classes=0, embed_dim=32, depth=2, num_heads=2,
        use_abs_pos_emb=False, use_rel_pos_bias=True, init_values=0.1, drop_path_rate=drop_path_rate,
    )


class TinyCNNEncoder(nn.Module):
    """A non-timm encoder with BatchNorm running stats and dropout, honoring the branch contract."""

    embed_dim = 12

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, self.embed_dim, 16, stride=16)
        self.bn = nn.BatchNorm2d(self.embed_dim)
        self.drop = nn.Dropout(0.5)
        self.cls = nn.Parameter(torch.randn(1, 1, self.embed_dim))

    def forward_features(self, x):
        t = self.drop(self.bn(self.patch(x))).flatten(2).transpose(1, 2)  # B, N, D
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1)


# ---- reference CycleGAN networks, transcribed from models/networks.py (instance norm, no dropout) ----
class RefResnetBlock(nn.Module):
    def __init__(self, dim):
        super().__init__()
        norm = lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)  # noqa: E731
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=True), norm(dim), nn.ReLU(True),
            nn.ReflectionPad2d(1), nn.Conv2d(dim, dim, 3, padding=0, bias=True), norm(dim),
        )

    def forward(self, x):
        return x + self.conv_block(x)


def ref_resnet_generator(input_nc, output_nc, ngf, n_blocks, n_downsampling=2):
    norm = lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)  # noqa: E731
    model = [nn.ReflectionPad2d(3), nn.Conv2d(input_nc, ngf, kernel_size=7, padding=0, bias=True), norm(ngf),
             nn.ReLU(True)]
    for i in range(n_downsampling):
        mult = 2**i
        model += [nn.Conv2d(ngf * mult, ngf * mult * 2, kernel_size=3, stride=2, padding=1, bias=True),
                  norm(ngf * mult * 2), nn.ReLU(True)]
    mult = 2**n_downsampling
    model += [RefResnetBlock(ngf * mult) for _ in range(n_blocks)]
    for i in range(n_downsampling):
        mult = 2 ** (n_downsampling - i)
        model += [nn.ConvTranspose2d(ngf * mult, int(ngf * mult / 2), kernel_size=3, stride=2, padding=1,
                                     output_padding=1, bias=True), norm(int(ngf * mult / 2)), nn.ReLU(True)]
    model += [nn.ReflectionPad2d(3), nn.Conv2d(ngf, output_nc, kernel_size=7, padding=0), nn.Tanh()]
    return nn.Sequential(*model)


def ref_nlayer_discriminator(input_nc, ndf=64, n_layers=3):
    norm = lambda c: nn.InstanceNorm2d(c, affine=False, track_running_stats=False)  # noqa: E731
    seq = [nn.Conv2d(input_nc, ndf, kernel_size=4, stride=2, padding=1), nn.LeakyReLU(0.2, True)]
    nf_mult = 1
    for n in range(1, n_layers):
        nf_mult_prev, nf_mult = nf_mult, min(2**n, 8)
        seq += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=4, stride=2, padding=1, bias=True),
                norm(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
    nf_mult_prev, nf_mult = nf_mult, min(2**n_layers, 8)
    seq += [nn.Conv2d(ndf * nf_mult_prev, ndf * nf_mult, kernel_size=4, stride=1, padding=1, bias=True),
            norm(ndf * nf_mult), nn.LeakyReLU(0.2, True)]
    seq += [nn.Conv2d(ndf * nf_mult, 1, kernel_size=4, stride=1, padding=1)]
    return nn.Sequential(*seq)


def copy_weights_in_order(src: nn.Module, dst: nn.Module) -> None:
    src_t, dst_t = list(src.state_dict().values()), dst.state_dict()
    if len(src_t) != len(dst_t):
        raise AssertionError(f"{len(src_t)} tensors vs {len(dst_t)} in the reference")
    for (key, ref), value in zip(dst_t.items(), src_t):
        if ref.shape != value.shape:
            raise AssertionError(f"{key}: {tuple(value.shape)} vs reference {tuple(ref.shape)}")
    dst.load_state_dict(dict(zip(dst_t.keys(), src_t)))


# ---------------------------------------------------------------- generator


@pytest.mark.parametrize("n_down,size", [(2, (32, 32)), (1, (16, 24))], ids=["down2_32x32", "down1_16x24"])
def test_plain_generator_matches_reference_cyclegan(n_down, size):
    torch.manual_seed(0)
    gen = ResnetGenerator(in_channels=1, out_channels=1, ngf=8, n_downsampling=n_down, n_blocks=2)
    ref = ref_resnet_generator(1, 1, ngf=8, n_blocks=2, n_downsampling=n_down)
    copy_weights_in_order(gen, ref)
    x = torch.rand(2, 1, *size)
    out = gen(x)
    expected = (ref(x) + 1.0) / 2.0  # the reference tanh output moved onto [0, 1]
    assert out.shape == (2, 1, *size)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-5)
    assert 0.0 <= out.min().item() and out.max().item() <= 1.0
    assert gen.usfm_branch is None and list(gen.trainable_parameters()) == list(gen.parameters())


def test_branch_feature_map_matches_timm_intermediates():
    enc = tiny_beit(img_size=(32, 64))  # non-square grid 2x4 catches an h/w mix-up in the token reshape
    branch = FrozenUSFMBranch(enc)
    x = torch.rand(2, 1, 32, 64)
    expected = enc.forward_intermediates(x, indices=1, norm=False, output_fmt="NCHW", intermediates_only=True)[0]
    torch.testing.assert_close(branch(x), expected)
    # A different image size is resized (bilinear) to the encoder's build size first.
    x2 = torch.rand(1, 1, 64, 128)
    resized = F.interpolate(x2, size=(32, 64), mode="bilinear", align_corners=False)
    expected2 = enc.forward_intermediates(resized, indices=1, norm=False, output_fmt="NCHW", intermediates_only=True)
    torch.testing.assert_close(branch(x2), expected2[0])


def test_generator_with_branch_fuses_resized_usfm_features():
    enc = tiny_beit()
    torch.manual_seed(1)
    gen = ResnetGenerator(ngf=8, n_blocks=2, usfm_encoder=enc)
    x = torch.rand(2, 1, 32, 32)
    out = gen(x)
    # hand-wired forward: CNN features at H/4, ViT patch map upsampled to H/4, concat, 1x1 fuse, trunk, decoder
    cnn = gen.encoder(x)
    vit = enc.forward_intermediates(x, indices=1, norm=False, output_fmt="NCHW", intermediates_only=True)[0]
    vit = F.interpolate(vit, size=(8, 8), mode="bilinear", align_corners=False)
    expected = 0.5 * (torch.tanh(gen.decoder(gen.blocks(gen.fuse(torch.cat([cnn, vit], 1))))) + 1)
    assert out.shape == (2, 1, 32, 32) and gen.fuse[0].in_channels == 32 + 32
    torch.testing.assert_close(out, expected)
    # The branch matters: another encoder (same generator weights) changes the output.
    gen2 = copy.deepcopy(gen)
    gen2.usfm_branch.encoder.load_state_dict(tiny_beit(seed=7).state_dict())
    assert (gen2(x) - out).abs().max().item() > 1e-4


def test_branch_frozen_no_grad_and_eval_after_train():
    enc = tiny_beit(drop_path_rate=0.9)
    before = copy.deepcopy(enc.state_dict())
    gen = ResnetGenerator(ngf=8, n_blocks=1, usfm_encoder=enc).train()
    assert gen.training and gen.usfm_branch.training
    assert not any(m.training for m in gen.usfm_branch.encoder.modules())
    trainable = {id(p) for p in gen.trainable_parameters()}
    branch_params = {id(p) for p in gen.usfm_branch.parameters()}
    assert trainable == {id(p) for p in gen.parameters()} - branch_params and branch_params
    opt = torch.optim.SGD(gen.trainable_parameters(), lr=0.5)
    x = torch.rand(4, 1, 32, 32)
    out1 = gen(x)
    out1.mean().backward()
    # drop path 0.9 would make two train-mode passes differ if the encoder were not kept in eval mode
    torch.testing.assert_close(gen(x), out1.detach())
    assert all(p.grad is None for p in gen.usfm_branch.parameters())
    assert all(p.grad is not None for p in gen.trainable_parameters())
    fuse_before = gen.fuse[0].weight.detach().clone()
    opt.step()
    assert not torch.equal(gen.fuse[0].weight, fuse_before)
    for key, value in enc.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


def test_branch_keeps_batchnorm_buffers_of_any_encoder():
    torch.manual_seed(0)
    enc = TinyCNNEncoder()
    before = copy.deepcopy(enc.state_dict())
    gen = ResnetGenerator(ngf=4, n_blocks=1, usfm_encoder=enc, usfm_input_size=32).train()
    opt = torch.optim.Adam(gen.trainable_parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        gen(torch.rand(2, 1, 48, 48)).mean().backward()
        opt.step()
    for key, value in enc.state_dict().items():  # running_mean/var and num_batches_tracked included
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert gen.usfm_branch.input_size == (32, 32)


def test_generator_with_package_encoder():
    encoder_mod = pytest.importorskip("usfm_monai.networks.encoder")
    enc = encoder_mod.create_usfm_encoder(size="tiny", img_size=32, embed_dim=32, depth=2, num_heads=2)
    gen = ResnetGenerator(ngf=8, n_blocks=1, usfm_encoder=enc).train()
    x = torch.rand(1, 1, 32, 32)
    vit = enc.forward_intermediates(x, indices=1, norm=False, output_fmt="NCHW", intermediates_only=True)[0]
    torch.testing.assert_close(gen.usfm_branch(x), vit)
    assert not any(m.training for m in enc.modules())  # drop_path_rate=0.1 by default must stay inactive
    torch.testing.assert_close(gen(x), gen(x))


@pytest.mark.parametrize(
    "kwargs,error",
    [
        (dict(usfm_encoder=nn.Conv2d(1, 1, 1)), TypeError),
        (dict(usfm_encoder="TinyCNN", usfm_channels=5), ValueError),
        (dict(usfm_channels=8), ValueError),
        (dict(norm="group"), ValueError),
        (dict(ngf=0), ValueError),
        (dict(in_channels=3, out_channels=3, usfm_encoder="Beit"), ValueError),
        (dict(usfm_encoder="TinyCNN", usfm_input_size=24), ValueError),
    ],
    ids=["no_forward_features", "channels_mismatch", "channels_without_encoder", "bad_norm", "ngf0",
         "in_chans_mismatch", "input_size_not_multiple_of_16"],
)
def test_generator_invalid_arguments(kwargs, error):
    if kwargs.get("usfm_encoder") == "TinyCNN":
        kwargs["usfm_encoder"] = TinyCNNEncoder()
    elif kwargs.get("usfm_encoder") == "Beit":
        kwargs["usfm_encoder"] = tiny_beit()
    with pytest.raises(error):
        ResnetGenerator(**kwargs)


def test_residual_generator_starts_as_identity_and_learns_a_correction():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 32, 32)
    x[:, :, :8] = 0.0  # black background rows (outside a sector scan) must stay black
    gen = ResnetGenerator(ngf=4, n_blocks=1, residual=True, usfm_encoder=tiny_beit())
    y = gen(x)
    torch.testing.assert_close(y, x.clamp(1e-3, 1 - 1e-3), atol=1e-6, rtol=0)
    # the zero-initialised last conv receives a gradient, so training moves away from the identity
    target = 0.5 * x + 0.25
    (y - target).abs().mean().backward()
    last = gen.decoder[-1]
    assert last.weight.grad.abs().sum() > 0 and last.bias.grad.abs().sum() > 0
    with torch.no_grad():
        last.bias.fill_(0.3)  # a known correction z = 0.3 everywhere: y = sigmoid(logit(x) + 0.6)
        expected = torch.sigmoid(torch.logit(x.clamp(1e-3, 1 - 1e-3)) + 0.6)
        torch.testing.assert_close(gen(x), expected, atol=1e-6, rtol=1e-5)
    # the plain generator is not the identity at initialisation
    assert (ResnetGenerator(ngf=4, n_blocks=1)(x) - x).abs().mean() > 0.1
    with pytest.raises(ValueError, match="out_channels"):
        ResnetGenerator(in_channels=1, out_channels=3, residual=True)
    with pytest.raises(ValueError, match="residual"):
        ResnetGenerator(residual="true")


def test_scan_level_keeps_the_frame_outside_the_scan():
    # a "sector": rows 10-21 hold signal (with dark speckle pixels inside), the rest is the black frame
    torch.manual_seed(2)
    x = torch.zeros(1, 1, 32, 32)
    x[:, :, 10:22, 4:28] = torch.rand(1, 1, 12, 24) * 0.8 + 0.2
    x[:, :, 15, 10] = 0.0  # a black pixel inside the scan
    gen = ResnetGenerator(ngf=4, n_blocks=1, residual=True, scan_level=0.02, scan_dilation=5).eval()
    with torch.no_grad():
        gen.decoder[-1].bias.fill_(0.3)  # a global brightening z = 0.3
        y = gen(x)
    brightened = torch.sigmoid(torch.logit(x.clamp(1e-3, 1 - 1e-3)) + 0.6)
    inside = torch.zeros_like(x, dtype=torch.bool)
    inside[:, :, 8:24, 2:30] = True  # the scan grown by scan_dilation // 2 = 2 pixels
    torch.testing.assert_close(y[inside], brightened[inside], atol=1e-6, rtol=1e-5)  # incl. the dark pixel
    torch.testing.assert_close(y[~inside], x.clamp(1e-3, 1 - 1e-3)[~inside], atol=1e-7, rtol=0)  # frame kept
    assert y[:, :, 15, 10] > 1e-3  # the dark pixel inside the scan is corrected like its neighbours
    for kwargs in ({"scan_level": 0.02}, {"residual": True, "scan_level": 1.0}, {"residual": True, "scan_dilation": 4}):
        with pytest.raises(ValueError, match="scan_"):
            ResnetGenerator(ngf=4, n_blocks=1, **kwargs)


def test_output_levels_round_in_eval_mode_only():
    torch.manual_seed(1)
    x = torch.rand(2, 1, 32, 32)
    gen = ResnetGenerator(ngf=4, n_blocks=1, output_levels=256)
    ref = ResnetGenerator(ngf=4, n_blocks=1)
    ref.load_state_dict(gen.state_dict())
    with torch.no_grad():
        y_float = ref.eval()(x)
        torch.testing.assert_close(gen.train()(x), ref.train()(x), rtol=0, atol=0)  # training: float output
        y = gen.eval()(x)
    levels = y * 255
    torch.testing.assert_close(levels, torch.round(levels), rtol=0, atol=1e-4)  # exact 8-bit gray levels
    assert (y - y_float).abs().max() <= 0.5 / 255 + 1e-6
    # a residual generator at initialisation reproduces an 8-bit image exactly, black background included
    img = torch.randint(0, 256, (1, 1, 32, 32)).float() / 255
    img[..., :10] = 0
    res = ResnetGenerator(ngf=4, n_blocks=1, residual=True, output_levels=256).eval()
    with torch.no_grad():
        torch.testing.assert_close(res(img), img, rtol=0, atol=1e-6)
    for bad in (1, 2.5, True):
        with pytest.raises(ValueError, match="output_levels"):
            ResnetGenerator(output_levels=bad)


def test_generator_rejects_bad_input_shape():
    gen = ResnetGenerator(ngf=4, n_blocks=0)
    with pytest.raises(ValueError, match="divisible"):
        gen(torch.rand(1, 1, 30, 32))
    with pytest.raises(ValueError, match="expected input"):
        gen(torch.rand(1, 3, 32, 32))


# ---------------------------------------------------------------- discriminator


def test_patchgan_matches_reference_nlayer_discriminator():
    torch.manual_seed(0)
    disc = PatchGANDiscriminator(in_channels=1, channels=8)
    ref = ref_nlayer_discriminator(1, ndf=8, n_layers=3)
    copy_weights_in_order(disc, ref)
    x = torch.rand(2, 1, 32, 32)
    out = disc(x)
    assert out.shape == (2, 1, 2, 2)  # 32 / 8 - 2
    torch.testing.assert_close(out, ref(x), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- image pool


def replay_pool(batches, pool_size, seed):
    """Independent replay of the documented draws: rand(1) > 0.5 then randint(pool_size)."""
    g = torch.Generator().manual_seed(seed)
    stored, outs = [], []
    for batch in batches:
        out = []
        for img in batch:
            if len(stored) < pool_size:
                stored.append(img)
                out.append(img)
            elif torch.rand(1, generator=g).item() > 0.5:
                k = int(torch.randint(pool_size, (1,), generator=g).item())
                out.append(stored[k])
                stored[k] = img
            else:
                out.append(img)
        outs.append(torch.stack(out))
    return outs


def test_image_pool_replays_draws_and_round_trips():
    batches = [torch.full((2, 1, 2, 2), float(i)) + torch.arange(2.0).view(2, 1, 1, 1) / 10 for i in range(12)]
    pool = ImagePool(pool_size=3, seed=5)
    expected = replay_pool(batches, 3, 5)
    got = [pool(b) for b in batches[:6]]
    state = pool.state_dict()
    got += [pool(b) for b in batches[6:]]
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    assert any(not torch.equal(g, b) for g, b in zip(got, batches))  # the history was actually used
    restored = ImagePool(pool_size=3, seed=999)
    restored.load_state_dict(state)
    for g, b in zip(got[6:], batches[6:]):
        torch.testing.assert_close(restored(b), g, rtol=0, atol=0)


def test_image_pool_size_zero_is_identity_and_errors():
    x = torch.rand(3, 1, 4, 4, requires_grad=True)
    out = ImagePool(0)(x)
    assert torch.equal(out, x) and not out.requires_grad
    with pytest.raises(ValueError, match="pool_size"):
        ImagePool(-1)
    with pytest.raises(ValueError, match="pool_size"):
        ImagePool(2).load_state_dict(ImagePool(3).state_dict())
    with pytest.raises(KeyError, match="images"):
        ImagePool(2).load_state_dict({"pool_size": 2, "generator_state": torch.Generator().get_state()})


def test_image_pool_state_loads_weights_only_with_metatensor_input():
    import io

    from monai.data import MetaTensor

    pool = ImagePool(pool_size=2, seed=0)
    pool.query(MetaTensor(torch.rand(3, 1, 4, 4), meta={"filename_or_obj": "a.png"}))
    buffer = io.BytesIO()
    torch.save(pool.state_dict(), buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=True)  # a MetaTensor in the pool would fail here
    assert len(restored["images"]) == 2 and all(type(t) is torch.Tensor for t in restored["images"])
