"""Every command written in README.md and docs/guide.md runs, as written up to tiny step counts.

Commands are parsed from the documents (fenced lines and inline code spans starting with
``python ``). Placeholders (``CKPT``, ``DIR``, ``/tmp/run``, ``<run>``, ``<date>_<time>``) become
a fresh checkpoint and temporary directories, step and sample counts are cut to a few, and
``out_dir=docs/figures`` goes to a temporary directory. Slow (every command is a process; about 6 minutes on two cores). Commands that need hardware or data this
machine lacks (a GPU, several devices, a download) and the minutes-long lessons are composed
with Hydra's ``--cfg job`` instead of run: their configs must still exist and fit together.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import QUICK_TRAIN, ROOT, assert_ok, run_cli

DOCUMENTS = ("README.md", "docs/guide.md")
# Needs what this machine lacks (a GPU, several devices, a download or a published file): compose
# only. The pretrained= and metrics.fid_ref= paths run in tests/test_diffusers_interop.py on a
# pipeline and reference file the tests make.
UNRUNNABLE = (
    "trainer=gpu",
    "data=cifar10",
    "trainer.devices=4",
    "pretrained=",
    "metrics.fid_ref=",
)
LESSONS = ("scripts/lesson_", "scripts/nfe_sweep.py")


def documented_commands() -> list[str]:
    commands: list[str] = []
    for name in DOCUMENTS:
        text = (ROOT / name).read_text().replace("\\\n", " ")  # shell line continuations
        found = re.findall(r"^python [^\n]*", text, flags=re.M)
        found += re.findall(r"`(python [^`]*)`", text)
        for command in found:
            command = " ".join(command.split("#", 1)[0].split())
            if command not in commands:
                commands.append(command)
    return commands


COMMANDS = documented_commands()


def tiny(key: str, value: str) -> str:
    """Step and sample counts cut to a few, keeping their order (200 -> 3, 5000 -> 4)."""
    if key in ("trainer.max_steps",):
        return str(len(value))
    if key in ("sampler.steps",):
        return str(min(int(value), 3))
    if key in ("num_samples",):
        return str(min(int(value), 40))
    if key in ("posterior.steps", "posterior.num_particles"):
        return str(min(int(value), 3))
    if key in ("num_inputs", "num_samples_per_input"):
        return str(min(int(value), 2))
    return value


def runnable(command: str, places: dict[str, str]) -> list[str]:
    """The command's arguments with placeholders filled and counts cut."""
    for placeholder, value in places.items():
        command = command.replace(placeholder, value)
    words = shlex.split(command)[1:]
    script, arguments = words[0], []
    for word in words[1:]:
        key, _, value = word.partition("=")
        if key == "out_dir":
            value = places["OUT"]
        arguments.append(f"{key}={tiny(key, value)}" if value else word)
    if script.startswith("src/") and "-m" in arguments:
        arguments.append(f"hydra.sweep.dir={places['SWEEP']}")
    if script == "src/train.py":
        given = {a.split("=", 1)[0] for a in arguments}
        arguments += [o for o in QUICK_TRAIN if o.split("=", 1)[0].lstrip("~") not in given]
        if "trainer.max_steps" not in given and not any(
            a.startswith("ckpt_path") for a in arguments
        ):
            arguments = [
                a if not a.startswith("trainer.max_steps") else "trainer.max_steps=2"
                for a in arguments
            ]
        arguments.append("callbacks.fid.every_n_steps=null")
    if script in ("src/sample.py", "src/eval.py"):
        given = {a.split("=", 1)[0] for a in arguments}
        arguments += [
            o
            for o in ("sampler.steps=3", "num_samples=40", "nll.num_points=4")
            if o.split("=")[0] not in given and (script == "src/eval.py" or not o.startswith("nll"))
        ]
    return [script, *arguments]


@pytest.fixture(scope="module")
def places(tmp_path_factory) -> dict[str, str]:
    """A checkpoint and the directories the placeholders stand for (shared, in document order)."""
    root = tmp_path_factory.mktemp("documented")
    run = root / "digits"
    assert_ok(run_cli("train", *QUICK_TRAIN, f"hydra.run.dir={run}"))
    checkpoint = str(run / "checkpoints" / "last.ckpt")
    return {
        "CKPT": checkpoint,
        "<digits checkpoint>": checkpoint,
        "logs/train/runs/<run>/checkpoints/last.ckpt": checkpoint,
        "logs/train/multiruns/<date>_<time>": str(root / "sweep"),
        "DIR": str(root / "dir"),
        "/tmp/run": str(root / "run"),
        "OUT": str(root / "out"),
        "SWEEP": str(root / "sweep"),
    }


@pytest.fixture(scope="module")
def conditional_checkpoint(tmp_path_factory) -> str:
    run = tmp_path_factory.mktemp("conditional")
    assert_ok(
        run_cli(
            "train",
            *QUICK_TRAIN,
            "model.num_classes=10",
            "module.guidance_scale=3.0",
            f"hydra.run.dir={run}",
        )
    )
    return str(run / "checkpoints" / "last.ckpt")


def run_documented(arguments: list[str], compose_only: bool) -> subprocess.CompletedProcess:
    script, rest = arguments[0], arguments[1:]
    if compose_only:
        rest = [a for a in rest if a != "-m"] + ["--cfg", "job"]
    return subprocess.run(
        [sys.executable, str(ROOT / script), *rest],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS)
def test_documented_command_runs(command, places, request):
    if "src/sample.py" in command and "guidance_scale=" in command:
        # Guidance samples a class-conditional checkpoint: the README trains one just before.
        places = {**places, "CKPT": request.getfixturevalue("conditional_checkpoint")}
    arguments = runnable(command, places)
    compose_only = any(u in command for u in UNRUNNABLE) or command.startswith(
        tuple(f"python {prefix}" for prefix in LESSONS)
    )
    if arguments[0] == "src/train.py" and "ckpt_path=last" in arguments:
        # Resuming needs a run in the named directory: the documents show one just before.
        run_dir = next(a.split("=", 1)[1] for a in arguments if a.startswith("hydra.run.dir="))
        if not (Path(run_dir) / "checkpoints" / "last.ckpt").is_file():
            assert_ok(
                run_cli("train", *QUICK_TRAIN, "trainer.max_steps=2", f"hydra.run.dir={run_dir}")
            )
    if arguments[0] == "scripts/summarize_sweep.py":
        sweep = Path(places["SWEEP"])
        if not any(sweep.glob("*/final_metrics.json")):
            assert_ok(
                run_documented(
                    runnable("python src/train.py -m schedule=linear,cosine", places), False
                )
            )
    result = run_documented(arguments, compose_only)
    assert_ok(result)


def test_the_documents_hold_the_commands_this_test_runs():
    assert len(COMMANDS) >= 20
    assert any("model=gmm_oracle data=gmm2d" in c for c in COMMANDS)
