"""A TF-Agents-backed module's policy over candidate sets (``CandidatePolicy``), for off-policy evaluation.

A TF-Agents policy chooses among all of its actions, so every candidate set must be the module's whole action
set: every arm in order (disjoint; the arm ids are the dataset's or the service's), or exactly the module's
number of candidates with their features (shared, TF-Agents' per-arm observation). The scores are the agent's
predicted mean rewards; the ranking is the chosen candidate, then the others by score.

Probabilities are exact (one-hot, ties to the first index as TF-Agents' argmax) for the deterministic policies,
``greedy`` and LinUCB's ``policy``; the others (LinTS's sampling, the neural agents' epsilon-greedy) report none,
so off-policy evaluation samples them (``ope.evaluation.target_probabilities``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from recbandits.algos.candidates import CandidatePolicy, CandidateSet, Decision


class TFAgentsCandidatePolicy(CandidatePolicy):
    """``which`` (``greedy``, ``policy``: what TF-Agents deploys, or ``collect``) of a ``TFAgentsBanditModule``."""

    def __init__(self, module, which: str = "policy"):
        module.policy_by_name(which)  # a bad name is named here
        self.module, self.which = module, which
        self.shape = "shared" if module.per_arm else "disjoint"
        self.num_actions = int(module.num_actions)
        self.deterministic = which == "greedy" or (which == "policy" and module.agent_name == "linucb")

    def fields(self) -> dict[str, Any]:
        """What the module's features are (``jobs.evaluate.fitting_checkpoint`` compares them)."""
        return {"shape": self.shape, "context_dim": int(self.module.global_dim), "arm_dim": int(self.module.arm_dim),
                "num_arms": 0 if self.module.per_arm else self.num_actions, "interaction": False}

    def _observations(self, jobs: list[CandidateSet]):
        contexts = np.stack([job.context for job in jobs]).astype(np.float32)
        if not self.module.per_arm:
            whole = np.arange(self.num_actions)
            if any(job.arms is None or not np.array_equal(job.arms, whole) for job in jobs):
                raise ValueError(f"a TF-Agents policy chooses among all of its {self.num_actions} arms: every row's "
                                 "candidates must be every arm, in order")
            return contexts
        if any(job.arm_features is None or len(job.arm_features) != self.num_actions for job in jobs):
            raise ValueError(f"a TF-Agents per-arm policy scores exactly {self.num_actions} candidates per row")
        return {"global": contexts, "per_arm": np.stack([job.arm_features for job in jobs]).astype(np.float32)}

    def decide(self, jobs: list[CandidateSet]) -> list[Decision]:
        if not jobs:
            return []
        observations = self._observations(jobs)
        actions, info = self.module.act(observations, self.which)
        scores = getattr(info, "predicted_rewards_mean", None)
        if scores is None or np.size(scores) == 0:
            _, scores = self.module.greedy_actions(observations)
        scores = np.asarray(scores, dtype=np.float64)
        decisions = []
        for b, job in enumerate(jobs):
            chosen, values = int(actions[b]), scores[b].tolist()
            order = sorted(range(self.num_actions), key=values.__getitem__, reverse=True)
            order.remove(chosen)
            order.insert(0, chosen)
            probabilities = None
            if self.deterministic:
                probabilities = [0.0] * self.num_actions
                probabilities[chosen] = 1.0
            model, features = (chosen, job.context) if not self.module.per_arm else (0, job.arm_features[chosen])
            decisions.append(Decision(chosen, order, values, probabilities, model, features))
        return decisions
