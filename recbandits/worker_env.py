"""The environment variables every recbandits process and Ray worker needs before RLlib or TensorFlow is imported.

- ``RLLIB_TEST_NO_TF_IMPORT=1``: RLlib's new API stack is torch-only, yet it imports TensorFlow when installed
  (seconds per worker process, and in TF1 graph mode); recbandits' TF-Agents bridge imports TensorFlow itself.
- ``TF_USE_LEGACY_KERAS=1``: TF-Agents 0.19 needs Keras 2 (``tf_keras``), decided at TensorFlow's first import.
- ``TF_CPP_MIN_LOG_LEVEL=3``: no TensorFlow C++ start-up logging.

Importing this module imports nothing heavy: ``recbandits --help`` and the serving package use it too.
"""

from __future__ import annotations

import os

WORKER_ENV_VARS = {"RLLIB_TEST_NO_TF_IMPORT": "1", "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def set_worker_env() -> None:
    """Set the variables in this process where they are not set already (a user's own value wins)."""
    for name, value in WORKER_ENV_VARS.items():
        os.environ.setdefault(name, value)
