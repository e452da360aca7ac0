"""Every registered measurement operator, found in the registry: its adjoint, its SVD against its
dense matrix, its pseudo-inverse, its config; and the one-line errors for what does not fit."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from difforge.posterior.operators.base import LinearOperator
from difforge.posterior.operators.registry import (
    OPERATORS,
    build_operator,
    operator_from_config,
    operator_options,
)
from helpers import ROOT

CONFIGS = ROOT / "configs" / "operator"
# Small shapes to try every operator on: an RGB image, a grey non-square image, a vector.
SHAPES = [(3, 4, 4), (1, 4, 6), (6,)]


def required_options(name: str, x_shape: tuple[int, ...]) -> dict:
    """Values for the options an operator cannot default (a new required option must be added
    here, or the test below fails)."""
    values = {
        "d_y": 3,
        "A": torch.randn(3, math.prod(x_shape), generator=torch.Generator().manual_seed(1)),
    }
    options = operator_options(name)
    return {k: values[k] for k, v in options.items() if v is inspect.Parameter.empty}


def fitting_cases() -> list[tuple[str, tuple[int, ...]]]:
    """Every (operator, shape) pair of SHAPES that the operator accepts with its defaults."""
    cases = []
    for name in OPERATORS:
        for shape in SHAPES:
            try:
                build_operator(name, shape, **required_options(name, shape))
            except ValueError:
                continue
            cases.append((name, shape))
    return cases


CASES = fitting_cases()


def test_every_operator_fits_some_small_shape():
    assert {name for name, _ in CASES} == set(OPERATORS)


def build(name: str, shape: tuple[int, ...]) -> LinearOperator:
    return build_operator(name, shape, **required_options(name, shape))


def dense(fn, n: int, shape: tuple[int, ...]) -> torch.Tensor:
    """The matrix whose row i is ``fn(e_i)`` flattened."""
    eye = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
    return fn(eye).reshape(n, -1)


@pytest.mark.parametrize("name,shape", CASES)
def test_adjoint_identity(name, shape):
    """<A x, y> = <x, A^T y> in float64."""
    op = build(name, shape)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5, *shape, dtype=torch.float64, generator=g)
    y = torch.randn(5, op.d_y, dtype=torch.float64, generator=g)
    Ax, ATy = op.forward(x), op.adjoint(y)
    assert Ax.shape == (5, op.d_y) and ATy.shape == (5, *shape)
    torch.testing.assert_close((Ax * y).sum(1), (x * ATy).flatten(1).sum(1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name,shape", CASES)
def test_svd_reconstructs_the_matrix(name, shape):
    """U diag(s) V^T = A, with U and V orthogonal, s >= 0 decreasing, and V, V^T (U, U^T)
    transposes of one another."""
    op = build(name, shape)
    A = op.matrix()
    assert A.shape == (op.d_y, op.d_x)
    svd = op.svd()
    r = min(op.d_x, op.d_y)
    assert svd.s.shape == (r,) and (svd.s >= 0).all()
    assert (svd.s[1:] <= svd.s[:-1]).all()
    V = dense(svd.Vt, op.d_x, shape)  # row j: V^T e_j, i.e. V's row j
    U = dense(svd.Ut, op.d_y, (op.d_y,))
    eye_x, eye_y = torch.eye(op.d_x, dtype=torch.float64), torch.eye(op.d_y, dtype=torch.float64)
    torch.testing.assert_close(V.T @ V, eye_x, rtol=0, atol=1e-12)
    torch.testing.assert_close(U.T @ U, eye_y, rtol=0, atol=1e-12)
    torch.testing.assert_close(U[:, :r] @ torch.diag(svd.s) @ V[:, :r].T, A, rtol=0, atol=1e-12)
    torch.testing.assert_close(dense(svd.V, op.d_x, (op.d_x,)), V.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(dense(svd.U, op.d_y, (op.d_y,)), U.T, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name,shape", CASES)
def test_pinv_is_the_moore_penrose_inverse(name, shape):
    """Every operator here has full row rank: A A^+ y = y, and A^+ equals the dense pinv."""
    op = build(name, shape)
    A = op.matrix()
    assert torch.linalg.matrix_rank(A) == op.d_y
    y = torch.randn(4, op.d_y, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    x = op.pinv(y)
    assert x.shape == (4, *shape)
    torch.testing.assert_close(op.forward(x), y, rtol=0, atol=1e-9)
    torch.testing.assert_close(x.flatten(1), y @ torch.linalg.pinv(A).T, rtol=0, atol=1e-9)


@pytest.mark.parametrize("name,shape", CASES)
def test_float32_in_float32_out(name, shape):
    op = build(name, shape)
    x = torch.randn(2, *shape, generator=torch.Generator().manual_seed(3))
    y = op.forward(x)
    assert y.dtype == torch.float32 and op.adjoint(y).dtype == torch.float32
    assert op.svd().Vt(x).dtype == torch.float32 and op.pinv(y).dtype == torch.float32
    torch.testing.assert_close(y.double(), op.forward(x.double()), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name,shape", CASES)
def test_measurement_noise(name, shape):
    op = build(name, shape)
    x = torch.randn(3, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(op.measure(x, 0.0), op.forward(x), rtol=0, atol=0)
    noisy = op.measure(x, 0.1, torch.Generator().manual_seed(5))
    noise = torch.randn(
        noisy.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(5)
    )
    torch.testing.assert_close(noisy, op.forward(x) + 0.1 * noise, rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match=r"^sigma_y must be >= 0, got -0\.1$"):
        op.measure(x, -0.1)


@pytest.mark.parametrize("name", sorted(OPERATORS))
def test_every_operator_has_a_config_and_it_builds(name):
    """configs/operator/<name>.yaml names the builder; instantiating it (with x_shape) and
    operator_from_config give the operator of that name."""
    cfg = OmegaConf.load(CONFIGS / f"{name}.yaml")
    builder = OPERATORS[name]
    assert cfg._target_ == f"{builder.__module__}.{builder.__name__}"
    assert set(cfg) - {"_target_", "_convert_"} == set(operator_options(name))
    shape = next(s for n, s in CASES if n == name)
    extra = {k: v for k, v in required_options(name, shape).items() if cfg.get(k) is None}
    op = instantiate(cfg, x_shape=shape, **extra)
    assert isinstance(op, LinearOperator) and op.name == name
    plain = {**OmegaConf.to_container(cfg), **{k: v.tolist() for k, v in extra.items()}}
    assert operator_from_config(plain, shape).matrix().equal(op.matrix())


def test_every_operator_config_is_registered():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(OPERATORS)


@pytest.mark.parametrize(
    "name,options",
    [("super_resolution", {"factor": 4}), ("blur", {}), ("colorize", {}), ("inpaint_box", {})],
)
def test_closed_forms_need_no_dense_matrix(name, options):
    """On a 3x64x64 image (d_x above the dense limit) the SVD and pinv are closed-form:
    V^T V = I on random vectors, A A^+ y = y, and A = U diag(s) V^T on random x."""
    op = build_operator(name, (3, 64, 64), **options)
    with pytest.raises(ValueError, match="too large for a dense matrix"):
        op.matrix()
    svd = op.svd()
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64, generator=g)
    torch.testing.assert_close(svd.V(svd.Vt(x)), x, rtol=0, atol=1e-10)
    coeffs = svd.Vt(x)[:, : svd.s.numel()] * svd.s
    torch.testing.assert_close(svd.U(coeffs), op.forward(x), rtol=0, atol=1e-10)
    y = torch.randn(2, op.d_y, dtype=torch.float64, generator=g)
    torch.testing.assert_close(op.forward(op.pinv(y)), y, rtol=0, atol=1e-8)


def test_closed_forms():
    """The singular values the papers give: pooling by f is 1/f, colourisation 1/sqrt(3),
    masks 1; a blur keeps constants away from the border and is symmetric."""
    sr = build_operator("super_resolution", (1, 8, 8), factor=4)
    assert sr.d_y == 4
    torch.testing.assert_close(sr.svd().s, torch.full((4,), 0.25, dtype=torch.float64))
    x = torch.arange(64.0, dtype=torch.float64).reshape(1, 1, 8, 8)
    torch.testing.assert_close(sr(x)[0, 0], x[0, 0, :4, :4].mean())
    gray = build_operator("colorize", (3, 2, 2))
    torch.testing.assert_close(gray.svd().s, torch.full((4,), 3**-0.5, dtype=torch.float64))
    box = build_operator("inpaint_box", (2, 8, 8), size=0.5)
    assert box.d_y == 2 * (64 - 16) and not box.mask[:, 2:6, 2:6].any()
    half = build_operator("inpaint_half", (1, 4, 4), side="top")
    assert half.mask[0, 2:].all() and not half.mask[0, :2].any()
    vec = build_operator("inpaint_half", (5,), side="left")
    assert vec.mask.tolist() == [False, False, True, True, True]
    rnd = build_operator("inpaint_random", (1, 64, 64), p=0.7, seed=0)
    assert abs(rnd.d_y / 4096 - 0.3) < 0.03
    blur = build_operator("blur", (1, 9, 9), kernel_size=3, std=1.0)
    ones = torch.ones(1, 1, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(blur(ones).reshape(9, 9)[1:-1, 1:-1], torch.ones(7, 7).double())
    torch.testing.assert_close(blur.matrix(), blur.matrix().T)
    proj = build_operator("random_projection", (4,), d_y=2, spectrum="cardoso")
    assert ((proj.svd().s > 0) & (proj.svd().s < 1)).all()
    assert build_operator("denoise", (2, 3)).matrix().equal(torch.eye(6, dtype=torch.float64))


@pytest.mark.parametrize(
    "name,shape,options,message",
    [
        ("colorize", (1, 4, 4), {}, r"^operator colorize needs RGB images \(3 channels\), got 1"),
        ("colorize", (6,), {}, r"^operator colorize needs images \(x_shape \(C, H, W\)\), got"),
        ("super_resolution", (1, 6, 6), {"factor": 4}, r"^operator\.factor=4 must divide"),
        (
            "super_resolution",
            (1, 6, 6),
            {"factor": 1},
            r"^operator\.factor must be an integer >= 2",
        ),
        ("super_resolution", (8,), {}, r"^operator super_resolution needs images"),
        ("blur", (1, 6, 6), {"kernel_size": 4}, r"^operator\.kernel_size must be odd, got 4$"),
        ("blur", (1, 6, 6), {"std": 0.0}, r"^operator\.std must be > 0, got 0\.0$"),
        ("inpaint_box", (1, 6, 6), {"size": 1.0}, r"^operator\.size must be in \(0, 1\)"),
        ("inpaint_box", (1, 6, 6), {"size": 0.05}, r"^operator\.size=0\.05 hides no pixel"),
        (
            "inpaint_box",
            (1, 1, 1),
            {"size": 0.9},
            r"^operator inpaint_box observes nothing on x_shape \(1, 1, 1\): give a smaller operator\.size$",
        ),
        ("inpaint_half", (1, 4, 4), {"side": "middle"}, r"^operator\.side must be one of left"),
        ("inpaint_half", (4,), {"side": "top"}, r"^operator\.side must be one of left, right,"),
        (
            "inpaint_random",
            (1, 2, 2),
            {"p": 0.99999},
            r"^operator inpaint_random observes nothing .*: operator\.p=0\.99999 hid every pixel",
        ),
        ("inpaint_random", (1, 2, 2), {"p": 1.0}, r"^operator\.p must be in \[0, 1\)"),
        (
            "random_projection",
            (4,),
            {"d_y": 5},
            r"^operator\.d_y must be an integer in \[1, d_x=4\]",
        ),
        ("random_projection", (4,), {"d_y": 0}, r"^operator\.d_y must be an integer >= 1, got 0$"),
        ("random_projection", (3, 64, 64), {"d_y": 2}, r"needs d_x <= 4096"),
        ("random_projection", (4,), {"d_y": 2, "spectrum": "x"}, r"^operator\.spectrum must be"),
        ("matrix", (4,), {"A": None}, r"^operator matrix needs operator\.A"),
        ("matrix", (4,), {"A": [[1.0, 2.0]]}, r"has 2 columns for x_shape \(4,\)"),
        (
            "denoise",
            (4,),
            {"size": 1},
            r"^operator denoise has no option 'size' \(its options: none\)$",
        ),
        ("random_projection", (4,), {}, r"^operator random_projection needs operator\.d_y$"),
        ("deblur", (4,), {}, r"^operator must be one of inpaint_box, .*, got 'deblur'$"),
    ],
)
def test_errors_are_one_line(name, shape, options, message):
    with pytest.raises(ValueError, match=message) as error:
        build_operator(name, shape, **options)
    assert "\n" not in str(error.value)


def test_the_posterior_math_imports_torch_only():
    """Operators, the exact posterior, metrics and the test bed load without Lightning or Hydra
    (like difforge.diffusion)."""
    code = (
        "import sys; import difforge.posterior.operators.registry, difforge.posterior.exact, "
        "difforge.posterior.metrics, difforge.posterior.testbed; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'hydra', 'omegaconf', 'lightning', 'pytorch_lightning', 'torchvision', 'diffusers'}))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]"
