"""The one linear-bandit kernel: the RLlib module and the serving policy score, choose and report probabilities
through it, so the same statistics give the same numbers through both."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from recbandits.algos import kernel
from recbandits.algos.candidates import CandidateSet, LinearCandidatePolicy, build_module

SHAPES = {
    "disjoint": {"shape": "disjoint", "context_dim": 4, "num_arms": 5, "arm_dim": 0, "arm_ids": list("abcde"),
                 "interaction": False},
    "shared": {"shape": "shared", "context_dim": 3, "num_arms": 0, "arm_dim": 2, "arm_ids": None,
               "interaction": True},
}


def _learned_state(fields, rng):
    module = build_module(fields)
    features = torch.from_numpy(rng.normal(size=(40, module.feature_dim)))
    models = torch.from_numpy(rng.integers(module.num_models, size=40))
    module.absorb(*module.statistics(features, models, torch.from_numpy(rng.normal(size=40))))
    return module.get_state()


def _observations(fields, rng, batch):
    """(the module's observation batch, the serving jobs of the same decisions over every candidate)."""
    context = rng.normal(size=(batch, fields["context_dim"]))
    if fields["shape"] == "disjoint":
        return context, [CandidateSet(context=row, arms=np.arange(fields["num_arms"])) for row in context]
    arm_features = rng.normal(size=(batch, 6, fields["arm_dim"]))
    jobs = [CandidateSet(context=context[b], arm_features=arm_features[b]) for b in range(batch)]
    return {"global": context, "per_arm": arm_features}, jobs


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("exploration", ["ucb", "greedy", "eps_greedy", "thompson"])
def test_the_module_and_the_serving_policy_give_the_same_scores_and_probabilities(shape, exploration):
    fields = {**SHAPES[shape], "model_config": {"exploration": exploration, "alpha": 0.8, "epsilon": 0.3,
                                                "seed": 11}}
    rng = np.random.default_rng(3)
    state = _learned_state(fields, rng)
    module = build_module(fields)
    module.set_state(state)
    module.width_dtype = torch.float64
    module.refresh()
    policy = LinearCandidatePolicy(fields, state)
    observation, jobs = _observations(fields, rng, 3)
    # Same seed, same draws: Thompson samples agree exactly too.
    scores = module.scores(module.features(observation), exploration)
    decisions = policy.decide(jobs)
    np.testing.assert_allclose([decision.scores for decision in decisions], scores.numpy(), rtol=1e-12)
    probabilities = module.probabilities(scores)
    if exploration == "thompson":
        assert probabilities is None and all(decision.probabilities is None for decision in decisions)
    else:
        np.testing.assert_array_equal([decision.probabilities for decision in decisions], probabilities.numpy())
        for row, decision in zip(probabilities.numpy(), decisions, strict=True):
            assert row.sum() == pytest.approx(1.0) and row[decision.chosen] > 0


def test_choices_follow_the_reported_probabilities_with_ties_and_padding():
    generator = torch.Generator().manual_seed(0)
    # Row 0: a tie of candidates 1 and 2 among 4; row 1: 3 real candidates, the 4th padding.
    scores = torch.tensor([[0.0, 2.0, 2.0, 1.0], [5.0, 1.0, 0.5, -torch.inf]], dtype=torch.float64)
    valid = torch.tensor([[True] * 4, [True, True, True, False]])
    expected = kernel.action_probabilities(scores, "eps_greedy", 0.2, valid)
    np.testing.assert_allclose(expected.numpy(), [[0.05, 0.45, 0.45, 0.05], [0.2 / 3 + 0.8, 0.2 / 3, 0.2 / 3, 0.0]])
    draws = 20_000  # per row
    counts = torch.zeros(2, 4)
    for _ in range(draws // 500):
        actions = kernel.choose(scores.repeat(500, 1), "eps_greedy", 0.2, generator, valid=valid.repeat(500, 1))
        counts += torch.nn.functional.one_hot(actions.view(500, 2), 4).sum(0)
    # Binomial standard error <= sqrt(0.25 / 20,000) = 0.0035: 4 of them.
    np.testing.assert_allclose((counts / draws).numpy(), expected.numpy(), atol=0.014)
    greedy = kernel.action_probabilities(scores, "greedy", 0.0, valid)
    np.testing.assert_array_equal(greedy.numpy(), [[0, 0.5, 0.5, 0], [1, 0, 0, 0]])
    assert kernel.action_probabilities(scores, "random", 0.0, valid)[1].tolist() == [1 / 3] * 3 + [0.0]
    assert kernel.action_probabilities(scores, "thompson", 0.0, valid) is None


def test_further_rewards_add_to_the_response_only():
    x = torch.tensor([[1.0, 2.0], [0.5, -1.0], [1.0, 2.0]], dtype=torch.float64)
    models = torch.tensor([0, 1, 0])
    rewards = torch.tensor([1.5, -1.0, 2.0], dtype=torch.float64)
    # Row 2 is a second reward (2.0) of row 0's observation, whose reward so far is 1.5.
    precision, response, response_square, counts = kernel.sufficient_statistics(
        x, models, rewards, 2, new=torch.tensor([True, True, False]), previous=torch.tensor([0.0, 0.0, 1.5],
                                                                                        dtype=torch.float64))
    np.testing.assert_allclose(precision.numpy(), [np.outer([1, 2], [1, 2]), np.outer([0.5, -1], [0.5, -1])])
    np.testing.assert_allclose(response.numpy(), [[3.5, 7.0], [-0.5, 1.0]])
    np.testing.assert_allclose(response_square.numpy(), [3.5**2, 1.0])
    np.testing.assert_array_equal(counts.numpy(), [1.0, 1.0])


@pytest.mark.parametrize("candidates", [2, 20])
def test_structured_interaction_widths_equal_the_dense_product(candidates):
    """``Posterior.candidate_variance`` (N(g) once per row, (p+1)^2 per candidate) is f^T A^-1 f exactly."""
    generator = torch.Generator().manual_seed(2)
    global_dim, arm_dim, rows = 5, 4, 64
    users = torch.randn(rows, global_dim, dtype=torch.float64, generator=generator)
    arms = torch.randn(rows, candidates, arm_dim, dtype=torch.float64, generator=generator)
    arms[:3, 1:] = 0.0  # padded candidates, as the service pads short candidate sets
    features = kernel.candidate_features(users, arms, interaction=True)
    history = torch.randn(500, features.shape[-1], dtype=torch.float64, generator=generator)
    posterior = kernel.Posterior.from_statistics(
        "shared", (history.T @ history).unsqueeze(0), torch.randn(1, features.shape[-1], dtype=torch.float64),
        torch.ones(1, dtype=torch.float64), torch.full((1,), 500.0, dtype=torch.float64), lambda_=1.0,
        posterior_scale=None, noise_prior=1.0)
    dense = ((features @ posterior.covariance[0]) * features).sum(-1)
    posterior.layout = (global_dim, arm_dim, True)
    np.testing.assert_allclose(posterior.variance(features).numpy(), dense.numpy(), rtol=1e-12)
    with pytest.raises(ValueError, match="features of dimension 7 are not candidate_features of g=5, p=4"):
        kernel.kron_positions(5, 4, 7)


def test_a_seeded_per_arm_run_learns_the_same_statistics_with_structured_widths(small_data_dir, monkeypatch):
    from recbandits.algos import LinUCBConfig
    from recbandits.algos import metrics as bandit_metrics
    from recbandits.algos.env_runner import BanditEnvRunner

    def learned(dense: bool) -> dict:
        if dense:  # the width as computed before the structured path
            monkeypatch.setattr(kernel.Posterior, "candidate_variance",
                                lambda self, features: ((features @ self.covariance[0]) * features).sum(-1))
        config = (LinUCBConfig().environment("recbandits/MovieLensPerArm-v0",
                                             env_config={"data_dir": str(small_data_dir), "rank": 6})
                  .env_runners(num_env_runners=0, num_envs_per_env_runner=64, rollout_fragment_length=8)
                  .debugging(seed=3, log_level="ERROR"))
        runner = BanditEnvRunner(config=config)
        module = runner.module
        assert module.interaction and module.posterior.layout == (module.global_dim, module.arm_dim, True)
        regret = sum(runner.sample_statistics()["sums"][bandit_metrics.REGRET_SUM] for _ in range(4))
        return {**runner.module.get_state(), "regret": regret}

    structured = learned(dense=False)
    dense = learned(dense=True)
    for key in ("data_precision", "data_response", "response_square", "counts", "regret"):
        np.testing.assert_allclose(np.asarray(structured[key]), np.asarray(dense[key]), rtol=1e-6, atol=1e-6,
                                   err_msg=key)
