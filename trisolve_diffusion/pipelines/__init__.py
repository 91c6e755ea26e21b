"""One front door per pipeline family: prepare with the pipeline's public methods, call
:func:`~trisolve_diffusion.sample_latents`, post-process with the pipeline's methods."""

from ._common import ParallelImagePipelineOutput, ParallelStableDiffusionOutput, ParallelStableDiffusionXLOutput

__all__ = ["ParallelImagePipelineOutput", "ParallelStableDiffusionOutput", "ParallelStableDiffusionXLOutput"]
