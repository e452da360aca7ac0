"""diffusers pipeline folders as difforge models: the same images as diffusers from the same draws,
every sampler on them, the command lines, and one-line errors for folders difforge cannot use."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from difforge.errors import DifforgeError
from difforge.interop.diffusers_pipeline import load_pipeline, read_pipeline
from diffusers_fixtures import train_pipeline
from helpers import assert_clean_error, assert_ok, run_cli

NUM_IMAGES = 16


@pytest.fixture(scope="module")
def pipelines(tmp_path_factory) -> dict[tuple[str, bool], Path]:
    """Trained pipelines per (prediction_type, clip_sample)."""
    root = tmp_path_factory.mktemp("pipelines")
    return {
        (prediction, clip): train_pipeline(
            root / f"{prediction}-{clip}", prediction, clip_sample=clip
        )
        for prediction in ("epsilon", "v_prediction")
        for clip in (False, True)
    }


# ----------------------------------------------------------------------------- the mapping
@pytest.mark.parametrize(
    ("beta_schedule", "prediction", "parameterization"),
    [
        ("linear", "epsilon", "eps"),
        ("scaled_linear", "v_prediction", "v"),
        ("squaredcos_cap_v2", "sample", "x0"),
    ],
)
def test_schedule_and_parameterization_match_the_scheduler(
    tmp_path, beta_schedule, prediction, parameterization
):
    from diffusers import DDPMScheduler

    path = train_pipeline(
        tmp_path / "p", prediction, steps=1, beta_schedule=beta_schedule, num_train_timesteps=200
    )
    spec = read_pipeline(path)
    scheduler = DDPMScheduler.from_pretrained(str(path / "scheduler"))
    assert spec.parameterization == parameterization and spec.data_shape == (1, 8, 8)
    assert spec.schedule.num_timesteps == 200
    # diffusers computes in float32: its betas agree to a few float32 ulps; alphas_cumprod to the
    # float32 rounding of 1 - beta, amplified up to 1/(1 - 0.999) where the cosine caps beta.
    assert torch.allclose(spec.schedule.betas.float(), scheduler.betas, rtol=1e-6, atol=0)
    theirs = scheduler.alphas_cumprod.double()
    assert torch.allclose(spec.schedule.alphas_cumprod, theirs, rtol=1e-4, atol=0)
    assert torch.allclose(spec.schedule.alphas_cumprod[:-20], theirs[:-20], rtol=2e-6, atol=0)


def test_denoiser_gives_the_schedulers_x0_at_every_table_timestep(pipelines):
    """difforge's D(x, sigma_t) is diffusers' pred_original_sample for the same latent z_t."""
    from diffusers import DDIMScheduler, UNet2DModel

    for prediction in ("epsilon", "v_prediction"):
        path = pipelines[(prediction, False)]
        scheduler = DDIMScheduler.from_pretrained(str(path / "scheduler"))
        scheduler.set_timesteps(scheduler.config.num_train_timesteps)
        unet = UNet2DModel.from_pretrained(str(path / "unet"), low_cpu_mem_usage=False)
        module = load_pipeline(path, None)
        z = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(1))
        for t in (0, 17, 500, 999):
            theirs = scheduler.step(unet(z, t).sample, t, z).pred_original_sample
            sigma = module.schedule.sigmas[t]
            ours = module.denoiser(
                z * (1 + sigma**2).sqrt().float(), torch.full((4,), float(sigma))
            )
            assert torch.allclose(ours, theirs, atol=2e-5 * max(1.0, float(sigma))), (prediction, t)


# ------------------------------------------------------------- the same images as diffusers
DDIM_STEPS = 10


def diffusers_ddim(
    path: Path, clip: bool, spacing: str | None = "trailing"
) -> tuple[np.ndarray, torch.Tensor]:
    """diffusers' DDIMPipeline with ``timestep_spacing=spacing`` (None: the folder's own):
    uint8 images (N, H, W, C) rounded as its ``numpy_to_pil`` does, and the draws it started
    from (its ``randn_tensor`` on the CPU)."""
    from diffusers import DDIMPipeline, DDIMScheduler

    pipe = DDIMPipeline.from_pretrained(str(path))
    if spacing is not None:
        pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, timestep_spacing=spacing)
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=NUM_IMAGES,
        generator=torch.Generator().manual_seed(0),
        eta=0.0,
        num_inference_steps=DDIM_STEPS,
        output_type="np",
        # difforge re-derives eps from the clipped x0 (see the loader's docstring).
        use_clipped_model_output=clip,
    ).images
    draws = torch.randn((NUM_IMAGES, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    return (images * 255).round().astype(np.uint8), draws


@pytest.mark.parametrize("grid", ["trailing", "leading"])
@pytest.mark.parametrize("clip", [False, True], ids=["no-clip", "clip"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddim_gives_the_images_of_diffusers(pipelines, prediction, clip, grid):
    """The same draws through diffusers' DDIM and difforge's on the same grid (``leading`` is
    diffusers' default spacing). diffusers' DDIM steps from t to t - T // N, which is its next
    timestep on these grids when N divides T (here T = 1000, N = 10)."""
    from difforge.diffusion.samplers import Sampler
    from difforge.plotting import to_uint8_images

    path = pipelines[(prediction, clip)]
    theirs, draws = diffusers_ddim(path, clip, grid)
    model = load_pipeline(path, Sampler("ddim", DDIM_STEPS, grid=grid))
    ours = to_uint8_images(model.generate(NUM_IMAGES, noise=draws, batch_size=NUM_IMAGES).samples)
    difference = np.abs(ours.astype(int) - theirs.astype(int))
    print(f"ddim {grid} {prediction} clip={clip}: max uint8 difference {difference.max()}")
    assert difference.max() <= 1
    assert theirs.std() > 10  # not a blank image: the comparison has content


def test_zero_terminal_snr_pipeline_gives_the_images_of_diffusers(tmp_path):
    """rescale_betas_zero_snr: the trailing grid starts at sigma = inf (abar_T = 0), where both
    take x0 = -v from the pure noise."""
    from difforge.diffusion.samplers import Sampler
    from difforge.plotting import to_uint8_images

    path = train_pipeline(tmp_path / "zsnr", "v_prediction", rescale_betas_zero_snr=True)
    assert read_pipeline(path).schedule.sigma_max == float("inf")
    theirs, draws = diffusers_ddim(path, True)
    model = load_pipeline(path, Sampler("ddim", DDIM_STEPS, grid="trailing"))
    ours = to_uint8_images(model.generate(NUM_IMAGES, noise=draws, batch_size=NUM_IMAGES).samples)
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


@pytest.mark.parametrize("clip", [False, True], ids=["no-clip", "clip"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_ddpm_trailing_gives_the_images_of_diffusers_from_the_same_generator(
    pipelines, prediction, clip
):
    """Ancestral sampling: diffusers' DDPMPipeline and difforge's ddpm draw the start and then one
    normal per step from the generator in the same order, so one seed gives the same images;
    diffusers' DDPM step puts the clipped x0 in the posterior mean, as difforge does."""
    from diffusers import DDPMPipeline, DDPMScheduler

    from difforge.diffusion.samplers import Sampler
    from difforge.plotting import to_uint8_images

    path = pipelines[(prediction, clip)]
    pipe = DDPMPipeline.from_pretrained(str(path))
    pipe.scheduler = DDPMScheduler.from_config(pipe.scheduler.config, timestep_spacing="trailing")
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe(
        batch_size=NUM_IMAGES,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=DDIM_STEPS,
        output_type="np",
    ).images
    model = load_pipeline(path, Sampler("ddpm", DDIM_STEPS, grid="trailing"))
    ours = model.generate(
        NUM_IMAGES, generator=torch.Generator().manual_seed(0), batch_size=NUM_IMAGES
    ).samples
    difference = np.abs(to_uint8_images(ours).astype(int) - (theirs * 255).round().astype(int))
    print(f"ddpm {prediction} clip={clip}: max uint8 difference {difference.max()}")
    assert difference.max() <= 1


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_every_sampler_gives_finite_samples(pipelines, prediction):
    from difforge.diffusion.samplers import SAMPLERS, Sampler

    model = load_pipeline(pipelines[(prediction, True)], None)
    for name in SAMPLERS:
        samples = model.generate(
            4,
            sampler=Sampler(name, 4),
            generator=torch.Generator().manual_seed(0),
            batch_size=4,
        ).samples
        assert samples.shape == (4, 1, 8, 8) and torch.isfinite(samples).all(), name


@pytest.mark.slow
def test_sample_command_with_pretrained_and_noise_gives_the_images_of_diffusers(
    pipelines, tmp_path
):
    path = pipelines[("v_prediction", True)]
    theirs, draws = diffusers_ddim(path, True)
    np.save(tmp_path / "draws.npy", draws.numpy())
    result = run_cli(
        "sample",
        f"pretrained={path}",
        f"noise={tmp_path / 'draws.npy'}",
        f"num_samples={NUM_IMAGES}",
        "sampler=ddim",
        f"sampler.steps={DDIM_STEPS}",
        "sampler.grid=trailing",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    assert_ok(result)
    ours = np.load(tmp_path / "out" / "samples.npz")["arr_0"]
    assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1
    bad = run_cli(
        "sample",
        f"pretrained={path}",
        f"noise={tmp_path / 'draws.npy'}",
        "num_samples=3",
        f"hydra.run.dir={tmp_path / 'bad'}",
    )
    assert_clean_error(bad, "has shape (16, 1, 8, 8), expected (3, 1, 8, 8)")


@pytest.mark.slow
@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_sample_command_takes_the_folders_timestep_spacing(pipelines, tmp_path, spacing):
    """Before: sample.py pretrained=... sampler=ddim without sampler.grid ran difforge's own
    default grid whatever the folder's ``timestep_spacing`` (diffusers' default ``leading``), and
    its images differed from diffusers' DDIMPipeline on the same draws. Now the folder's spacing
    is the grid of ddpm and ddim when sampler.grid is unset."""
    path = tmp_path / "pipe"
    shutil.copytree(pipelines[("epsilon", False)], path)
    _edit_json(path / "scheduler" / "scheduler_config.json", timestep_spacing=spacing)
    theirs, draws = diffusers_ddim(path, False, None)
    np.save(tmp_path / "draws.npy", draws.numpy())
    result = run_cli(
        "sample",
        f"pretrained={path}",
        f"noise={tmp_path / 'draws.npy'}",
        f"num_samples={NUM_IMAGES}",
        "sampler=ddim",
        f"sampler.steps={DDIM_STEPS}",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'out'}",
    )
    assert_ok(result)
    ours = np.load(tmp_path / "out" / "samples.npz")["arr_0"]
    difference = np.abs(ours.astype(int) - theirs.astype(int)).max()
    print(f"sample.py on timestep_spacing={spacing}: max uint8 difference {difference}")
    assert difference <= 1


@pytest.mark.slow
def test_eval_command_runs_the_protocol_on_a_pretrained_folder(pipelines, tmp_path):
    """eval.py pretrained=... metrics.fid_ref=... --seeds 2: FID, IS, precision/recall for each
    seed, their min and mean, with the seeds, the count and the reference written down."""
    from diffusers_fixtures import digits_images
    from helpers import random_inception_file
    from test_metrics_protocol import write_guided_diffusion_batch

    images = ((digits_images(12) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)
    features = np.random.default_rng(0).normal(size=(12, 2048))  # statistics of another network
    reference = write_guided_diffusion_batch(tmp_path / "ref.npz", images.numpy(), features)
    weights = random_inception_file(tmp_path / "inception.pth")
    result = run_cli(
        "eval",
        f"pretrained={pipelines[('epsilon', True)]}",
        f"metrics.fid_ref={reference}",
        f"metrics.inception_weights={weights}",
        "num_samples=10",
        "batch_size=5",
        "sampler=ddim",
        "sampler.steps=3",
        "device=cpu",
        f"hydra.run.dir={tmp_path / 'out'}",
        "--seeds",
        "2",
    )
    assert_ok(result)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["seeds"] == [0, 1] and metrics["num_samples"] == 10
    assert (
        metrics["reference"] == str(reference) and metrics["reference_layout"] == "guided-diffusion"
    )
    assert [run["seed"] for run in metrics["per_seed"]] == [0, 1]
    for name in ("fid", "inception_score", "precision", "recall"):
        values = [run[name] for run in metrics["per_seed"]]
        assert metrics[f"{name}_min"] == min(values)
        assert metrics[f"{name}_mean"] == pytest.approx(sum(values) / 2)
    assert metrics["sampler"] == "ddim" and metrics["nfe"] == 3


# ------------------------------------------------------------------------------ bad folders
def _edit_json(path: Path, **changes) -> None:
    config = json.loads(path.read_text())
    config.update(changes)
    path.write_text(json.dumps(config))


@pytest.fixture()
def folder(pipelines, tmp_path) -> Path:
    copy = tmp_path / "pipe"
    shutil.copytree(pipelines[("epsilon", True)], copy)
    return copy


def test_not_a_pipeline_folder(tmp_path):
    with pytest.raises(DifforgeError, match="not a directory"):
        read_pipeline(tmp_path / "none")
    with pytest.raises(DifforgeError, match=r"model_index\.json is missing"):
        read_pipeline(tmp_path)


@pytest.mark.parametrize(
    ("file", "changes", "fragment"),
    [
        (
            "model_index.json",
            {"unet": ["diffusers", "UNet2DConditionModel"]},
            "unet is a UNet2DConditionModel",
        ),
        (
            "model_index.json",
            {"scheduler": ["diffusers", "EulerDiscreteScheduler"]},
            "scheduler is a EulerDiscreteScheduler",
        ),
        ("unet/config.json", {"time_embedding_type": "fourier"}, "time_embedding_type='fourier'"),
        ("unet/config.json", {"out_channels": 2}, "out_channels=2"),
        (
            "scheduler/scheduler_config.json",
            {"prediction_type": "score"},
            "prediction_type='score'",
        ),
        (
            "scheduler/scheduler_config.json",
            {"beta_schedule": "sigmoid"},
            "beta_schedule='sigmoid'",
        ),
        (
            "scheduler/scheduler_config.json",
            {"variance_type": "learned_range"},
            "variance_type='learned_range'",
        ),
        ("scheduler/scheduler_config.json", {"thresholding": True}, "thresholding=true"),
        (
            "scheduler/scheduler_config.json",
            {"rescale_betas_zero_snr": True},
            "rescale_betas_zero_snr=true with prediction_type='epsilon'",
        ),
        (
            "scheduler/scheduler_config.json",
            {"trained_betas": [0.5] * 1000},
            "trained_betas gives another schedule than beta_schedule='linear'",
        ),
        (
            "scheduler/scheduler_config.json",
            {"trained_betas": [1e-4] * 10},
            "trained_betas has 10 entries but num_train_timesteps=1000",
        ),
    ],
)
def test_folders_difforge_cannot_use_are_one_line_errors(folder, file, changes, fragment):
    _edit_json(folder / file, **changes)
    with pytest.raises(DifforgeError) as error:
        read_pipeline(folder)
    message = str(error.value)
    assert fragment in message and str(folder / file) in message and "\n" not in message


def test_a_scheduler_claiming_another_beta_schedule_is_refused(folder):
    # trained_betas of the cosine schedule under a config that claims "linear".
    from difforge.diffusion.schedules import CosineSchedule

    _edit_json(
        folder / "scheduler/scheduler_config.json",
        trained_betas=CosineSchedule(1000).betas.tolist(),
        beta_schedule="linear",
    )
    with pytest.raises(DifforgeError, match=r"alphas_cumprod\[\d+\] is"):
        read_pipeline(folder)


def test_pickled_weights_are_refused(folder):
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    torch.save({}, folder / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(DifforgeError, match=r"no \.safetensors weights"):
        load_pipeline(folder, None)


def test_class_conditional_unet_takes_the_labels(tmp_path):
    from diffusers import DDPMPipeline, DDPMScheduler

    from difforge.diffusion.samplers import Sampler
    from diffusers_fixtures import tiny_unet

    DDPMPipeline(unet=tiny_unet(num_classes=3), scheduler=DDPMScheduler()).save_pretrained(
        str(tmp_path)
    )
    model = load_pipeline(tmp_path, Sampler("ddim", 3))
    assert model.num_classes == 3
    draws = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    zero, two = (
        model.generate(2, class_labels=torch.full((2,), k), noise=draws).samples for k in (0, 2)
    )
    assert torch.isfinite(zero).all() and not torch.equal(zero, two)


@pytest.mark.slow
def test_bad_pretrained_folder_on_the_command_line(tmp_path):
    assert_clean_error(
        run_cli("sample", f"pretrained={tmp_path}", f"hydra.run.dir={tmp_path}/out"),
        "model_index.json is missing",
    )
    assert_clean_error(
        run_cli("eval", f"pretrained={tmp_path}", f"hydra.run.dir={tmp_path}/out"),
        "give metrics.fid_ref=",
    )


def test_a_pipelines_settings_fill_only_what_the_user_left_unset(pipelines):
    from dataclasses import replace

    from difforge.diffusion.samplers import Sampler
    from difforge.interop.diffusers_pipeline import pipeline_sampler

    spec = replace(
        read_pipeline(pipelines[("epsilon", False)]), variance="large", timestep_spacing="trailing"
    )
    filled = pipeline_sampler(Sampler("ddpm", 10), spec)
    assert filled.options["variance"] == "large" and filled.final_sigma == "zero"
    assert filled.grid == "trailing"
    kept = pipeline_sampler(
        Sampler("ddpm", 10, grid="leading", final_sigma="min", variance="small"), spec
    )
    assert kept.options["variance"] == "small" and kept.final_sigma == "min"
    assert kept.grid == "leading"
    assert pipeline_sampler(Sampler("ddim", 10), spec).grid == "trailing"
    euler = Sampler("euler", 10)
    assert pipeline_sampler(euler, spec) is euler


# ------------------------------------------------- every field: reproduced or refused, never dropped
def diffusers_ddpm(path: Path) -> np.ndarray:
    """diffusers' DDPMPipeline on the folder as saved: uint8 images from generator seed 0."""
    from diffusers import DDPMPipeline

    pipe = DDPMPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=NUM_IMAGES,
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=DDIM_STEPS,
        output_type="np",
    ).images
    return (images * 255).round().astype(np.uint8)


def ours(path: Path, algorithm: str, draws: torch.Tensor | None = None) -> np.ndarray:
    """difforge's ``algorithm`` on the folder with every setting left to it (grid unset)."""
    from difforge.diffusion.samplers import Sampler
    from difforge.plotting import to_uint8_images

    model = load_pipeline(path, Sampler(algorithm, DDIM_STEPS))
    generator = torch.Generator().manual_seed(0)
    return to_uint8_images(
        model.generate(NUM_IMAGES, noise=draws, generator=generator, batch_size=NUM_IMAGES).samples
    )


SAME = "same images"
# Per field of the scheduler configs: (value, other changes it needs, what ddpm and ddim must
# give): SAME (the images of diffusers' DDPMPipeline / DDIMPipeline on the same draws), the
# fragment of the one-line refusal, or None where the algorithm does not read the field (a
# DDIMScheduler field under DDPMPipeline). The base folder: an eps UNet, DDPMScheduler defaults
# with clip_sample=false.
SCHEDULER_VARIANTS: list[tuple[str, object, dict, str | None, str | None]] = [
    ("num_train_timesteps", 500, {}, SAME, SAME),
    ("beta_start", 5e-4, {}, SAME, SAME),
    ("beta_end", 0.03, {}, SAME, SAME),
    ("beta_schedule", "scaled_linear", {}, SAME, SAME),
    ("beta_schedule", "squaredcos_cap_v2", {}, SAME, SAME),
    (
        "beta_schedule",
        "sigmoid",
        {},
        "beta_schedule='sigmoid' is not supported",
        "beta_schedule='sigmoid' is not supported",
    ),
    ("trained_betas", "linear", {}, SAME, SAME),
    (
        "trained_betas",
        [0.5] * 1000,
        {},
        "trained_betas gives another schedule",
        "trained_betas gives another schedule",
    ),
    ("rescale_betas_zero_snr", True, {"prediction_type": "v_prediction"}, SAME, SAME),
    (
        "rescale_betas_zero_snr",
        True,
        {},
        "rescale_betas_zero_snr=true with prediction_type",
        "rescale_betas_zero_snr=true with prediction_type",
    ),
    ("prediction_type", "v_prediction", {}, SAME, SAME),
    ("prediction_type", "sample", {}, SAME, SAME),
    ("prediction_type", "score", {}, "prediction_type='score'", "prediction_type='score'"),
    ("clip_sample", True, {}, SAME, SAME),
    ("clip_sample_range", 2.0, {}, SAME, SAME),  # unused without clip_sample
    (
        "clip_sample_range",
        2.0,
        {"clip_sample": True},
        "clip_sample_range=2.0 is not",
        "clip_sample_range=2.0 is not",
    ),
    ("thresholding", True, {}, "thresholding=true", "thresholding=true"),
    ("dynamic_thresholding_ratio", 0.9, {}, SAME, SAME),
    ("sample_max_value", 2.0, {}, SAME, SAME),
    ("variance_type", "fixed_large", {}, SAME, SAME),
    ("variance_type", "fixed_small_log", {}, SAME, SAME),
    (
        "variance_type",
        "fixed_large_log",
        {},
        "variance_type='fixed_large_log'",
        "variance_type='fixed_large_log'",
    ),
    (
        "variance_type",
        "learned_range",
        {},
        "variance_type='learned_range'",
        "variance_type='learned_range'",
    ),
    ("timestep_spacing", "trailing", {}, SAME, SAME),
    ("timestep_spacing", "leading", {}, SAME, SAME),
    ("timestep_spacing", "linspace", {}, SAME, "timestep_spacing='linspace' with sampler.steps=10"),
    (
        "timestep_spacing",
        "uniform",
        {},
        "timestep_spacing='uniform' is not supported",
        "timestep_spacing='uniform' is not supported",
    ),
    (
        "steps_offset",
        1,
        {},
        "steps_offset=1 moves diffusers' leading grid",
        "steps_offset=1 moves diffusers' leading grid",
    ),
    ("steps_offset", 1, {"timestep_spacing": "trailing"}, SAME, SAME),
    ("set_alpha_to_one", False, {"timestep_spacing": "trailing"}, None, SAME),
    ("set_alpha_to_one", False, {}, None, "set_alpha_to_one=false ends diffusers' DDIM"),
    ("set_alpha_to_one", True, {}, None, SAME),
]


def test_every_field_diffusers_writes_is_classified_and_walked():
    """The fields come from diffusers' own signatures: a field a later diffusers adds fails here
    until the loader's tables and the walks below classify it."""
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

    from difforge.interop.diffusers_pipeline import SCHEDULER_FIELDS, UNET_FIELDS, init_fields

    scheduler_fields = set(init_fields(DDPMScheduler)) | set(init_fields(DDIMScheduler))
    assert scheduler_fields == set(SCHEDULER_FIELDS)
    assert scheduler_fields == {variant[0] for variant in SCHEDULER_VARIANTS}
    assert set(init_fields(UNet2DModel)) == set(UNET_FIELDS)
    walked = set(ARCHITECTURE) | {variant[0] for variant in UNET_REFUSALS} | {"num_class_embeds"}
    assert walked == set(UNET_FIELDS)


@pytest.mark.parametrize(
    ("field", "value", "changes", "ddpm", "ddim"),
    SCHEDULER_VARIANTS,
    ids=[f"{v[0]}={str(v[1])[:12]}{'+' if v[2] else ''}" for v in SCHEDULER_VARIANTS],
)
def test_each_scheduler_field_is_reproduced_or_refused(
    pipelines, tmp_path, field, value, changes, ddpm, ddim
):
    """Before: timestep_spacing, steps_offset and set_alpha_to_one were dropped (difforge's own
    grid and end), and fixed_large_log gave finite images where diffusers' gives NaN."""
    from difforge.diffusion.schedules import LinearSchedule

    folder = tmp_path / "pipe"
    shutil.copytree(pipelines[("epsilon", False)], folder)
    if value == "linear":  # diffusers' own linear betas, as float32 numbers
        value = LinearSchedule(1000, scale_to_num_timesteps=False).betas.float().tolist()
    _edit_json(folder / "scheduler/scheduler_config.json", **{field: value}, **changes)
    if ddpm is None:  # a DDIMScheduler field: the folder of a DDIMPipeline
        _edit_json(folder / "scheduler/scheduler_config.json", _class_name="DDIMScheduler")
        _edit_json(
            folder / "model_index.json",
            _class_name="DDIMPipeline",
            scheduler=["diffusers", "DDIMScheduler"],
        )
    clip = bool(changes.get("clip_sample", value if field == "clip_sample" else False))
    for algorithm, expected in (("ddpm", ddpm), ("ddim", ddim)):
        if expected is None:
            continue
        if expected != SAME:
            with pytest.raises(DifforgeError) as error:
                ours(folder, algorithm)
            message = str(error.value)
            assert expected in message and "\n" not in message, message
            assert "scheduler_config.json" in message
            continue
        if algorithm == "ddpm":
            theirs, mine = diffusers_ddpm(folder), ours(folder, "ddpm")
        else:
            theirs, draws = diffusers_ddim(folder, clip, None)
            mine = ours(folder, "ddim", draws)
        difference = np.abs(mine.astype(int) - theirs.astype(int)).max()
        print(f"{field}={str(value)[:20]} {changes} {algorithm}: max uint8 difference {difference}")
        assert difference <= 1, (algorithm, difference)
        assert theirs.std() > 10


# Every UNet2DModel field diffusers' network reads itself, set off its default at once (untrained
# weights: the comparison is exact whatever they are).
ARCHITECTURE = {
    "sample_size": [8, 12],
    "in_channels": 2,
    "out_channels": 2,
    "center_input_sample": True,
    "time_embedding_type": "positional",
    "time_embedding_dim": 48,
    "freq_shift": 1,
    "flip_sin_to_cos": False,
    "down_block_types": ("ResnetDownsampleBlock2D", "AttnDownBlock2D"),
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ("AttnUpBlock2D", "ResnetUpsampleBlock2D"),
    "block_out_channels": (8, 16),
    "layers_per_block": 2,
    "mid_block_scale_factor": 2.0,
    "downsample_padding": 0,
    "downsample_type": "resnet",
    "upsample_type": "resnet",
    "dropout": 0.1,
    "act_fn": "mish",
    "attention_head_dim": 4,
    "norm_num_groups": 4,
    "attn_norm_num_groups": 2,
    "norm_eps": 1e-4,
    "resnet_time_scale_shift": "scale_shift",
    "add_attention": False,
    "class_embed_type": None,
    "num_train_timesteps": 500,  # read by the learned time embedding only
}
UNET_REFUSALS = [
    ("time_embedding_type", "fourier", "time_embedding_type='fourier' is not supported"),
    ("time_embedding_type", "learned", "time_embedding_type='learned' is not supported"),
    ("out_channels", 2, "out_channels=2 differs from in_channels=1"),
    ("class_embed_type", "timestep", "class_embed_type='timestep' is not supported"),
    ("sample_size", "eight", "sample_size must be an int or [height, width]"),
    ("in_channels", 3, "out_channels=1 differs from in_channels=3"),
]


def test_every_unet_field_read_by_diffusers_network_gives_its_images(tmp_path):
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(0)
    unet = UNet2DModel(**ARCHITECTURE)
    scheduler = DDPMScheduler(clip_sample=True, timestep_spacing="trailing")
    from diffusers import DDPMPipeline

    DDPMPipeline(unet=unet.eval(), scheduler=scheduler).save_pretrained(str(tmp_path))
    config = json.loads((tmp_path / "unet" / "config.json").read_text())
    assert {name: config[name] for name in ARCHITECTURE} == json.loads(json.dumps(ARCHITECTURE))
    assert read_pipeline(tmp_path).data_shape == (2, 8, 12)
    theirs, draws = diffusers_ddim_shape(tmp_path, (NUM_IMAGES, 2, 8, 12))
    mine = ours(tmp_path, "ddim", draws)
    assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 1
    assert theirs.std() > 10


def diffusers_ddim_shape(path: Path, shape: tuple[int, ...]) -> tuple[np.ndarray, torch.Tensor]:
    """DDIMPipeline on the folder as saved, clipped model output (see ``diffusers_ddim``)."""
    from diffusers import DDIMPipeline

    pipe = DDIMPipeline.from_pretrained(str(path))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(
        batch_size=shape[0],
        generator=torch.Generator().manual_seed(0),
        num_inference_steps=DDIM_STEPS,
        output_type="np",
        use_clipped_model_output=True,
    ).images
    draws = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    return (images * 255).round().astype(np.uint8), draws


@pytest.mark.parametrize(("field", "value", "fragment"), UNET_REFUSALS)
def test_unet_fields_difforge_cannot_wrap_are_refused(folder, field, value, fragment):
    _edit_json(folder / "unet/config.json", **{field: value})
    with pytest.raises(DifforgeError) as error:
        read_pipeline(folder)
    message = str(error.value)
    assert fragment in message and "unet/config.json" in message and "\n" not in message


def test_class_labels_give_the_images_of_diffusers_ddim_loop(tmp_path):
    """num_class_embeds: DDIMPipeline passes no labels, so its loop is run here with them."""
    from diffusers import DDIMScheduler, DDPMPipeline, DDPMScheduler, UNet2DModel

    from diffusers_fixtures import tiny_unet

    DDPMPipeline(
        unet=tiny_unet(num_classes=3), scheduler=DDPMScheduler(clip_sample=False)
    ).save_pretrained(str(tmp_path))
    unet = UNet2DModel.from_pretrained(str(tmp_path / "unet"), low_cpu_mem_usage=False)
    scheduler = DDIMScheduler.from_pretrained(str(tmp_path / "scheduler"))
    scheduler.set_timesteps(DDIM_STEPS)
    labels = torch.arange(NUM_IMAGES) % 3
    draws = torch.randn((NUM_IMAGES, 1, 8, 8), generator=torch.Generator().manual_seed(0))
    image = draws.clone()
    with torch.no_grad():
        for t in scheduler.timesteps:
            output = unet(image, t, class_labels=labels).sample
            image = scheduler.step(output, t, image, eta=0.0).prev_sample
    theirs = ((image / 2 + 0.5).clamp(0, 1) * 255).round().permute(0, 2, 3, 1).numpy()
    from difforge.diffusion.samplers import Sampler
    from difforge.plotting import to_uint8_images

    model = load_pipeline(tmp_path, Sampler("ddim", DDIM_STEPS))
    mine = to_uint8_images(model.generate(NUM_IMAGES, noise=draws, class_labels=labels).samples)
    assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 1
    with pytest.raises(ValueError, match="needs an unconditional branch"):
        model.guidance_scale = 3.0
        model.generate(2, noise=draws[:2])


def test_a_field_the_loader_does_not_classify_is_refused(folder, monkeypatch):
    """A field the installed diffusers takes but the loader's table lacks (as a newer diffusers'
    would be) is refused, not dropped."""
    from difforge.interop import diffusers_pipeline

    fields = dict(diffusers_pipeline.SCHEDULER_FIELDS)
    del fields["steps_offset"]
    monkeypatch.setattr(diffusers_pipeline, "SCHEDULER_FIELDS", fields)
    with pytest.raises(DifforgeError, match=r"steps_offset=0 is a DDPMScheduler field difforge"):
        read_pipeline(folder)


def test_a_pipeline_with_other_components_is_refused(folder):
    _edit_json(folder / "model_index.json", vqvae=["diffusers", "VQModel"])
    with pytest.raises(DifforgeError, match=r"component vqvae=\['diffusers', 'VQModel'\]"):
        read_pipeline(folder)


def test_the_api_samples_on_the_folders_grid(pipelines):
    """difforge.load(folder).sample builds its own Sampler: the folder's timestep_spacing (here
    diffusers' default, leading) still applies, as on the command line."""
    import difforge

    path = pipelines[("epsilon", False)]
    theirs, draws = diffusers_ddim(path, False, None)
    from difforge.plotting import to_uint8_images

    mine = to_uint8_images(difforge.load(path).sample(NUM_IMAGES, "ddim", DDIM_STEPS, noise=draws))
    assert np.abs(mine.astype(int) - theirs.astype(int)).max() <= 1


def test_every_other_scheduler_diffusers_can_swap_in_is_refused(folder):
    """A pipeline saved after ``pipe.scheduler = XScheduler.from_config(...)``: difforge reproduces
    DDPMScheduler and DDIMScheduler field by field; every other class diffusers offers for them
    (its ``compatibles``) is refused whole, naming it, rather than read as a DDPM config."""
    from diffusers import DDPMScheduler

    others = sorted(c.__name__ for c in DDPMScheduler().compatibles)
    others = [name for name in others if name not in ("DDPMScheduler", "DDIMScheduler")]
    assert len(others) >= 10
    for name in others:
        _edit_json(folder / "model_index.json", scheduler=["diffusers", name])
        with pytest.raises(DifforgeError) as error:
            read_pipeline(folder)
        message = str(error.value)
        assert f"scheduler is a {name}; allowed: DDPMScheduler, DDIMScheduler" in message
        assert "\n" not in message


def test_ddim_off_its_own_grid_is_refused_unless_the_grid_is_named(folder):
    """diffusers' DDIM on a trailing grid of N = 7 (not dividing T = 1000) steps from 999 to
    857 but next evaluates at 856: the folder's grid is refused for ddim at that N, while N = 8
    (dividing T) and a named grid (difforge's DDIM along it) run."""
    from difforge.diffusion.samplers import Sampler
    from difforge.interop.diffusers_pipeline import pipeline_sampler

    _edit_json(folder / "scheduler/scheduler_config.json", timestep_spacing="trailing")
    spec = read_pipeline(folder)
    with pytest.raises(DifforgeError, match=r"timestep_spacing='trailing' with sampler\.steps=7"):
        pipeline_sampler(Sampler("ddim", 7), spec)
    assert pipeline_sampler(Sampler("ddim", 8), spec).grid == "trailing"
    assert pipeline_sampler(Sampler("ddim", 7, grid="trailing"), spec).grid == "trailing"
    assert pipeline_sampler(Sampler("ddpm", 7), spec).grid == "trailing"  # DDPM steps by index
