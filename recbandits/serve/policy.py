"""The service's starting policy: the policy fields and statistics of a checkpoint, or of a cold start.

The policy itself, scored over any candidate set, is ``recbandits.algos.candidates.LinearCandidatePolicy``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recbandits.algos.candidates import build_module, module_policy_fields
from recbandits.algos.checkpoints import load_linear_module
from recbandits.serve.config import ServeConfig


def policy_fields_of_module(module, config: ServeConfig) -> dict[str, Any]:
    """The policy fields (see ``config.POLICY_FIELDS``) describing a loaded module, with the config's overrides."""
    fields = module_policy_fields(module)
    fields["model_config"].update(config.model_config)
    if config.slate_size:
        if module.shape != "shared":
            raise ValueError(f"slate_size={config.slate_size}: slates are served by the shared shape, and this "
                             "checkpoint is disjoint")
        fields["slate_size"] = config.slate_size
    if module.shape == "disjoint" and config.arm_ids is not None:
        if len(config.arm_ids) != fields["num_arms"]:
            raise ValueError(f"{len(config.arm_ids)} arm_ids for a checkpoint with {fields['num_arms']} arms")
        fields["arm_ids"] = config.arm_ids
    return fields


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
        module = load_linear_module(config.checkpoint, "the service")
        return policy_fields_of_module(module, config), module.get_state(), f"checkpoint:{config.checkpoint}"
    fields = cold_policy_fields(config)
    return fields, build_module(fields).get_state(), "cold"


