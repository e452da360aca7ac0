"""Evaluate a checkpoint: ``python src/eval.py ckpt_path=CKPT`` writes metrics.json."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs", config_name="eval.yaml")
def main(cfg: DictConfig) -> None:
    from difforge.cli.common import run_command
    from difforge.cli.evaluate import evaluate

    run_command(evaluate, cfg, "eval")


if __name__ == "__main__":
    from difforge.cli.overrides import check_overrides, seeds_flag_to_override

    sys.argv = seeds_flag_to_override(sys.argv)
    check_overrides(str(Path(__file__).resolve().parents[1] / "configs"), "eval", sys.argv[1:])
    main()
