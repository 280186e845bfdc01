"""LinearBanditLearner: combines the env runners' sufficient statistics into the global posterior.

Bayesian linear regression has a closed-form update, so there is no loss, gradient or optimizer: the
Learner owns the authoritative module and adds the statistics deltas of every runner,

    D <- gamma^T D + sum_r delta_r      (T = batches each runner absorbed since the last sync)

which is exact: summing per-runner sums in float64 is the same regression as one big batch. It stays an
RLlib ``TorchLearner`` so the LearnerGroup, weight sync and checkpointing work as for any algorithm.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ray.rllib.core import DEFAULT_MODULE_ID
from ray.rllib.core.learner.learner import Learner
from ray.rllib.core.learner.torch.torch_learner import TorchLearner
from ray.rllib.utils.annotations import override

from recbandits.algos.module import LinearBanditModule


class LinearBanditLearner(TorchLearner):
    @override(TorchLearner)
    def configure_optimizers_for_module(self, module_id, config=None) -> None:
        """Closed-form posterior updates: nothing to optimize."""

    @override(Learner)
    def compute_loss_for_module(self, *, module_id, config, batch, fwd_out):
        raise NotImplementedError("linear bandits have no loss; the Learner absorbs sufficient statistics")

    @property
    def bandit_module(self) -> LinearBanditModule:
        return self.module[DEFAULT_MODULE_ID]

    def learn_from_runners(self, deltas: list[list[np.ndarray]], num_batches: int) -> dict[str, Any]:
        """Add the runners' deltas to the posterior; ``num_batches`` is T of the forgetting factor."""
        module = self.bandit_module
        totals = [torch.zeros_like(buffer) for buffer in
                  (module.data_precision, module.data_response, module.response_square, module.counts)]
        for delta in deltas:
            for total, value in zip(totals, delta, strict=True):
                total.add_(torch.from_numpy(np.array(value, dtype=np.float64)))
        module.absorb(*totals, decay=module.gamma ** num_batches)
        self._weights_seq_no += 1
        return {
            "num_runner_deltas": len(deltas),
            "num_observations": float(module.counts.sum()),
            "theta_norm": float(module.theta.norm()),
        }
