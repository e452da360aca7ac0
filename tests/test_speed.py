"""The speed work's correctness: the EMA's multi-tensor update, non-finite steps skipped on the
device, activation checkpointing, compiled graphs without breaks, the precision default."""

from __future__ import annotations

import copy
from functools import partial

import pytest
import torch
from torch import nn

from difforge.diffusion.losses import DenoisingLoss
from difforge.diffusion.parameterization import Denoiser, EpsParameterization, VParameterization
from difforge.diffusion.schedules import CosineSchedule, LinearSchedule
from difforge.nets import UNet
from difforge.training.build import resolve_precision
from difforge.training.ema import EMA
from difforge.training.nonfinite import NonfiniteRecorder, gradients_nonfinite

TINY = dict(
    in_channels=1,
    image_size=8,
    base_channels=16,
    channel_mult=(1, 2),
    num_res_blocks=1,
    attn_resolutions=(4,),
)


class WithBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)
        self.norm = nn.BatchNorm1d(2)


def reference_ema(steps: list[list[torch.Tensor]], decay: float) -> list[torch.Tensor]:
    """Float64 loop over the formula in ema.py's docstring, from the first weights."""
    ema = [t.double().clone() for t in steps[0]]
    for n, params in enumerate(steps[1:]):
        beta = min(decay, (1 + n) / (10 + n))
        ema = [beta * e + (1 - beta) * p.double() for e, p in zip(ema, params, strict=True)]
    return ema


def test_ema_update_matches_the_formula_and_copies_buffers():
    torch.manual_seed(0)
    net = WithBuffer()
    ema = EMA(net, decay=0.9, warmup=True)
    history = [[p.detach().clone() for p in net.parameters()]]
    for _ in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net.norm.running_mean.add_(1.0)
        ema.update(net)
        history.append([p.detach().clone() for p in net.parameters()])
    for got, want in zip(ema.net.parameters(), reference_ema(history, 0.9), strict=True):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ema.net.norm.running_mean, net.norm.running_mean)
    assert int(ema.num_updates) == 30


def test_ema_count_survives_a_state_dict_load_and_follows_replaced_tensors():
    torch.manual_seed(0)
    net = WithBuffer()
    ema = EMA(net, decay=0.999)
    for _ in range(5):
        ema.update(net)
    restored = EMA(WithBuffer(), decay=0.999)
    restored.update(net)  # its cache and count from before the load must not survive it
    restored.load_state_dict(ema.state_dict())
    assert restored.current_decay() == ema.current_decay() == pytest.approx(6 / 15)
    # .to() with another dtype replaces every tensor (the average goes back to float32, whatever
    # the network's dtype): the update must follow the new ones.
    net64, restored = net.double(), restored.double()
    assert restored.net.lin.weight.dtype == torch.float32
    with torch.no_grad():
        net64.lin.weight.fill_(1.0)
    restored.update(net64)
    beta = 6 / 15
    want = beta * ema.net.lin.weight.double() + (1 - beta) * 1.0
    torch.testing.assert_close(restored.net.lin.weight, want.float())
    assert int(restored.num_updates) == 6
    # A deep copy (as a checkpoint round trip in memory) updates its own networks only.
    twin = copy.deepcopy(restored)
    twin.update(net64)
    assert int(twin.num_updates) == 7 and int(restored.num_updates) == 6


def test_ema_refuses_a_network_of_another_shape():
    ema = EMA(nn.Linear(3, 2))
    with pytest.raises(ValueError, match="other parameters"):
        ema.update(nn.Linear(3, 4))


def test_fused_adamw_skips_a_flagged_step_on_the_device_and_the_recorder_names_it():
    torch.manual_seed(0)
    net = nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1, fused=True)
    recorder = NonfiniteRecorder(capacity=2)
    sigma = torch.tensor([0.5, 2.0, 8.0])
    for step in range(4):
        per_sample = net(torch.randn(3, 4)).square().mean(1)
        if step in (1, 3):
            per_sample = per_sample * torch.tensor([1.0, float("nan"), float("inf")])
        recorder.note_loss(per_sample, sigma)
        optimizer.zero_grad()
        per_sample.mean().backward()
        before = [p.detach().clone() for p in net.parameters()]
        state_before = copy.deepcopy(optimizer.state_dict()["state"])
        grads_bad = gradients_nonfinite([p.grad for p in net.parameters()])
        optimizer.found_inf = recorder.found_inf(grads_bad)
        recorder.record(step, optimizer.found_inf)
        optimizer.step()
        changed = any(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))
        assert changed == (step not in (1, 3)), step
        if step in (1, 3):
            for key, value in state_before.items():
                torch.testing.assert_close(optimizer.state_dict()["state"][key], value)
        if step == 1:
            (bad,) = recorder.read()
            assert (bad.step, bad.kind, bad.sigmas) == (1, "training loss", [2.0, 8.0])
    (bad,) = recorder.read()  # the second bad step, read later
    assert bad.step == 3 and recorder.read() == []


def test_recorder_flags_nonfinite_gradients_of_a_finite_loss():
    recorder = NonfiniteRecorder(capacity=1)
    recorder.note_loss(torch.ones(2), torch.ones(2))
    flag = recorder.found_inf(
        gradients_nonfinite([torch.ones(3), torch.tensor([0.0, float("inf")])])
    )
    recorder.record(7, flag)
    assert float(flag) == 1.0
    (bad,) = recorder.read()
    assert (bad.step, bad.kind, bad.sigmas) == (7, "gradients", [])


def test_checkpointing_gives_the_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = UNet(**TINY, dropout=0.3)
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpointing = True
    x, t = torch.randn(3, 1, 8, 8), torch.rand(3) * 999
    results = []
    for net in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout masks; checkpointing replays them in backward
        out = net(x, t)
        out.square().mean().backward()
        results.append((out.detach(), [p.grad.clone() for p in net.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


def test_checkpointing_recomputes_in_backward():
    """The checkpointed net keeps fewer saved activations (the point of the option)."""
    torch.manual_seed(0)
    saved = {}
    for flag in (False, True):
        net = UNet(**TINY, checkpointing=flag)
        count = 0

        def pack(tensor: torch.Tensor) -> torch.Tensor:
            nonlocal count
            count += tensor.numel()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            net(torch.randn(2, 1, 8, 8), torch.rand(2)).sum()
        saved[flag] = count
    assert saved[True] < saved[False] / 2, saved


@pytest.mark.parametrize("schedule", [CosineSchedule(), LinearSchedule()], ids=["cosine", "linear"])
def test_compiled_training_loss_and_sampling_denoiser_have_no_graph_breaks(schedule):
    torch.manual_seed(0)
    net = UNet(**TINY, num_classes=3)
    net.check_inputs = False
    for parameterization in (EpsParameterization(), VParameterization()):
        denoiser = Denoiser(net, schedule, parameterization)
        loss = DenoisingLoss()
        x0, labels = torch.randn(2, 1, 8, 8), torch.tensor([0, 3])
        sigma = schedule.sample_training_sigmas(2)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(partial(loss, denoiser))(
            x0, sigma, torch.randn_like(x0), labels
        )
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1
        with torch.no_grad():
            explained = torch._dynamo.explain(denoiser)(x0, sigma, labels)
        assert explained.graph_break_count == 0, explained.break_reasons
    torch._dynamo.reset()


def test_precision_auto_is_fp32_without_a_gpu_and_explicit_values_pass_through():
    if not torch.cuda.is_available():
        assert resolve_precision("auto", "auto") == "32-true"
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "gpu") == "16-mixed"
