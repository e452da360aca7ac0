"""Draw samples: ``python src/sample.py ckpt_path=CKPT sampler=NAME sampler.steps=N num_samples=M``."""

import os
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

os.environ.setdefault("PROJECT_ROOT", str(Path(__file__).resolve().parents[1]))


@hydra.main(version_base="1.3", config_path="../configs", config_name="sample.yaml")
def main(cfg: DictConfig) -> None:
    from difforge.cli.common import run_command
    from difforge.cli.sample import sample

    run_command(sample, cfg, "sample")


if __name__ == "__main__":
    from difforge.cli.overrides import check_overrides

    check_overrides(str(Path(__file__).resolve().parents[1] / "configs"), "sample", sys.argv[1:])
    main()
