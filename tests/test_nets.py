"""Tests for difforge.nets: the U-Net presets, the MLP denoiser and the noise-label embedding.

Big presets are built on the meta device (shapes and parameter counts without memory or
compute); numerical tests use tiny networks so the file runs in well under a minute on a CPU.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from difforge.nets import MLPDenoiser, SinusoidalEmbedding, UNet

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "model"
UNET_PRESETS = ["unet_tiny", "unet_small", "unet_base", "unet_large"]
# (channels, image_size) each preset is meant for; the first one is its default.
PRESET_DATA = {
    "unet_tiny": [(1, 8)],
    "unet_small": [(1, 16), (3, 32)],
    "unet_base": [(3, 32)],
    "unet_large": [(3, 32), (3, 64)],
}
TINY = dict(base_channels=16, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,))


def load_preset(name: str, **data) -> object:
    """Compose configs/model/<name>.yaml with a ``data`` node, as Hydra would."""
    cfg = OmegaConf.create({"data": data, "model": OmegaConf.load(CONFIGS / f"{name}.yaml")})
    return cfg.model


def build(name: str, device: str = "cpu", overrides: dict | None = None, **data):
    cfg = load_preset(name, **data)
    if overrides:
        cfg = OmegaConf.merge(cfg, overrides)
    with torch.device(device):
        return instantiate(cfg)


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def perturb_(net: torch.nn.Module, scale: float = 0.05) -> torch.nn.Module:
    """Add noise to every parameter: zero-initialised layers would hide label/grad effects."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return net


def tiny_unet(**kw) -> UNet:
    torch.manual_seed(0)
    args = dict(TINY, in_channels=kw.pop("in_channels", 1), image_size=kw.pop("image_size", 8))
    args.update(kw)
    return UNet(**args)


# -- presets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", UNET_PRESETS)
@pytest.mark.parametrize("learned_variance", [False, True])
def test_unet_preset_shapes(name, learned_variance):
    for channels, size in PRESET_DATA[name]:
        net = build(
            name,
            "meta",
            {"learned_variance": learned_variance, "num_classes": 10},
            channels=channels,
            image_size=size,
        )
        assert isinstance(net, UNet)
        assert (net.in_channels, net.image_size, net.num_classes) == (channels, size, 10)
        assert net.learned_variance is learned_variance
        assert net.out_channels == channels * (2 if learned_variance else 1)
        x = torch.empty(2, channels, size, size, device="meta")
        t = torch.empty(2, device="meta")
        y = torch.zeros(2, dtype=torch.long, device="meta")
        assert net(x, t, y).shape == (2, net.out_channels, size, size)
        assert net(x, t).shape == (2, net.out_channels, size, size)


def test_unet_base_is_ddpm_cifar10_size():
    net = build("unet_base", "meta", channels=3, image_size=32)
    assert abs(n_params(net) - 35.7e6) <= 0.1e6
    assert n_params(net) == 35_746_307  # the PyTorch/TF DDPM CIFAR-10 model, exactly
    assert net.channel_mult == (1, 2, 2, 2) and net.attn_resolutions == (16,)


def test_small_presets_run_for_real():
    torch.manual_seed(0)
    for name, (channels, size) in [("unet_tiny", (1, 8)), ("unet_small", (1, 16))]:
        net = build(name, channels=channels, image_size=size).eval()
        x = torch.randn(2, channels, size, size)
        out = net(x, torch.tensor([3.5, 900.0]))
        assert out.shape == x.shape and torch.isfinite(out).all()
    # Zero-initialised output convolution: the untrained net outputs exactly zero.
    assert out.abs().max() == 0


def test_mlp_preset():
    net = build("mlp", dim=2)
    assert isinstance(net, MLPDenoiser)
    assert (net.in_channels, net.out_channels, net.num_classes) == (2, 2, 0)
    assert not net.learned_variance
    assert net(torch.randn(5, 2), torch.rand(5)).shape == (5, 2)


# -- interface --------------------------------------------------------------------------------


def test_learned_variance_doubles_channels():
    x = torch.randn(3, 2, 8, 8)
    net = tiny_unet(in_channels=2, learned_variance=True)
    assert net.out_channels == 4 and net(x, torch.rand(3) * 999).shape == (3, 4, 8, 8)
    mlp = MLPDenoiser(3, hidden_dim=32, num_layers=2, learned_variance=True)
    assert mlp.out_channels == 6 and mlp(torch.randn(4, 3), torch.rand(4)).shape == (4, 6)


def make_nets(num_classes=0, **kw):
    unet = perturb_(tiny_unet(num_classes=num_classes, **kw)).eval()
    torch.manual_seed(0)
    mlp = perturb_(MLPDenoiser(2, hidden_dim=32, num_layers=2, num_classes=num_classes)).eval()
    return [(unet, torch.randn(4, 1, 8, 8)), (mlp, torch.randn(4, 2))]


@pytest.mark.parametrize("noise", [torch.tensor([10.0, 250.5, 500.0, 999.0]), torch.zeros(4)])
def test_class_conditioning_and_null_label(noise):
    for net, x in make_nets(num_classes=3):
        assert net.num_classes == 3 and net.label_embed.num_embeddings == 4
        out = {c: net(x, noise, torch.full((4,), c)) for c in range(4)}
        for a in range(4):
            for b in range(a + 1, 4):
                assert not torch.allclose(out[a], out[b]), (a, b)
        # class_labels=None means all-null (label == num_classes).
        torch.testing.assert_close(net(x, noise), out[3], rtol=0, atol=1e-6)
        # Mixed batch: each sample sees its own label.
        mixed = net(x, noise, torch.tensor([0, 3, 1, 2]))
        for i, c in enumerate([0, 3, 1, 2]):
            torch.testing.assert_close(mixed[i], out[c][i], rtol=1e-5, atol=1e-6)


def test_unconditional_ignores_class_labels():
    for net, x in make_nets(num_classes=0):
        assert net.num_classes == 0 and net.label_embed is None
        t = torch.rand(4) * 1000
        torch.testing.assert_close(net(x, t, torch.tensor([0, 1, 2, 5])), net(x, t))


def test_noise_labels_change_output_and_scalar_broadcasts():
    for net, x in make_nets():
        a, b = net(x, torch.full((4,), 0.3)), net(x, torch.full((4,), 0.31))
        assert not torch.allclose(a, b)
        torch.testing.assert_close(net(x, torch.tensor(0.3)), a)


def test_gradients_reach_every_parameter():
    nets = [
        (tiny_unet(num_classes=3, learned_variance=True), torch.randn(4, 1, 8, 8)),
        (tiny_unet(scale_shift_norm=True, num_heads=2), torch.randn(4, 1, 8, 8)),
        (tiny_unet(resample_with_conv=False, attn_resolutions=(8, 4)), torch.randn(4, 1, 8, 8)),
        (MLPDenoiser(2, hidden_dim=32, num_layers=2, num_classes=3), torch.randn(4, 2)),
    ]
    for net, x in nets:
        labels = torch.tensor([0, 1, 2, 3]) if net.num_classes else None
        # At initialisation (zero-init output layers) every parameter is in the graph: DDP
        # would otherwise complain about unused parameters.
        net(x, torch.rand(4) * 1000, labels).square().sum().backward()
        missing = [n for n, p in net.named_parameters() if p.grad is None]
        assert not missing, missing
        # Away from the zero initialisation every gradient is non-zero.
        net.zero_grad(set_to_none=True)
        perturb_(net)
        net(x, torch.rand(4) * 1000, labels).square().sum().backward()
        dead = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.any()]
        assert not dead, dead


def test_eval_is_deterministic_and_dropout_active_in_train():
    net = perturb_(tiny_unet(dropout=0.5))
    x, t = torch.randn(4, 1, 8, 8), torch.rand(4) * 1000
    net.eval()
    a, b = net(x, t), net(x, t)
    assert torch.equal(a, b)
    net.train()
    assert not torch.allclose(net(x, t), net(x, t))


def test_channels_last_matches_contiguous():
    net = perturb_(tiny_unet(in_channels=3, num_heads=2, attn_resolutions=(8, 4))).eval()
    x, t = torch.randn(4, 3, 8, 8), torch.rand(4) * 1000
    ref = net(x, t)
    x_cl = x.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x_cl, t), ref, rtol=0, atol=1e-5)
    net = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(net(x_cl, t), ref, rtol=0, atol=1e-5)
    torch.testing.assert_close(net(x, t), ref, rtol=0, atol=1e-5)


def test_compiles_without_graph_breaks():
    net = perturb_(tiny_unet(num_classes=3)).eval()
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([0, 3])
    compiled = torch.compile(net, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, t, y), net(x, t, y))
    torch.testing.assert_close(compiled(x, t), net(x, t))


def test_autocast_output_dtype_follows_input():
    net = perturb_(tiny_unet())
    x = torch.randn(2, 1, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, torch.rand(2) * 1000)
    assert out.dtype == torch.float32


# -- embedding --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("grid", "min_dist"),
    [
        (torch.arange(0, 1000, 0.5), 0.5),  # fractional DDPM timesteps
        (torch.arange(-1.6, 1.1, 0.01), 0.01),  # EDM c_noise = ln(sigma) / 4
    ],
)
def test_embedding_resolves_both_noise_label_ranges(grid, min_dist):
    emb = SinusoidalEmbedding(128)(grid)
    assert emb.shape == (len(grid), 128) and emb.dtype == torch.float32
    dist = torch.cdist(emb.double(), emb.double())
    dist.fill_diagonal_(float("inf"))
    # Every pair of distinct labels is separated by at least ~the label spacing: no aliasing
    # anywhere in the range, and neighbours are distinguishable.
    assert dist.min() > min_dist


def test_embedding_is_float32_in_half_precision_models():
    net = tiny_unet().to(torch.bfloat16)
    out = net(torch.randn(2, 1, 8, 8, dtype=torch.bfloat16), torch.tensor([999.0, 998.0]))
    assert out.dtype == torch.bfloat16


# -- validation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "fragments"),
    [
        (dict(image_size=30), ["image_size=30", "multiple of 8", "24 or 32"]),
        (dict(attn_resolutions=(16, 5)), ["(5,)", "(32, 16, 8, 4)"]),
        (dict(attn_resolutions=(64,)), ["(64,)", "reachable resolutions"]),
        (dict(image_size=0), ["image_size must be an integer >= 1, got 0"]),
        (dict(in_channels=0), ["in_channels must be an integer >= 1, got 0"]),
        (dict(base_channels=-8), ["base_channels must be an integer >= 1, got -8"]),
        (dict(num_res_blocks=0), ["num_res_blocks must be an integer >= 1, got 0"]),
        (dict(channel_mult=()), ["channel_mult"]),
        (dict(channel_mult=(1, 0)), ["channel_mult", "(1, 0)"]),
        (dict(num_heads=3), ["num_heads=3", "width 64"]),
        (dict(head_channels=24), ["head_channels=24"]),
        (dict(dropout=1.5), ["dropout=1.5"]),
        (dict(num_classes=-1), ["num_classes must be an integer >= 0, got -1"]),
        (dict(num_res_blocks=None), ["num_res_blocks must be an integer >= 1, got None"]),
        (dict(channel_mult=(1, 2.5)), ["channel_mult", "2.5"]),
    ],
)
def test_unet_construction_errors(kwargs, fragments):
    args = dict(in_channels=3, image_size=32, base_channels=32, channel_mult=(1, 2, 2, 2))
    args.update(kwargs)
    with pytest.raises(ValueError) as err:
        UNet(**args)
    msg = str(err.value)
    assert "\n" not in msg
    for fragment in fragments:
        assert fragment in msg, (fragment, msg)


def test_unet_forward_errors():
    net = tiny_unet(num_classes=10)
    t = torch.rand(4)
    with pytest.raises(ValueError, match=r"built for 1 input channel\(s\) at 8x8, got input of "):
        net(torch.randn(4, 3, 8, 8), t)
    with pytest.raises(ValueError, match=r"got input of shape \(4, 1, 16, 16\)"):
        net(torch.randn(4, 1, 16, 16), t)
    with pytest.raises(ValueError, match=r"got input of shape \(1, 8, 8\)"):
        net(torch.randn(1, 8, 8), t)
    x = torch.randn(4, 1, 8, 8)
    with pytest.raises(ValueError, match=r"out of range: got \[11\].*0\.\.9 and 10"):
        net(x, t, torch.tensor([0, 10, 11, 3]))
    with pytest.raises(ValueError, match=r"out of range: got \[-1\]"):
        net(x, t, torch.tensor([0, -1, 1, 3]))
    with pytest.raises(ValueError, match=r"class_labels must have shape \(4,\), got \(2,\)"):
        net(x, t, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="integer tensor"):
        net(x, t, torch.zeros(4))
    with pytest.raises(ValueError, match=r"noise_labels must have shape \(4,\).*got \(4, 1\)"):
        net(x, t[:, None])


def test_mlp_errors():
    with pytest.raises(ValueError, match="dim must be an integer >= 1, got 0"):
        MLPDenoiser(0)
    with pytest.raises(ValueError, match="num_layers must be an integer >= 1, got 0"):
        MLPDenoiser(2, num_layers=0)
    with pytest.raises(ValueError, match="embed_dim must be an integer >= 2, got 1"):
        MLPDenoiser(2, embed_dim=1)
    net = MLPDenoiser(2, hidden_dim=16, num_layers=1, num_classes=2)
    with pytest.raises(ValueError, match=r"built for inputs of shape \(B, 2\), got .*\(3, 3\)"):
        net(torch.randn(3, 3), torch.rand(3))
    with pytest.raises(ValueError, match=r"out of range: got \[3\]"):
        net(torch.randn(3, 2), torch.rand(3), torch.tensor([0, 2, 3]))
