"""``python -m trisolve_diffusion``: the main demo (see :mod:`trisolve_diffusion.demo`)."""

import sys

from .demo import main

sys.exit(main())
