"""Logging a known policy on a simulator: a dataset with exact propensities and the ground truth.

    recbandits logs collect --env movielens --policy softmax --steps 100000 --out logs/mf-softmax

Every row is one simulated decision: the context, the candidates (the MF env's movies, or the per-arm env's
sampled movies with their features), the action the logging policy drew, its probability and every candidate's
(``action_probabilities``), the sampled reward and, in ``expected_rewards``, the simulator's expected reward
of every candidate: with it a target policy's true value is exact, which is what off-policy estimators are
validated against.

| ``--policy`` | probability of candidate k (expected rewards e, n candidates) |
|---|---|
| ``uniform`` | 1/n |
| ``eps-greedy`` | epsilon/n + (1 - epsilon)/#ties on argmax e (a noisy oracle) |
| ``softmax`` | exp(e_k / temperature) / sum_j exp(e_j / temperature) |
| a checkpoint | the linear policy's own (``kernel``'s table); none for Thompson sampling (propensity null) |

On the ranking env (``movielens-ranking``) a decision is a slate of ``slate_size`` of the candidates, drawn slot by
slot: ``uniform`` without replacement, ``softmax`` by Plackett-Luce on the attractions (each slot a softmax over
the candidates left), ``eps-greedy`` the oracle's slate (most attractive first) or, with probability epsilon, a
uniform one. A row logs the slate, each prefix's probability (``slot_propensities``), each slot's item's
probability at its slot (``slot_marginals``; uniform and eps-greedy only), the feedback per slot
(``slot_rewards``: clicks; under cascading feedback the slots below the click are null, not examined) and, in
``expected_rewards``, every candidate's attraction. A checkpoint policy does not log rankings.

``workers`` Ray tasks collect in parallel, each over its own ``num_envs`` sub-envs (seeds ``seed + w *
num_envs + i``) and writes its own files; a checkpoint policy is frozen (it does not learn while logging).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from recbandits.logs.dataset import DatasetSpec, table_from_arrays, validate_table, write_dataset

LOGGING_POLICIES = ("uniform", "eps-greedy", "softmax")
COLLECT_ENVS = ("movielens", "movielens-per-arm", "movielens-ranking")


def logging_probabilities(policy: str, expected: np.ndarray, epsilon: float, temperature: float) -> np.ndarray:
    """[B, n] probability of every candidate under a simulator-aware logging policy."""
    count = expected.shape[1]
    if policy == "uniform":
        return np.full(expected.shape, 1.0 / count)
    if policy == "eps-greedy":
        ties = expected == expected.max(1, keepdims=True)
        return (1.0 - epsilon) * ties / ties.sum(1, keepdims=True) + epsilon / count
    logits = (expected - expected.max(1, keepdims=True)) / temperature
    weights = np.exp(logits)
    return weights / weights.sum(1, keepdims=True)


def sample_slates(policy: str, expected: np.ndarray, size: int, epsilon: float, temperature: float,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """([B, size] slates of candidate indices, [B, size] probability of each slate's first 1..size slots)."""
    batch, count = expected.shape
    rows = np.arange(batch)[:, None]
    if policy == "softmax":
        logits = (expected - expected.max(1, keepdims=True)) / temperature
        # Gumbel-top-k draws a Plackett-Luce ranking exactly.
        slates = np.argsort(-(logits + rng.gumbel(size=expected.shape)), axis=1, kind="stable")[:, :size]
        chosen = logits[rows, slates]
        # In log space (no cancellation at low temperature): slot j's candidates are the unchosen ones and
        # chosen[j:]; log P(slot j) = chosen_j - logsumexp(those).
        unchosen = logits.copy()
        unchosen[rows, slates] = -np.inf
        rest = np.logaddexp.reduce(unchosen, axis=1, keepdims=True)
        remaining = np.logaddexp(rest, np.logaddexp.accumulate(chosen[:, ::-1], axis=1)[:, ::-1])
        return slates, np.exp(np.cumsum(chosen - remaining, axis=1))
    uniform_prefix = np.cumprod(1.0 / (count - np.arange(size, dtype=np.float64)))[None, :].repeat(batch, 0)
    uniform_slates = np.argsort(rng.random(expected.shape), axis=1)[:, :size]
    if policy == "uniform":
        return uniform_slates, uniform_prefix
    oracle = np.argsort(-expected, axis=1, kind="stable")[:, :size]
    explore = rng.random(batch) < epsilon
    slates = np.where(explore[:, None], uniform_slates, oracle)
    same_prefix = np.cumprod(slates == oracle, axis=1).astype(bool)
    return slates, (1.0 - epsilon) * same_prefix + epsilon * uniform_prefix


def slot_marginals(policy: str, expected: np.ndarray, slates: np.ndarray, epsilon: float) -> np.ndarray | None:
    """[B, size] probability of each slot's candidate at that slot under ``sample_slates``' policy; None for
    ``softmax``, whose Plackett-Luce marginals below the top slot have no closed form (a sum over the prefixes)."""
    count = expected.shape[1]
    if policy == "uniform":
        return np.full(slates.shape, 1.0 / count)
    if policy == "eps-greedy":
        oracle = np.argsort(-expected, axis=1, kind="stable")[:, :slates.shape[1]]
        return (1.0 - epsilon) * (slates == oracle) + epsilon / count
    return None


def _top_slot_probabilities(policy: str, expected: np.ndarray, epsilon: float, temperature: float) -> np.ndarray:
    """[B, n] probability of each candidate at a slate's top slot (``sample_slates``)."""
    if policy != "eps-greedy":
        return logging_probabilities(policy, expected, epsilon, temperature)
    top = np.argsort(-expected, axis=1, kind="stable")[:, 0]
    probabilities = np.full(expected.shape, epsilon / expected.shape[1])
    probabilities[np.arange(len(top)), top] += 1.0 - epsilon
    return probabilities


def _slot_feedback(info: dict[str, np.ndarray], batch: int, size: int) -> tuple[list, list]:
    """(slot_rewards rows, with None for slots not examined; position of the first click or None)."""
    if "slot_clicks" in info:
        clicks = info["slot_clicks"][:batch].astype(np.float64)
        clicked = clicks.any(1)
        first = np.argmax(clicks, axis=1)
        return clicks.tolist(), [int(first[b]) if clicked[b] else None for b in range(batch)]
    position = info["clicked_position"][:batch]
    feedback = []
    for clicked_at in position.tolist():
        if clicked_at < 0:
            feedback.append([0.0] * size)  # no click: every slot was examined
        else:
            feedback.append([0.0] * clicked_at + [1.0] + [None] * (size - clicked_at - 1))
    return feedback, [int(slot) if slot >= 0 else None for slot in position.tolist()]


def _make_env(env: str, num_envs: int, data_dir, env_config: dict[str, Any]):
    from recbandits.envs import MovieLensPerArmVectorEnv, MovieLensRankingVectorEnv, MovieLensVectorEnv
    from recbandits.jobs.simulate import ENV_DEFAULTS

    settings = {**ENV_DEFAULTS[env], **env_config, "data_dir": data_dir, "episode_length": None}
    cls = {"movielens": MovieLensVectorEnv, "movielens-per-arm": MovieLensPerArmVectorEnv,
           "movielens-ranking": MovieLensRankingVectorEnv}[env]
    return cls(num_envs=num_envs, **settings)


def collect_part(worker: int, steps: int, out: str, env: str, policy: str, data_dir, env_config: dict[str, Any],
                 spec: DatasetSpec, num_envs: int, epsilon: float, temperature: float, seed: int,
                 checkpoint_state: dict | None, rows_per_file: int) -> dict[str, Any]:
    """Collect ``steps`` decisions as worker ``worker``; write ``part-WWW-NNNNN.parquet`` files into ``out``."""
    from recbandits.algos.candidates import CandidateSet, LinearCandidatePolicy

    vector_env = _make_env(env, num_envs, data_dir, env_config)
    simulator = vector_env.simulator
    observations, _ = vector_env.reset(seed=seed + worker * num_envs)
    frozen = None
    if checkpoint_state is not None:
        frozen = LinearCandidatePolicy(checkpoint_state["fields"], checkpoint_state["state"], seed=seed + worker)
    rng = np.random.default_rng([seed, worker])
    shared = env != "movielens"
    ranking = env == "movielens-ranking"
    movie_ids = simulator.factorization.item_ids.astype(str)
    done, file_index, pending, written, reward_sum, value_sum = 0, 0, [], [], 0.0, 0.0
    seen: dict[str, str] = {}
    step = 0
    while done < steps:
        batch = min(num_envs, steps - done)
        expected = simulator.expected_rewards()[:batch]
        if shared:
            candidates = simulator.candidate_ids()[:batch].astype(str)
            contexts, arm_features = observations["global"][:batch], observations["per_arm"][:batch]
        else:
            candidates = np.broadcast_to(movie_ids, (batch, len(movie_ids)))
            contexts, arm_features = observations[:batch], None
        slates = None
        if ranking:
            slates, slot_propensities = sample_slates(policy, expected, simulator.slate_size, epsilon, temperature,
                                                      rng)
            probabilities = _top_slot_probabilities(policy, expected, epsilon, temperature)
            actions = slates[:, 0]
        elif frozen is None:
            probabilities = logging_probabilities(policy, expected, epsilon, temperature)
            cumulative = probabilities.cumsum(1)
            draws = rng.random((batch, 1)) * cumulative[:, -1:]
            actions = (cumulative <= draws).sum(1).clip(max=probabilities.shape[1] - 1)
        else:
            jobs = [CandidateSet(context=contexts[b].astype(np.float64),
                                 arms=None if shared else np.arange(len(movie_ids)),
                                 arm_features=arm_features[b].astype(np.float64) if shared else None)
                    for b in range(batch)]
            decisions = frozen.decide(jobs)
            actions = np.array([decision.chosen for decision in decisions])
            probabilities = (np.array([decision.probabilities for decision in decisions])
                             if decisions[0].probabilities is not None else None)
        if ranking:
            full_actions = np.zeros((num_envs, simulator.slate_size), dtype=np.int64)
            full_actions[:] = np.arange(simulator.slate_size)
            full_actions[:batch] = slates
        else:
            full_actions = np.zeros(num_envs, dtype=np.int64)
            full_actions[:batch] = actions
        next_observations, rewards, _, _, info = vector_env.step(full_actions)
        rows = np.arange(batch)
        columns = {
            "event_id": np.char.add(f"w{worker}-{step}-", rows.astype(str)),
            "timestamp": np.full(batch, float(step)),
            "context": contexts.astype(np.float64),
            "candidates": candidates,
            "action": candidates[rows, actions],
            "reward": rewards[:batch].astype(np.float64),
            "reward_source": "observed",
            "policy": policy,
            "expected_rewards": expected.astype(np.float64),
        }
        if shared:
            columns["candidate_features"] = arm_features.astype(np.float64)
        if ranking:
            slot_rewards, positions = _slot_feedback(info, batch, simulator.slate_size)
            columns.update(slate=candidates[rows[:, None], slates], slot_propensities=slot_propensities,
                           slot_rewards=slot_rewards, position=positions)
            marginals = slot_marginals(policy, expected, slates, epsilon)
            if marginals is not None:
                columns["slot_marginals"] = marginals
        if probabilities is not None:
            columns["propensity"] = probabilities[rows, actions]
            columns["action_probabilities"] = probabilities
            if not ranking:  # a slate's value needs the click model: the rankings' value is left to evaluation
                value_sum += float((probabilities * expected).sum())
        pending.append(table_from_arrays(columns, f"worker {worker}"))
        reward_sum += float(rewards[:batch].sum())
        done += batch
        step += 1
        observations = next_observations
        if sum(table.num_rows for table in pending) >= rows_per_file or done >= steps:
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.concat_tables(pending)
            name = f"part-{worker:03d}-{file_index:05d}.parquet"
            validate_table(table, spec, name, seen)
            pq.write_table(table, Path(out) / name)
            written.append(name)
            pending, file_index = [], file_index + 1
    return {"rows": done, "files": written, "reward_sum": reward_sum, "value_sum": value_sum}


def collect(env: str, policy: str, steps: int, out: str | Path, *, data_dir=None, env_config=None,
            workers: int = 1, num_envs: int = 1024, epsilon: float = 0.1, temperature: float = 1.0, seed: int = 0,
            rows_per_file: int = 100_000, address: str | None = None) -> dict[str, Any]:
    """Write a dataset of ``steps`` decisions of ``policy`` (a name or a checkpoint) on ``env``; return a summary."""
    env_config = dict(env_config or {})
    if env not in COLLECT_ENVS:
        raise ValueError(f"--env {env!r}: logs collect takes {', '.join(COLLECT_ENVS)}")
    if steps < 1 or workers < 1 or num_envs < 1:
        raise ValueError("--steps, --workers and --num-envs must be >= 1")
    if not 0 <= epsilon <= 1:
        raise ValueError(f"--epsilon {epsilon} must be in [0, 1]")
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"--temperature {temperature} must be > 0")
    checkpoint_state = None
    if policy not in LOGGING_POLICIES:
        if env == "movielens-ranking":
            raise ValueError(f"--policy {policy}: rankings are logged with {', '.join(LOGGING_POLICIES)}, not a "
                             "checkpoint")
        checkpoint_state = _checkpoint_policy(policy, env)
    probe = _make_env(env, 1, data_dir, env_config)  # a bad setting or data dir is named here, before Ray
    simulator = probe.simulator
    if env == "movielens":
        spec = DatasetSpec(shape="disjoint", context_dim=simulator.single_observation_space.shape[0],
                           arm_ids=[str(movie) for movie in simulator.factorization.item_ids])
    else:
        spec = DatasetSpec(shape="shared", context_dim=simulator.features.global_features.shape[1],
                           arm_dim=simulator.features.arm_features.shape[1],
                           context_names=simulator.features.global_feature_names,
                           arm_feature_names=simulator.features.arm_feature_names)
    if checkpoint_state is not None:
        fields = checkpoint_state["fields"]
        if fields["shape"] != spec.shape or fields["context_dim"] != spec.context_dim or (
                spec.shape == "shared" and fields["arm_dim"] != spec.arm_dim) or (
                spec.shape == "disjoint" and fields["num_arms"] != len(spec.arm_ids)):
            raise ValueError(f"--policy {policy}: its model ({fields['shape']}, context {fields['context_dim']}, "
                             f"arm features {fields['arm_dim']}, arms {fields['num_arms']}) does not fit --env {env} "
                             f"({spec.shape}, context {spec.context_dim}, arm features {spec.arm_dim}, arms "
                             f"{len(spec.arm_ids or [])})")
    spec.producer = {"command": "collect", "env": env, "env_config": env_config, "policy": policy, "steps": steps,
                     "seed": seed, "workers": workers, "num_envs": num_envs, "epsilon": epsilon,
                     "temperature": temperature}
    write_dataset(out, spec, [])  # dataset.json, and no file of an earlier run
    shares = [steps // workers + (1 if w < steps % workers else 0) for w in range(workers)]
    arguments = dict(out=str(Path(out).resolve()), env=env, policy=policy if checkpoint_state is None else "checkpoint",
                     data_dir=data_dir, env_config=env_config, spec=spec, num_envs=num_envs, epsilon=epsilon,
                     temperature=temperature, seed=seed, checkpoint_state=checkpoint_state,
                     rows_per_file=rows_per_file)
    if workers == 1:
        results = [collect_part(0, shares[0], **arguments)]
    else:
        import ray

        from recbandits.cluster import connect
        from recbandits.verbosity import quiet_libraries

        quiet_libraries()
        connect(address)
        task = ray.remote(num_cpus=1)(collect_part)
        results = ray.get([task.remote(w, share, **arguments) for w, share in enumerate(shares) if share])
    rows = sum(result["rows"] for result in results)
    return {"out": str(out), "rows": rows, "files": sum(len(result["files"]) for result in results),
            "mean_reward": sum(result["reward_sum"] for result in results) / rows,
            "policy_value": (sum(result["value_sum"] for result in results) / rows
                             if env != "movielens-ranking" and (checkpoint_state is None or results[0]["value_sum"])
                             else None)}


def _checkpoint_policy(path: str, env: str) -> dict[str, Any]:
    from recbandits.algos.candidates import module_policy_fields
    from recbandits.algos.checkpoints import load_linear_module

    module = load_linear_module(path, "logs collect")
    return {"fields": module_policy_fields(module), "state": module.get_state()}
