"""A diffusers pipeline as a DiffusionModule that samples with the pipeline's settings.

Kept apart from ``diffusers_pipeline`` so that reading a folder does not import Lightning.
"""

from __future__ import annotations

from typing import Any

from difforge.diffusion.samplers import Sampler, SampleResult
from difforge.interop.diffusers_pipeline import PipelineSpec, pipeline_sampler
from difforge.training.module import DiffusionModule


class PipelineModule(DiffusionModule):
    """A :class:`DiffusionModule` around a pipeline folder's UNet: every sampler it runs (the
    command line's, the API's, the evaluation protocol's) takes the folder's settings where the
    user left them unset (:func:`~difforge.interop.diffusers_pipeline.pipeline_sampler`).

    ``spec``: the folder, read by ``read_pipeline``; ``kwargs``: the DiffusionModule's.
    """

    def __init__(self, spec: PipelineSpec, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec

    def generate(  # type: ignore[override]
        self, num_samples: int, *, sampler: Sampler | None = None, **kwargs: Any
    ) -> SampleResult:
        chosen = pipeline_sampler(sampler or self.sampler, self.spec)
        return super().generate(num_samples, sampler=chosen, **kwargs)
