"""Logger factories for the Hydra configs: W&B that never waits at a login prompt.

``wandb_logger`` builds Lightning's ``WandbLogger`` online only when the user configured W&B:
``WANDB_MODE=online`` (or ``run``), or ``WANDB_API_KEY`` set; otherwise offline, into
``<save_dir>/wandb/offline-run-*`` (upload later with ``wandb sync <that folder>``).
``WANDB_MODE=offline``/``dryrun`` forces offline, ``WANDB_MODE=disabled`` is left to wandb.
``offline: true/false`` in the config overrides the guess.

``finishes_wandb_run`` closes the process's W&B run when a job ends, so that every job of a sweep
run in one process (Hydra's basic launcher, Optuna) gets its own run.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger("difforge")
T = TypeVar("T")

ONLINE_MODES = ("online", "run")
OFFLINE_MODES = ("offline", "dryrun")


def wandb_should_be_offline(environ: dict[str, str] | None = None) -> bool:
    """True unless W&B is configured: ``WANDB_MODE`` online, or an API key in ``WANDB_API_KEY``."""
    env = os.environ if environ is None else environ
    mode = env.get("WANDB_MODE", "").strip().lower()
    if mode in ONLINE_MODES:
        return False
    if mode in OFFLINE_MODES:
        return True
    if mode == "disabled":
        return False  # wandb itself honours WANDB_MODE=disabled (no run, no prompt)
    return not env.get("WANDB_API_KEY", "").strip()


def wandb_logger(
    save_dir: str | os.PathLike,
    project: str = "difforge",
    name: str | None = None,
    tags: Iterable[str] | None = None,
    offline: bool | None = None,
    **kwargs: Any,
) -> Any:
    """Lightning ``WandbLogger`` writing under ``save_dir`` (``WANDB_DIR`` too), offline unless
    W&B is configured (see :func:`wandb_should_be_offline`) or ``offline`` says otherwise."""
    from lightning.pytorch.loggers import WandbLogger

    save_dir = Path(save_dir).expanduser()
    save_dir.mkdir(parents=True, exist_ok=True)
    os.environ["WANDB_DIR"] = str(save_dir)
    os.environ.setdefault("WANDB_CACHE_DIR", str(save_dir / "wandb" / "cache"))
    if offline is None:
        offline = wandb_should_be_offline()
    if offline:
        import wandb

        kwargs.setdefault("mode", "offline")
        # The line below already says where the run goes and how to upload it: wandb's own
        # offline banners (start and end of every run) would repeat it.
        kwargs.setdefault("settings", wandb.Settings(silent=True))
        log.info(
            "W&B runs offline into %s/wandb (no WANDB_API_KEY or WANDB_MODE=online); upload "
            "later with: wandb sync %s/wandb/offline-run-*",
            save_dir,
            save_dir,
        )
    logger = WandbLogger(
        name=name,
        save_dir=str(save_dir),
        project=project,
        tags=None if tags is None else [str(tag) for tag in tags],
        offline=bool(offline),
        **kwargs,
    )
    # Lightning always passes anonymous=None to wandb.init, which wandb >= 0.19 answers with a
    # deprecation warning on every run; None is wandb's default, so leaving it out changes nothing.
    if logger._wandb_init.get("anonymous", 0) is None:
        del logger._wandb_init["anonymous"]
    return logger


def finish_wandb_run(exit_code: int) -> None:
    """Finish this process's current W&B run, if one is open (``exit_code`` 0: finished, else
    failed). Nothing when wandb was never imported."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def finishes_wandb_run(job: Callable[..., T]) -> Callable[..., T]:
    """``job`` followed by :func:`finish_wandb_run`, however it ends. Lightning's ``WandbLogger``
    logs into ``wandb.run`` when one is open: without this, every later job of a sweep run in the
    same process (Hydra's basic launcher, Optuna) would log into the first job's run."""

    @functools.wraps(job)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            result = job(*args, **kwargs)
        except BaseException:
            finish_wandb_run(exit_code=1)
            raise
        finish_wandb_run(exit_code=0)
        return result

    return wrapper
