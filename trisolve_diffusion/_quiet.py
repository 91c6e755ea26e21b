"""Silence one import-time message of transformers that does not concern trisolve users.

Importing diffusers' Stable Diffusion pipelines makes transformers resolve
``CLIPImageProcessor``; without torchvision it logs (once per class) that it falls back to
the PIL implementation, which is what the pipelines used before transformers 5. The fallback
is correct for every pipeline trisolve supports, so the message is dropped -- only that
message, through a filter on transformers' import logger; the user's logging configuration
and every other transformers message are untouched.
"""

from __future__ import annotations

import logging

_MESSAGE = "requires torchvision (not installed); falling back to"


class _DropTorchvisionFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return _MESSAGE not in record.getMessage()


logging.getLogger("transformers.utils.import_utils").addFilter(_DropTorchvisionFallback())
