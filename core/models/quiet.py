"""Keep a background process's log for what its user can act on.

The ML libraries fill a log with progress bars (redrawn with carriage returns, unreadable in a
file), FutureWarnings about their own internals, and notes about optional kernels a CPU run does
without. NERLab reports its own progress per phase, so the workers and the "try a sentence"
process turn those off; real warnings (UserWarning, RuntimeWarning…) and errors stay.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

#: Loggers whose warnings are about optional kernels or hub access, not about the run.
_NOISY_LOGGERS = ("bitsandbytes", "huggingface_hub", "accelerate.utils.other")


def quiet_libraries() -> None:
    """Silence progress bars, FutureWarnings and DeprecationWarnings of this process (call it
    first thing in a background process's main: tqdm reads its settings when first imported)."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    if "transformers" in sys.modules:  # already imported: tell it directly as well
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
