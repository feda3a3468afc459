"""The process settings every entry point shares: offline Hugging Face, quiet libraries."""

from __future__ import annotations

import logging
import os
import warnings


def offline_and_quiet() -> None:
    """Nothing downloads at run time, and libraries' progress bars and warnings stay off.

    Environment variables too, since Ray's workers and Flower's app processes inherit
    them where the filters set here do not reach.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    warnings.filterwarnings("ignore", category=UserWarning)
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("transformers").setLevel(logging.ERROR)
