"""The Diffusion Transformer: parameter counts against the paper, shapes, adaLN-Zero, compile."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import yaml

from difforge.nets.dit import DiT, DiTBlock, sincos_2d
from helpers import ROOT

# Peebles & Xie 2023, table 1 / 4: millions of parameters at 32x32x4 latents, 1000 classes,
# learn_sigma; XL/2 also exactly, as the reference code prints it (675,129,632). The table prints
# whole millions and truncates B/2's 130.51 M to 130, so counts are checked to within 0.52 M.
PAPER_MILLIONS = {"dit_s": 33, "dit_b": 130, "dit_l": 458, "dit_xl": 675}


def preset(name: str, **overrides) -> dict:
    cfg = yaml.safe_load((ROOT / "configs" / "model" / f"{name}.yaml").read_text())
    cfg.pop("_target_")
    return {**cfg, **overrides}


def paper_count(net: DiT) -> int:
    # The paper's code keeps the fixed position embedding as a frozen parameter; here a buffer.
    return sum(p.numel() for p in net.parameters()) + net.pos_embed.numel()


@pytest.mark.parametrize("name", list(PAPER_MILLIONS))
def test_parameter_counts_match_the_paper(name):
    with torch.device("meta"):
        net = DiT(
            **preset(name, in_channels=4, image_size=32, num_classes=1000, learned_variance=True)
        )
    assert abs(paper_count(net) / 1e6 - PAPER_MILLIONS[name]) < 0.52
    if name == "dit_xl":
        assert paper_count(net) == 675_129_632


@pytest.mark.parametrize("patch_size", [2, 4, 8])
@pytest.mark.parametrize("learned_variance", [False, True])
def test_output_shape(patch_size, learned_variance):
    net = DiT(3, 16, patch_size, 64, 2, 4, num_classes=5, learned_variance=learned_variance)
    x = torch.randn(2, 3, 16, 16)
    out = net(x, torch.tensor([3.0, 700.0]), torch.tensor([0, 5]))
    assert out.shape == (2, 6 if learned_variance else 3, 16, 16)
    assert net.grid_size == 16 // patch_size


def test_zero_initialised_adaln_zero_block_is_the_identity():
    torch.manual_seed(0)
    net = DiT(1, 8, 2, 32, 3, 4, num_classes=10)
    h = torch.randn(4, 16, 32)
    c = torch.randn(4, 32)
    for block in net.blocks:
        assert isinstance(block, DiTBlock)
        torch.testing.assert_close(block(h, c), h, rtol=0, atol=0)
    # Zero output layer: the whole network outputs zeros at initialisation.
    out = net(torch.randn(4, 1, 8, 8), torch.rand(4) * 999, torch.arange(4))
    assert torch.equal(out, torch.zeros_like(out))


def test_trained_block_is_not_the_identity_and_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = DiT(1, 8, 2, 32, 2, 4, num_classes=10)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)  # leave the zero initialisation
    out = net(torch.randn(4, 1, 8, 8), torch.rand(4) * 999, torch.arange(4))
    out.square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())


def test_position_embedding_is_the_2d_sincos_formula():
    dim, grid = 16, 4
    emb = sincos_2d(dim, grid)
    row, col = 2, 3
    token = emb[row * grid + col]
    omega = 1 / 10000 ** (torch.arange(4, dtype=torch.float64) / 4)
    expected = torch.cat(
        [(col * omega).sin(), (col * omega).cos(), (row * omega).sin(), (row * omega).cos()]
    ).float()
    torch.testing.assert_close(token, expected)


def test_unpatchify_inverts_the_token_layout():
    net = DiT(2, 8, 4, 32, 1, 4)
    x = torch.randn(3, 2, 8, 8)
    g, p = 2, 4
    tokens = x.reshape(3, 2, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(3, g * g, p * p * 2)
    assert torch.equal(net.unpatchify(tokens), x)


def test_null_class_and_label_checks():
    torch.manual_seed(0)
    net = DiT(1, 8, 2, 32, 1, 4, num_classes=10)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0])
    torch.testing.assert_close(net(x, t), net(x, t, torch.tensor([10, 10])))
    with pytest.raises(ValueError, match="class_labels out of range"):
        net(x, t, torch.tensor([0, 11]))


@pytest.mark.parametrize(
    "kwargs,fragment",
    [
        ({"image_size": 8, "patch_size": 3}, "image_size=8 is not divisible by patch_size=3"),
        ({"image_size": 8, "patch_size": 2, "hidden_size": 30}, "hidden_size=30"),
        ({"image_size": 8, "patch_size": 0}, "patch_size must be an integer >= 1"),
    ],
)
def test_bad_sizes_are_refused_at_construction(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        DiT(in_channels=1, num_heads=2, **{"hidden_size": 32, **kwargs})


def test_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = DiT(1, 8, 2, 32, 2, 4, num_classes=10)
    for p in plain.parameters():
        torch.nn.init.normal_(p, std=0.05)
    checkpointed = DiT(1, 8, 2, 32, 2, 4, num_classes=10, checkpointing=True)
    checkpointed.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(4, 1, 8, 8), torch.rand(4) * 999, torch.arange(4)
    for net in (plain, checkpointed):
        net(x, t, y).square().mean().backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_compiles_without_graph_breaks(checkpointing):
    net = DiT(1, 8, 2, 32, 2, 4, num_classes=10, checkpointing=checkpointing)
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2) * 999, torch.tensor([1, 10])
    explanation = torch._dynamo.explain(net)(x, t, y)
    assert explanation.graph_break_count == 0, explanation.break_reasons


def test_dit_tiny_preset_fits_digits():
    net = DiT(**preset("dit_tiny", in_channels=1, image_size=8))
    assert math.isclose(sum(p.numel() for p in net.parameters()), 722_788)
    assert net(torch.randn(2, 1, 8, 8), torch.rand(2)).shape == (2, 1, 8, 8)


def test_bench_dit_compares_with_diffusers_at_equal_architecture(tmp_path):
    """The diffusers peer differs only by its per-block copies of the conditioning embedding
    (timestep MLP and label table), and the script prints its tables."""
    pytest.importorskip("diffusers")
    script = ROOT / "scripts" / "bench_dit.py"
    result = subprocess.run(
        [sys.executable, str(script), "--quick", "--json", str(tmp_path / "bench.json")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "command: python scripts/bench_dit.py --quick" in result.stdout
    report = json.loads((tmp_path / "bench.json").read_text())
    cfg = preset("dit_tiny")
    h, depth, classes = cfg["hidden_size"], cfg["depth"], 10
    per_block_embedding = (256 * h + h) + (h * h + h) + (classes + 1) * h
    for run in report["results"]:
        params = run["params"]
        assert params["diffusers"] - params["difforge"] == (depth - 1) * per_block_embedding
        assert run["ratio"]["cpu"]["train"]["median"] > 0
