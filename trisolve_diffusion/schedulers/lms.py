"""``LMSDiscreteScheduler`` (k-diffusion linear multistep, order 4) as a banded system.

Notation as in :mod:`.euler` (``sigma_j``, the derivative ``d_j = (x_j - D_j) / sigma_j`` as
``g_j``, ``input_scale = 1 / sqrt(sigma_j^2 + 1)``). Step ``s`` of ``LMSDiscreteScheduler.step``
with the pipelines' default ``order=4``::

    x_{s+1} = x_s + sum_{k < o} c_{s,k} d_{s-k},   o = min(s + 1, 4)
    c_{s,k} = int_{sigma_s}^{sigma_{s+1}} prod_{l != k, l < o} (tau - sigma_{s-l}) / (sigma_{s-k} - sigma_{s-l}) dtau

so ``a = 1`` and ``B[s, k] = c_{s,k}``: a band of width 4. The coefficients are read the way
the scheduler computes them, by calling its own ``get_lms_coefficient`` (``scipy.integrate.quad``
over its float32 sigma table), a pure function of the table.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import SchedulerMapping, check_common, refuse_stepped, start_index, timesteps_of
from .euler import k_diffusion_mapping, k_sigmas

__all__ = ["map_lms", "LMS_ORDER"]

#: The ``order`` argument of ``LMSDiscreteScheduler.step`` that every pipeline leaves at its default.
LMS_ORDER = 4


def map_lms(scheduler: Any, start: int | None = None) -> SchedulerMapping:
    check_common(scheduler, allowed_prediction=("epsilon", "v_prediction", "sample"))
    refuse_stepped(scheduler, len(scheduler.derivatives) != 0)
    start = start_index(scheduler, start)
    sig = k_sigmas(scheduler, start)  # (n + 1,)
    n = sig.shape[0] - 1
    B = np.zeros((n, LMS_ORDER))
    for j in range(n):
        s = start + j  # the scheduler's step_index
        order = min(s + 1, LMS_ORDER)
        used = min(order, j + 1)  # derivatives held (zip in step() stops at the shorter list)
        for k in range(used):
            B[j, k] = float(scheduler.get_lms_coefficient(order, s, k))
    return k_diffusion_mapping(scheduler, sig, B, timesteps=timesteps_of(scheduler)[start:])
