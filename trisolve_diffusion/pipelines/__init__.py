"""One front door per pipeline family: prepare with the pipeline's public methods, call
:func:`~trisolve_diffusion.sample_latents`, post-process with the pipeline's methods."""

from ._common import ParallelImagePipelineOutput, ParallelStableDiffusionOutput, ParallelStableDiffusionXLOutput
from .cogvideox import ParallelCogVideoXOutput
from .flux import ParallelFluxOutput
from .ltx import ParallelLTXOutput
from .sd3 import ParallelStableDiffusion3Output
from .wan import ParallelWanOutput

__all__ = [
    "ParallelImagePipelineOutput",
    "ParallelStableDiffusionOutput",
    "ParallelStableDiffusionXLOutput",
    "ParallelStableDiffusion3Output",
    "ParallelFluxOutput",
    "ParallelWanOutput",
    "ParallelLTXOutput",
    "ParallelCogVideoXOutput",
]
