"""The exact-posterior leaderboard and the peer benchmark (scripts/bench_posterior*.py).

The pieces are checked against closed forms (the fast denoiser against the general one, the
peers' adapters against the problem's own operator and denoiser, RePaint's known coordinates);
the scripts run in their ``--quick`` mode and their tables are read back. deepinv is optional:
its tests skip where it is not importable, and the peer script then says what to install.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
from pathlib import Path

import pytest
import torch

from difforge.benchmarks import posterior as bench
from difforge.benchmarks import posterior_peers as peers
from difforge.diffusion.gaussian_mixture import GaussianMixture, GaussianMixtureOracle
from difforge.posterior.samplers.registry import POSTERIORS
from test_bench_scripts import ROOT, assert_header, run_script, table_rows

needs_deepinv = pytest.mark.skipif(
    not peers.deepinv_available(), reason="deepinv is not importable (an optional peer)"
)


def mixture(d: int, std: float = 1.0, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    return GaussianMixture(
        torch.rand(5, generator=g) + 0.1,
        4 * torch.randn(5, d, generator=g, dtype=torch.float64),
        torch.full((5, d), std, dtype=torch.float64),
    )


def test_isotropic_denoiser_equals_the_general_one() -> None:
    mix = mixture(7, std=1.3)
    g = torch.Generator().manual_seed(1)
    x = 6 * torch.randn(64, 7, generator=g, dtype=torch.float64)
    sigma = torch.cat(
        [
            10 ** (4 * torch.rand(63, generator=g, dtype=torch.float64) - 2),
            torch.tensor([math.inf], dtype=torch.float64),
        ]
    )
    fast = bench.IsotropicMixtureDenoiser(mix)(x, sigma)
    torch.testing.assert_close(fast, GaussianMixtureOracle(mix)(x, sigma), rtol=1e-10, atol=1e-10)
    # A scalar sigma applies to every row; the input's shape and dtype come back.
    x32 = x.to(torch.float32).reshape(64, 1, 7)
    out = bench.IsotropicMixtureDenoiser(mix)(x32, 2.0)
    assert out.dtype == torch.float32 and out.shape == (64, 1, 7)


def test_isotropic_denoiser_refuses_unequal_stds() -> None:
    mix = GaussianMixture([1.0, 1.0], [[0.0, 0.0], [1.0, 1.0]], [[1.0, 1.0], [1.0, 2.0]])
    with pytest.raises(ValueError, match="shared standard deviation"):
        bench.IsotropicMixtureDenoiser(mix)


def test_problems_share_the_prior_and_measure_what_they_say() -> None:
    dense, masked = bench.cardoso(8, 2, seed=3), bench.masked(8, 2, seed=3)
    assert dense.operator.d_y == masked.operator.d_y == 2 and masked.operator.is_mask
    torch.testing.assert_close(dense.mixture.means, masked.mixture.means)
    torch.testing.assert_close(dense.x_true, masked.x_true)
    # The mask's measurement is the observed coordinates of the signal up to sigma_y noise.
    residual = masked.y - masked.x_true[:, masked.operator.mask]
    assert float(residual.abs().max()) < 6 * masked.sigma_y + 1e-12


def test_steps_fit_the_budget() -> None:
    for name, spec in POSTERIORS.items():
        options = {"num_particles": 4} if bench.is_smc(spec) else {}
        steps = bench.steps_for(name, 40, options)
        assert spec.nfe(steps, **options) <= 40 < spec.nfe(steps + 1, **options)


def test_repaint_keeps_the_observed_coordinates_and_counts_its_calls() -> None:
    pytest.importorskip("diffusers")
    problem = bench.PROBLEMS["mask_exact"](8, 4, 0)
    assert problem.sigma_y == 0 and problem.kind == "mask_exact"
    config = peers.PeerConfig("repaint", "diffusers", {"jump_length": 5, "jump_n_sample": 2}, True)
    samples, calls = peers.run_repaint(config, problem, 30, 16, seed=0)
    steps = peers.repaint_steps(30, 5, 2)
    assert calls == peers.repaint_nfe(steps, 5, 2) <= 30 < peers.repaint_nfe(steps + 1, 5, 2)
    # RePaint's last step pastes the measurement (abar = 1 there): exactly y where observed.
    observed = samples[:, problem.operator.mask]
    torch.testing.assert_close(observed, problem.y.expand(16, -1), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="mask"):
        peers.run_repaint(config, bench.cardoso(8, 4, seed=0), 30, 4, seed=0)


@needs_deepinv
def test_deepinv_physics_is_the_problem_operator() -> None:
    problem = bench.cardoso(8, 2, seed=1)
    A = problem.operator.matrix()
    physics = peers.decomposable_physics(A, 0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, 8, generator=g, dtype=torch.float64)
    y = torch.randn(5, 2, generator=g, dtype=torch.float64)
    torch.testing.assert_close(physics.A(x), x @ A.T)
    torch.testing.assert_close(physics.A_adjoint(y), y @ A)
    torch.testing.assert_close(physics.U(physics.U_adjoint(y)), y)  # DDRM's y_bar round trip


@needs_deepinv
def test_unit_range_denoiser_is_the_exact_one_in_deepinv_units() -> None:
    mix = mixture(6)
    counter = bench.CountingDenoiser(bench.IsotropicMixtureDenoiser(mix))
    wrapped = peers.UnitRangeDenoiser(counter, scale=24.0)
    g = torch.Generator().manual_seed(0)
    x = 5 * torch.randn(9, 6, generator=g, dtype=torch.float64)
    out = wrapped(x / 24 + 0.5, 0.1)  # deepinv passes a float, a 0-d or an (N,) tensor
    expected = GaussianMixtureOracle(mix)(x, torch.full((9,), 2.4, dtype=torch.float64))
    torch.testing.assert_close((out - 0.5) * 24, expected)
    assert counter.calls == 1 and counter.rows == 9


def check_leaderboard(out: str, results: dict) -> None:
    methods = [n for n, s in POSTERIORS.items() if not s.needs_mask]
    rows = table_rows(out, "| method | NFE | d_x=8, d_y=1 |")
    assert rows[0][0] == "exact samples (floor)"
    # Every registered method, none hard-coded; SMC at the leaderboard's particle count.
    assert sorted((r[0].split(" (")[0], r[1]) for r in rows[1:]) == sorted(
        (m, str(nfe)) for m in methods for nfe in (10, 20)
    )
    floor = float(rows[0][2].split(" ± ")[0])
    assert 0 < floor < 1
    for r in rows[1:]:
        cell = r[2].strip("*")
        assert cell == "fails" or float(cell.split(" ± ")[0]) >= 0
    for row in results["rows"]:
        if row["method"] != "exact" and "error" not in row:
            assert 0 < row["nfe_used"] <= row["nfe"] and 0 <= row["weight_tv"] <= 1


@pytest.mark.slow
def test_bench_posterior_quick(tmp_path: Path) -> None:
    out = run_script(
        "bench_posterior.py",
        "--quick",
        "--json",
        str(tmp_path / "p.json"),
        "--markdown",
        str(tmp_path / "p.md"),
    )
    assert_header(out, "bench_posterior.py")
    results = json.loads((tmp_path / "p.json").read_text())
    check_leaderboard(out, results)
    assert (tmp_path / "p.md").read_text().strip() in out
    smc = [n for n, s in POSTERIORS.items() if bench.is_smc(s)]
    if smc:
        sweep = table_rows(out, "| d_x | d_y | particles |")
        assert [r[2] for r in sweep] == ["1", "4"]


def run_peers(tmp_path: Path, *args: str, deepinv: bool) -> tuple[str, dict]:
    """The peer script; without ``deepinv`` its directory is left off the import path."""
    path = os.environ.get("PYTHONPATH", "")
    if not deepinv:
        keep = [p for p in path.split(os.pathsep) if p and not (Path(p) / "deepinv").is_dir()]
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), *keep])
    try:
        out = run_script(
            "bench_posterior_peers.py", "--quick", "--json", str(tmp_path / "q.json"), *args
        )
    finally:
        os.environ["PYTHONPATH"] = path
    return out, json.loads((tmp_path / "q.json").read_text())


@pytest.mark.slow
def test_bench_posterior_peers_without_deepinv_says_what_to_install(tmp_path: Path) -> None:
    pytest.importorskip("diffusers")
    spec = importlib.util.find_spec("deepinv")
    if spec is not None and "site-packages" in str(spec.origin):
        pytest.skip("deepinv is installed in the environment itself")
    out, results = run_peers(tmp_path, deepinv=False)
    assert out.splitlines()[0] == peers.INSTALL_DEEPINV + "; running diffusers' RePaint alone"
    assert {r["side"] for r in results["rows"]} == {"exact", "difforge", "diffusers"}
    headline = table_rows(out, "| problem | NFE | d_x | d_y | difforge best |")
    assert [r[0] for r in headline] == ["mask_exact"]  # RePaint runs on masks only


@pytest.mark.slow
@needs_deepinv
def test_bench_posterior_peers_quick(tmp_path: Path) -> None:
    out, results = run_peers(tmp_path, deepinv=True)
    assert_header(
        out.split("\n", 1)[-1] if not out.startswith("machine") else out, "bench_posterior_peers.py"
    )
    assert {r["side"] for r in results["rows"]} == {"exact", "difforge", "deepinv", "diffusers"}
    headline = table_rows(out, "| problem | NFE | d_x | d_y | difforge best |")
    assert sorted(r[0] for r in headline) == ["cardoso", "mask_exact"]
    for r in headline:
        ours, theirs = float(r[5].split(" ± ")[0]), float(r[7].split(" ± ")[0])
        assert float(r[8].strip("*")) == pytest.approx(ours / theirs, abs=0.01)
    counterpart = table_rows(out, "| method | problem | NFE |")
    assert {r[0] for r in counterpart} <= set(peers.COUNTERPARTS)
    for row in results["rows"]:
        if row["side"] in ("deepinv", "diffusers") and "error" not in row:
            assert 0 < row["nfe_used"] <= row["nfe"]


@pytest.mark.slow
def test_bench_posterior_one_method_without_the_sweep(tmp_path: Path) -> None:
    """``--methods ddrm --smc none``: DDRM's leaderboard rows alone, no particle sweep."""
    out = run_script(
        "bench_posterior.py",
        "--quick",
        "--methods",
        "ddrm",
        "--smc",
        "none",
        "--json",
        str(tmp_path / "p.json"),
    )
    results = json.loads((tmp_path / "p.json").read_text())
    assert {r["method"] for r in results["rows"]} == {"exact", "ddrm"}
    assert results["smc_rows"] == [] and "particle" not in out


@pytest.mark.slow
@needs_deepinv
def test_bench_posterior_peers_runs_the_chosen_algorithm_alone(tmp_path: Path) -> None:
    """``--methods ddrm --peers ddrm``: difforge's DDRM and deepinv's DDRM, nothing else."""
    _, results = run_peers(tmp_path, "--methods", "ddrm", "--peers", "ddrm", deepinv=True)
    runs = {(r["side"], r["family"]) for r in results["rows"] if r["side"] != "exact"}
    assert runs == {("difforge", "ddrm"), ("deepinv", "ddrm")}
