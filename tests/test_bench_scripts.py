"""Smoke tests of scripts/bench_*.py: each runs in a tiny setting and prints its tables.

The diffusers comparisons are skipped where diffusers is not importable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def run_script(name: str, *args: str, timeout: float = 300) -> str:
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "1",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    result = subprocess.run(
        [sys.executable, str(SCRIPTS / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert result.returncode == 0, (
        f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-5000:]}"
    )
    return result.stdout


def load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), SCRIPTS / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """The cells of the markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    assert set(lines[start + 1].replace("|", "").split()) == {"---"}
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


def assert_header(text: str, script: str) -> None:
    assert text.startswith("machine: "), text[:200]
    assert f"command: python scripts/{script}" in text


# --- samplers ---------------------------------------------------------------------------------


def test_bench_samplers_difforge_only(tmp_path: Path) -> None:
    out = run_script(
        "bench_samplers.py",
        "--quick",
        "--no-diffusers",
        "--mixtures",
        "gmm1d",
        "--json",
        str(tmp_path / "s.json"),
    )
    assert_header(out, "bench_samplers.py")
    assert "statistical floor" in out and "ODE limit" in out
    rows = table_rows(out, "| sampler | side (config) | NFE 5 | NFE 10 |")
    assert {r[0] for r in rows} == {"ddpm", "ddim", "euler", "heun", "dpmpp_2m"}
    results = json.loads((tmp_path / "s.json").read_text())
    gmm = results["gmm1d"]
    assert 0 < gmm["floor"]["w1_mean"] < 0.2
    for row in gmm["rows"]:
        assert row["side"] == "difforge"
        assert 0 <= row["w1"] < float("inf") and 0 <= row["mass_err"] <= 1
        assert row["nfe"] <= row["nfe_target"]


def test_bench_samplers_against_diffusers(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    out = run_script(
        "bench_samplers.py",
        "--quick",
        "--mixtures",
        "gmm1d",
        "--families",
        "ddim",
        "euler",
        "--json",
        str(tmp_path / "s.json"),
    )
    assert "diffusers best" in out and "ratio difforge default / diffusers best" in out
    rows = json.loads((tmp_path / "s.json").read_text())["gmm1d"]["rows"]

    def w1(side: str, family: str, config: str, nfe: int) -> float:
        (row,) = [
            r
            for r in rows
            if (r["side"], r["family"], r["config"], r["nfe_target"]) == (side, family, config, nfe)
        ]
        return row["w1"]

    # The same algorithm on the same grid from the same noise must agree: difforge's DDIM on its
    # discrete grid is Euler on the probability-flow ODE at the timesteps linspace(999, 0, n),
    # which is diffusers' EulerDiscreteScheduler with linspace spacing. This checks the
    # noise-prediction conversion and the input scaling used for diffusers.
    for nfe in (5, 10):
        ours = w1("difforge", "ddim", "linspace", nfe)
        theirs = w1("diffusers", "euler", "linspace", nfe)
        assert ours == pytest.approx(theirs, rel=2e-3)


def test_bench_samplers_sliced_w1_is_the_library_metric() -> None:
    import torch

    from difforge.metrics.mixture import sliced_wasserstein1

    bench = load_script("bench_samplers.py")
    mixture = bench.make_mixtures()["gmm2d"]
    metrics = bench.Metrics(mixture, 500)
    samples, _ = mixture.sample(500, torch.Generator().manual_seed(3))
    reference, _ = mixture.sample(500, torch.Generator().manual_seed(10_000))
    expected = sliced_wasserstein1(samples, reference, num_projections=256, seed=0)
    assert metrics(samples)["w1"] == pytest.approx(expected, rel=1e-12)


# --- U-Net ------------------------------------------------------------------------------------


def test_bench_unet_difforge_only(tmp_path: Path) -> None:
    out = run_script(
        "bench_unet.py",
        "--quick",
        "--no-diffusers",
        "--variants",
        "fp32",
        "--json",
        str(tmp_path / "u.json"),
    )
    assert_header(out, "bench_unet.py")
    rows = table_rows(out, "| size | variant | batch | train s/step |")
    assert [r[:3] for r in rows] == [["tiny", "fp32", "4"]]
    result = json.loads((tmp_path / "u.json").read_text())["results"][0]
    assert result["params"]["difforge"] == 649_329
    assert result["memory"]["difforge"]["train_peak_mib"] > 0
    assert result["median_s"]["cpu"]["difforge"]["train"] > 0


@pytest.mark.slow
def test_bench_unet_against_diffusers(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    out = run_script(
        "bench_unet.py", "--quick", "--variants", "cl", "--json", str(tmp_path / "u.json")
    )
    rows = table_rows(out, "| size | variant | batch | train s/step difforge |")
    assert [r[1] for r in rows] == ["cl"]
    for result in json.loads((tmp_path / "u.json").read_text())["results"]:
        assert result["params"]["difforge"] == result["params"]["diffusers"]
        assert result["ratio"]["cpu"]["train"] > 0 and result["memory_ratio"]["infer"] > 0


@pytest.mark.parametrize(("size", "params"), [("small", 6_469_889), ("base", 35_746_307)])
def test_diffusers_unet_matches_difforge_parameters(size: str, params: int) -> None:
    pytest.importorskip("diffusers")
    bench = load_script("bench_unet.py")
    cfg = bench.preset(size)
    assert bench.num_params(bench.build_difforge(cfg)) == params
    assert bench.num_params(bench.build_diffusers(cfg)) == params


def test_bench_unet_attention_patch_is_the_same_function() -> None:
    import torch

    from difforge.nets.unet import AttentionBlock

    bench = load_script("bench_unet.py")
    torch.manual_seed(0)
    block = AttentionBlock(64, 4)
    torch.nn.init.normal_(block.proj.weight)  # zero-initialised: make the attention visible
    x = torch.randn(3, 64, 4, 4)
    with torch.no_grad():
        expected = block(x)
        got = bench.attention_forward_last_dim_contiguous(block, x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


# --- overhead, throughput, GPU -----------------------------------------------------------------


@pytest.mark.slow
def test_bench_overhead(tmp_path: Path) -> None:
    out = run_script("bench_overhead.py", "--quick", "--json", str(tmp_path / "o.json"))
    assert_header(out, "bench_overhead.py")
    rows = table_rows(out, "| Lightning module |")
    assert [r[0] for r in rows] == ["lightning"] * 2 + ["no_log"] * 2 + ["bare"] * 2
    assert "overhead per step" in out
    results = json.loads((tmp_path / "o.json").read_text())["results"]
    for clock in ("cpu", "wall"):
        assert len(results["lightning"][clock]["ratios"]) == 2
        assert all(r > 0 for r in results["lightning"][clock]["ratios"])


def test_bench_throughput(tmp_path: Path) -> None:
    out = run_script("bench_throughput.py", "--quick", "--json", str(tmp_path / "t.json"))
    assert_header(out, "bench_throughput.py")
    rows = table_rows(out, "| model | sampler |")
    assert [r[1] for r in rows] == ["ddpm", "ddim", "euler", "heun", "dpmpp_2m"]
    data = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [r["nfe"] for r in data] == [2, 2, 2, 3, 2]
    assert all(r["images_per_s"] > 0 for r in data)


def test_bench_gpu_dry_run_on_cpu(tmp_path: Path) -> None:
    out = run_script(
        "bench_gpu.py", "--device", "cpu", "--quick", "--json", str(tmp_path / "g.json")
    )
    assert "| images/s |" in out and "| MFU (peak 989 TFLOP/s) |" in out
    results = json.loads((tmp_path / "g.json").read_text())
    assert results["train"]["params"] == 649_329
    assert results["train"]["flops_per_step"] > 0
    assert results["sample"]["nfe"] == 3


def test_bench_gpu_needs_no_hydra_lightning_or_wandb() -> None:
    code = (
        "import runpy, sys; runpy.run_path('scripts/bench_gpu.py', run_name='bench_gpu'); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'hydra', 'omegaconf', 'lightning', 'pytorch_lightning', 'wandb', 'torch_fidelity', "
        "'torchmetrics', 'yaml', 'diffusers'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.parametrize("size", ["base", "tiny"])
def test_bench_gpu_presets_match_configs(size: str) -> None:
    bench = load_script("bench_gpu.py")
    cfg = yaml.safe_load((ROOT / "configs" / "model" / f"unet_{size}.yaml").read_text())
    cfg.pop("_target_")
    preset = dict(bench.PRESETS[size])
    assert preset.pop("in_channels") == {"base": 3, "tiny": 1}[size]
    assert preset.pop("image_size") == {"base": 32, "tiny": 8}[size]
    cfg.pop("in_channels"), cfg.pop("image_size")
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in preset.items()} == cfg
