"""The service's starting policy: the policy fields and statistics of a checkpoint, or of a cold start.

The policy itself, scored over any candidate set, is ``recbandits.algos.candidates.LinearCandidatePolicy``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recbandits.algos.candidates import build_module
from recbandits.algos.checkpoints import load_module
from recbandits.serve.config import MODEL_KEYS, ServeConfig


def load_checkpoint_module(path: str | Path):
    from recbandits.algos.module import LinearBanditModule

    module = load_module(path)
    if not isinstance(module, LinearBanditModule):
        raise ValueError(f"checkpoint {path} holds a {type(module).__name__}, not a LinearBanditModule")
    return module


def policy_fields_of_module(module, config: ServeConfig) -> dict[str, Any]:
    """The policy fields (see ``config.POLICY_FIELDS``) describing a loaded module, with the config's overrides."""
    model_config = {key: module.model_config.get(key) for key in MODEL_KEYS if key in (module.model_config or {})}
    model_config.update(config.model_config)
    num_arms = module.num_arms if module.shape == "disjoint" else 0
    arm_ids = config.arm_ids if module.shape == "disjoint" else None
    if arm_ids is not None and len(arm_ids) != num_arms:
        raise ValueError(f"{len(arm_ids)} arm_ids for a checkpoint with {num_arms} arms")
    return {
        "shape": module.shape,
        "context_dim": int(module.global_dim),
        "num_arms": int(num_arms),
        "arm_dim": int(module.arm_dim),
        "arm_ids": arm_ids if arm_ids is not None else ([str(k) for k in range(num_arms)] if num_arms else None),
        "interaction": bool(module.interaction),
        "model_config": model_config,
    }


def cold_policy_fields(config: ServeConfig) -> dict[str, Any]:
    fields = config.policy_fields()
    if config.shape == "disjoint":
        fields["arm_ids"] = config.effective_arm_ids
        fields["arm_dim"] = 0
    else:
        fields["arm_ids"] = None
        fields["num_arms"] = 0
    return fields


def initial_policy(config: ServeConfig) -> tuple[dict[str, Any], dict[str, np.ndarray], str]:
    """(policy fields, initial state, origin) of a first start: the checkpoint's module, or a cold start."""
    if config.checkpoint:
        module = load_checkpoint_module(config.checkpoint)
        return policy_fields_of_module(module, config), module.get_state(), f"checkpoint:{config.checkpoint}"
    fields = cold_policy_fields(config)
    return fields, build_module(fields).get_state(), "cold"


