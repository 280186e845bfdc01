"""The logged-feedback dataset: its schema and validation, and offline training on it (exact ridge statistics)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recbandits.logs.dataset import DatasetSpec, LogFormatError, read_dataset, write_dataset


def _disjoint_rows(rng, count, arms=("a", "b", "c"), dim=3, start=0):
    rows = []
    for index in range(start, start + count):
        action = arms[int(rng.integers(len(arms)))]
        rows.append({"event_id": f"e{index}", "timestamp": float(index), "context": rng.normal(size=dim).tolist(),
                     "candidates": list(arms), "action": action, "propensity": 1.0 / len(arms),
                     "action_probabilities": [1.0 / len(arms)] * len(arms),
                     "reward": float(rng.normal()) if index % 5 else None, "reward_source": None,
                     "policy": "uniform"})
    return rows


def _shared_rows(rng, count, dim=2, arm_dim=3, start=0):
    rows = []
    for index in range(start, start + count):
        candidates = [f"m{k}" for k in rng.choice(50, size=4, replace=False)]
        rows.append({"event_id": f"s{index}", "context": rng.normal(size=dim).tolist(), "candidates": candidates,
                     "candidate_features": rng.normal(size=(4, arm_dim)).tolist(),
                     "action": candidates[int(rng.integers(4))], "reward": float(rng.normal()), "policy": "ratings"})
    return rows


def _ridge(features, rewards, lambda_=1.0):
    precision = lambda_ * np.eye(features.shape[1]) + features.T @ features
    return np.linalg.solve(precision, features.T @ rewards), np.linalg.inv(precision)


def test_a_written_dataset_reads_back_with_nulls_for_what_rows_leave_out(tmp_path):
    spec = DatasetSpec(shape="disjoint", context_dim=3, arm_ids=["a", "b", "c"])
    rows = _disjoint_rows(np.random.default_rng(0), 10)
    write_dataset(tmp_path, spec, [rows[:6], rows[6:]])
    dataset = read_dataset(tmp_path)
    assert [path.name for path in dataset.files] == ["part-00000.parquet", "part-00001.parquet"]
    assert dataset.frame["event_id"].tolist() == [f"e{i}" for i in range(10)]
    assert dataset.frame["reward"].isna().tolist() == [i % 5 == 0 for i in range(10)]
    assert dataset.frame["candidate_features"].isna().all() and dataset.frame["position"].isna().all()
    assert DatasetSpec.read(tmp_path) == spec


BAD_ROWS = [
    ({"context": [1.0, 2.0]}, "row 1 column context: 2 values, the dataset's context_dim is 3"),
    ({"context": [1.0, float("nan"), 0.0]}, "row 1 column context: NaN or infinite value"),
    ({"reward": float("inf")}, "row 1 column reward: NaN or infinite"),
    ({"propensity": 0.0, "action_probabilities": None}, r"row 1 column propensity: 0.0 is outside \(0, 1\]"),
    ({"propensity": 1.5, "action_probabilities": None}, r"row 1 column propensity: 1.5 is outside \(0, 1\]"),
    ({"action": "z"}, "row 1 column action: 'z' is not among the row's candidates"),
    ({"candidates": ["a", "q"], "action": "a"}, "row 1 column candidates: 'q' is not one of the dataset's arm_ids"),
    ({"event_id": "e0"}, r"row 1 column event_id: duplicate event id 'e0' \(also in an earlier row of this file\)"),
    ({"action_probabilities": [0.5, 0.5, 0.5]}, "row 1 column action_probabilities: not a probability distribution"),
    ({"reward_source": "guess"}, "row 1 column reward_source: 'guess' is not one of observed, default_on_expiry"),
    ({"position": 3}, "row 1 column position: 3 is not one of the row's 3 slots"),
    ({"slot_rewards": [1.0]}, "row 1 column slot_rewards: 1 values for 3 candidates"),
    ({"slot_rewards": [1.0, float("inf"), 0.0]}, "row 1 column slot_rewards: NaN or infinite value"),
    ({"candidates": ["a", None, "c"], "action": "a"}, "row 1 column candidates: a null candidate id"),
    ({"action": "a", "position": 1}, r"row 1 column position: 1 is not the slot of the action \(0\)"),
    ({"timestamp": float("inf")}, "row 1 column timestamp: NaN or infinite"),
    ({"expected_rewards": [0.1, float("nan"), 0.2]}, "row 1 column expected_rewards: NaN or infinite value"),
    ({"slot_propensities": [0.5]}, "row 1 column slot_propensities: given without a slate"),
    # Rankings: the slate shown, its prefixes' probabilities, feedback per slot.
    ({"action": "a", "slate": ["a", "a"]}, "row 1 column slate: repeated id"),
    ({"action": "a", "slate": ["a", "z"]}, "row 1 column slate: an id that is not among the row's candidates"),
    ({"action": "a", "slate": ["b", "a"]}, "row 1 column action: 'a' is not the slate's top item"),
    ({"action": "a", "slate": ["a", "b"], "slot_propensities": [1 / 3, 0.5]},
     r"row 1 column slot_propensities: not the probabilities of a slate's prefixes \(in \(0, 1\], never rising\)"),
    ({"action": "a", "slate": ["a", "b"], "slot_propensities": [1 / 3]},
     "row 1 column slot_propensities: 1 values for a slate of 2"),
    ({"slot_marginals": [0.5]}, "row 1 column slot_marginals: given without a slate"),
    ({"action": "a", "slate": ["a", "b"], "slot_marginals": [0.5]},
     "row 1 column slot_marginals: 1 values for a slate of 2"),
    ({"action": "a", "slate": ["a", "b"], "slot_marginals": [0.5, 0.0]},
     r"row 1 column slot_marginals: not in \(0, 1\]"),
    ({"action": "a", "slate": ["a", "b"], "slot_propensities": [0.2, 0.1]},
     r"row 1 column propensity: 0.333333+ differs from slot_propensities\[0\]"),
    ({"action": "a", "slate": ["a", "b"], "slot_rewards": [1.0, 0.0, 0.0]},
     "row 1 column slot_rewards: 3 values for 2 slots"),
    ({"action": "a", "slate": ["a", "b"], "position": 2}, "row 1 column position: 2 is not one of the row's 2 slots"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ROWS)
def test_a_bad_row_is_named_by_file_row_and_column(tmp_path, change, message):
    spec = DatasetSpec(shape="disjoint", context_dim=3, arm_ids=["a", "b", "c"])
    rows = _disjoint_rows(np.random.default_rng(1), 3)
    rows[1].update(change)
    rows = [{key: row.get(key) for key in sorted({key for row in rows for key in row})} for row in rows]
    # Written by another tool (pyarrow directly): the reader validates it.
    write_dataset(tmp_path, spec, [])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-00000.parquet")
    with pytest.raises(LogFormatError, match=f"^part-00000.parquet {message}"):
        read_dataset(tmp_path)
    # The writer refuses the same rows, and writes nothing of them.
    with pytest.raises(LogFormatError, match=message):
        write_dataset(tmp_path / "out", spec, [rows])
    assert not list((tmp_path / "out").glob("*.parquet"))


def test_an_event_id_in_two_files_names_both(tmp_path):
    spec = DatasetSpec(shape="disjoint", context_dim=3, arm_ids=["a", "b", "c"])
    rows = _disjoint_rows(np.random.default_rng(1), 3)
    with pytest.raises(LogFormatError, match=r"^part-00001.parquet row 2 column event_id: duplicate event id 'e2' "
                                             r"\(also in part-00000.parquet\)$"):
        write_dataset(tmp_path, spec, [rows, _disjoint_rows(np.random.default_rng(2), 3, start=10)[:2] + rows[2:]])


def test_missing_columns_files_and_spec_are_named(tmp_path):
    spec = DatasetSpec(shape="shared", context_dim=2, arm_dim=3)
    write_dataset(tmp_path, spec, [])
    with pytest.raises(LogFormatError, match="no .parquet files"):
        read_dataset(tmp_path)
    pq.write_table(pa.table({"event_id": ["x"], "context": [[1.0, 2.0]]}), tmp_path / "part-00000.parquet")
    with pytest.raises(LogFormatError, match="part-00000.parquet: missing column.s. candidates, action, policy"):
        read_dataset(tmp_path)
    rows = _shared_rows(np.random.default_rng(2), 2)
    rows[1]["candidate_features"] = rows[1]["candidate_features"][:3]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-00000.parquet")
    with pytest.raises(LogFormatError, match="row 1 column candidate_features: 3 rows for 4 candidates"):
        read_dataset(tmp_path)
    with pytest.raises(LogFormatError, match="dataset.json: missing"):
        read_dataset(tmp_path / "nowhere" if False else tmp_path.parent / "no-such-dataset")
    (tmp_path / "dataset.json").write_text('{"shape": "disjoint", "context_dim": 2}')
    with pytest.raises(LogFormatError, match="a disjoint dataset names its arm_ids"):
        read_dataset(tmp_path)


def _learned(out):
    from recbandits.algos.checkpoints import load_module

    module = load_module(out)
    return module.theta.numpy(), module.covariance.numpy(), module.counts.numpy()


@pytest.mark.usefixtures("ray_local")
@pytest.mark.parametrize("shape", ["disjoint", "shared"])
def test_offline_training_equals_the_closed_form_ridge_for_any_files_and_workers(tmp_path, shape):
    from recbandits.algos.kernel import candidate_features
    from recbandits.jobs.train import train

    rng = np.random.default_rng(7)
    if shape == "disjoint":
        spec = DatasetSpec(shape="disjoint", context_dim=3, arm_ids=["a", "b", "c"])
        rows = _disjoint_rows(rng, 300)
    else:
        spec = DatasetSpec(shape="shared", context_dim=2, arm_dim=3)
        rows = _shared_rows(rng, 300)
        for row in rows[::3]:  # every candidate's feedback: all four are learned
            row["slot_rewards"] = rng.normal(size=4).tolist()
            row["position"] = row["candidates"].index(row["action"])
    for files in (1, 3):
        write_dataset(tmp_path / f"data{files}", spec, [rows[i::files] for i in range(files)])
    rewarded = [row for row in rows if row["reward"] is not None]
    rewards = np.array([row["reward"] for row in rewarded])
    contexts = np.array([row["context"] for row in rewarded])
    if shape == "disjoint":
        expected = []
        for arm in spec.arm_ids:
            mine = np.array([row["action"] == arm for row in rewarded])
            expected.append(_ridge(contexts[mine], rewards[mine], lambda_=0.5))
    else:
        import torch

        learned = []  # (context, candidate features, reward) of every learning row
        for row in rewarded:
            if "slot_rewards" in row:
                learned += zip([row["context"]] * 4, row["candidate_features"], row["slot_rewards"], strict=True)
            else:
                learned.append((row["context"], row["candidate_features"][row["candidates"].index(row["action"])],
                                row["reward"]))
        contexts, chosen, rewards = (np.array(column) for column in zip(*learned, strict=True))
        features = candidate_features(torch.from_numpy(contexts), torch.from_numpy(chosen)[:, None], True)[:, 0]
        expected = [_ridge(features.numpy(), rewards, lambda_=0.5)]
    theta = np.stack([value[0] for value in expected])
    covariance = np.stack([value[1] for value in expected])
    for files, options in ((1, {"use_ray": False}), (3, {"use_ray": False}), (1, {"workers": 1}),
                           (3, {"workers": 1, "batch_rows": 50}), (3, {"workers": 2, "batch_rows": 50})):
        out = tmp_path / f"out-{files}-{options}"
        summary = train(tmp_path / f"data{files}", "linucb", out, {"lambda_": 0.5}, **options)
        assert summary["rows"] == 300 and summary["learned_rows"] == len(rewards)
        if "batch_rows" in options:  # 300 rows: 6 batches or more, reduced in parallel with 2 workers
            assert summary["batches"] >= 6
        learned_theta, learned_covariance, counts = _learned(out)
        np.testing.assert_allclose(learned_theta, theta, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(learned_covariance, covariance, rtol=1e-6, atol=1e-6)
        assert counts.sum() == len(rewards)


def test_a_file_without_rows_adds_nothing(tmp_path):
    from recbandits.jobs.train import train

    spec = DatasetSpec(shape="shared", context_dim=2, arm_dim=3)
    rows = _shared_rows(np.random.default_rng(3), 40)
    write_dataset(tmp_path / "data", spec, [rows, []])
    write_dataset(tmp_path / "empty", spec, [[]])
    assert train(tmp_path / "data", "linucb", tmp_path / "out", use_ray=False)["learned_rows"] == 40
    assert train(tmp_path / "empty", "linucb", tmp_path / "none", use_ray=False)["learned_rows"] == 0
    np.testing.assert_array_equal(_learned(tmp_path / "none")[2], [0.0])


def test_training_refuses_what_it_cannot_learn_before_ray_starts(tmp_path):
    from recbandits.jobs.train import train

    spec = DatasetSpec(shape="disjoint", context_dim=3, arm_ids=["a", "b", "c"])
    write_dataset(tmp_path / "data", spec, [_disjoint_rows(np.random.default_rng(0), 5)])
    with pytest.raises(ValueError, match="--algo 'random': offline training takes linucb, lints, eps-greedy"):
        train(tmp_path / "data", "random", tmp_path / "out")
    with pytest.raises(ValueError, match="--interaction applies to shared"):
        train(tmp_path / "data", "linucb", tmp_path / "out", {"interaction": True})
    with pytest.raises(ValueError, match="lambda_=-1.0 must be > 0"):
        train(tmp_path / "data", "linucb", tmp_path / "out", {"lambda_": -1.0})
    assert not (tmp_path / "out").exists()


def test_offline_training_on_the_service_export_reproduces_the_service_statistics(tmp_path):
    """A real BanditCore: rewards (several per event under rule "sum"), defaults on expiry, a quarantined record;
    its export, trained offline, gives the statistics the service learned."""
    import asyncio

    from recbandits.jobs.train import train
    from recbandits.serve.config import ServeConfig
    from recbandits.serve.core import BanditCore
    from recbandits.serve.export import export_log
    from recbandits.serve.state import prepare_state_dir

    config = prepare_state_dir(ServeConfig(
        state_dir=str(tmp_path / "state"), context_dim=2, num_arms=3, arm_ids=["a", "b", "c"], reward_rule="sum",
        model_config={"exploration": "greedy", "lambda_": 1.0}, join_window_s=30.0, snapshot_interval_s=60.0,
        default_reward=-0.5))
    rng = np.random.default_rng(4)

    async def serve_some():
        core = BanditCore(config)
        rows = []
        for index in range(40):
            context = [1e8, 1e8] if index == 7 else rng.normal(size=2).tolist()
            arm = "abc"[index % 3]
            rows.append({"kind": "decision", "event_id": f"e{index}", "policy_version": core.version_id,
                         "watermark": core.watermark, "context": context, "candidates": None, "excluded": [],
                         "action": arm, "model": core.policy.arm_index[arm], "chosen_features": None,
                         "propensity": 1.0, "exploration": "greedy"})
        await core.log_decisions(rows)
        for index in range(40):
            if index % 4 != 3:
                await core.record_reward(f"e{index}", float(rng.normal()))
            if index % 5 == 0:
                await core.record_reward(f"e{index}", 1.0)  # a second reward of the same event
        await core.log.drain()
        core.learn(force=True)
        # The windows end: e3, e7, e11, ... got no reward and learn the default; the others close as rewarded.
        assert core.expire_due(max(event.deadline for event in core.open.values()) + 1.0) == 40
        assert core.counters["expired_default"] == 8  # 10 without a reward, but e15 and e35 got the second one
        await core.log.drain()
        core.learn(force=True)
        await core.log.drain()
        state = core.policy.get_state()
        assert core.counters["quarantined"] == 1
        await core.close()
        return state

    service_state = asyncio.run(serve_some())
    summary = export_log(config.state_path, tmp_path / "export")
    assert summary["decisions"] == 40 and summary["quarantined_records"] == 1
    exported = read_dataset(tmp_path / "export").frame.set_index("event_id")
    assert exported.loc["e3", "reward_source"] == "default_on_expiry" and exported.loc["e3", "reward"] == -0.5
    assert np.isnan(exported.loc["e7", "reward"])  # quarantined (a context of 1e8): the service learned nothing
    assert exported.loc["e5", "reward_source"] == "observed" and exported["reward"].notna().sum() == 39
    assert exported.loc["e0", "candidates"].tolist() == ["a", "b", "c"]
    train(tmp_path / "export", "linucb", tmp_path / "trained", {"lambda_": 1.0}, use_ray=False)
    with pytest.raises(ValueError, match=r"export is not a service state dir \(no service.json\)"):
        export_log(tmp_path / "export", tmp_path / "refused")
    from recbandits.algos.checkpoints import load_module

    offline = load_module(tmp_path / "trained").get_state()
    for name in ("data_precision", "data_response", "response_square", "counts"):
        np.testing.assert_allclose(offline[name], service_state[name], rtol=1e-9, atol=1e-9, err_msg=name)


@pytest.mark.usefixtures("ray_local")
def test_collect_logs_exact_propensities_and_the_ground_truth_in_parallel(small_data_dir, tmp_path):
    from recbandits.jobs.collect import collect, logging_probabilities

    summary = collect("movielens-per-arm", "softmax", 1_500, tmp_path / "soft", data_dir=small_data_dir,
                      env_config={"rank": 4, "num_actions": 5}, workers=2, num_envs=256, temperature=0.5)
    frame = read_dataset(tmp_path / "soft").frame
    assert summary["rows"] == len(frame) == 1_500 and summary["files"] == 2
    expected = np.stack(frame["expected_rewards"].to_numpy())
    probabilities = np.stack(frame["action_probabilities"].to_numpy())
    np.testing.assert_allclose(probabilities, logging_probabilities("softmax", expected, 0.0, 0.5), rtol=1e-12)
    actions = np.array([list(row["candidates"]).index(row["action"]) for _, row in frame.iterrows()])
    np.testing.assert_array_equal(frame["propensity"], probabilities[np.arange(len(frame)), actions])
    # Rating rewards without noise are the expected reward of the action: the ground truth is exact.
    np.testing.assert_allclose(frame["reward"], expected[np.arange(len(frame)), actions])
    assert summary["policy_value"] == pytest.approx((probabilities * expected).sum(1).mean())
    # The two workers simulate different users (sub-env seeds do not overlap).
    halves = [frame[frame["event_id"].str.startswith(f"w{w}-")]["context"].map(tuple) for w in (0, 1)]
    assert len(halves[0]) == len(halves[1]) == 750 and set(halves[0]) != set(halves[1])


def test_collect_with_a_trained_checkpoint_logs_its_greedy_probabilities(small_data_dir, tmp_path):
    from recbandits.jobs.collect import collect
    from recbandits.jobs.train import train

    collect("movielens", "uniform", 2_000, tmp_path / "uniform", data_dir=small_data_dir,
            env_config={"rank": 3, "num_movies": 4}, num_envs=500)
    uniform = read_dataset(tmp_path / "uniform").frame
    assert set(uniform["propensity"]) == {0.25}
    train(tmp_path / "uniform", "eps-greedy", tmp_path / "model", {"epsilon": 0.2}, use_ray=False)
    summary = collect("movielens", str(tmp_path / "model"), 1_000, tmp_path / "learned", data_dir=small_data_dir,
                      env_config={"rank": 3, "num_movies": 4}, num_envs=500)
    frame = read_dataset(tmp_path / "learned").frame
    probabilities = np.stack(frame["action_probabilities"].to_numpy())
    # eps-greedy over 4 arms: 0.05 for each arm and 0.85 for the greedy one (ties are rare with real contexts).
    assert set(np.round(probabilities.max(1), 12)) == {0.85} and set(np.round(probabilities.min(1), 12)) == {0.05}
    assert summary["mean_reward"] > uniform["reward"].mean()  # it learned something from the uniform logs


def test_collect_refuses_what_it_cannot_log(small_data_dir, tmp_path):
    from recbandits.jobs.collect import collect
    from recbandits.jobs.train import train

    with pytest.raises(ValueError, match="--env 'cartpole': logs collect takes movielens, movielens-per-arm, "
                                         "movielens-ranking"):
        collect("cartpole", "uniform", 10, tmp_path / "x", data_dir=small_data_dir)
    with pytest.raises(ValueError, match="--temperature 0.0 must be > 0"):
        collect("movielens", "softmax", 10, tmp_path / "x", data_dir=small_data_dir, temperature=0.0)
    with pytest.raises(ValueError, match="no RLModule checkpoint"):
        collect("movielens", str(tmp_path), 10, tmp_path / "x", data_dir=small_data_dir)
    collect("movielens", "uniform", 100, tmp_path / "mf", data_dir=small_data_dir, env_config={"rank": 3})
    train(tmp_path / "mf", "linucb", tmp_path / "model", use_ray=False)
    with pytest.raises(ValueError, match=r"does not fit --env movielens-per-arm \(shared, context 3"):
        collect("movielens-per-arm", str(tmp_path / "model"), 10, tmp_path / "x", data_dir=small_data_dir,
                env_config={"rank": 3})


def test_collect_logs_slates_with_exact_prefix_probabilities_and_training_learns_the_examined_slots(
        small_data_dir, tmp_path):
    import torch

    from recbandits.algos.kernel import candidate_features
    from recbandits.jobs.collect import collect
    from recbandits.jobs.train import train

    settings = {"rank": 4, "num_candidates": 6, "slate_size": 3}
    summary = collect("movielens-ranking", "softmax", 4_000, tmp_path / "soft", data_dir=small_data_dir,
                      env_config=settings, num_envs=500, temperature=0.25)
    frame = read_dataset(tmp_path / "soft").frame
    assert summary["rows"] == len(frame) == 4_000 and summary["policy_value"] is None
    attraction = np.stack(frame["expected_rewards"].to_numpy())
    slates = np.array([[list(row["candidates"]).index(item) for item in row["slate"]] for _, row in frame.iterrows()])
    # Plackett-Luce prefix probabilities, recomputed from the logged attractions.
    weights = np.exp((attraction - attraction.max(1, keepdims=True)) / 0.25)
    rows = np.arange(len(frame))[:, None]
    chosen = weights[rows, slates]
    left = weights.sum(1, keepdims=True) - np.concatenate([np.zeros((len(frame), 1)), chosen.cumsum(1)[:, :-1]], 1)
    prefixes = np.cumprod(chosen / left, axis=1)
    np.testing.assert_allclose(np.stack(frame["slot_propensities"].to_numpy()), prefixes, rtol=1e-12)
    np.testing.assert_allclose(frame["propensity"], prefixes[:, 0], rtol=1e-12)
    assert frame["slot_marginals"].isna().all()  # Plackett-Luce marginals have no closed form: not logged
    assert (frame["action"] == frame["slate"].map(lambda slate: slate[0])).all()
    # The sampler draws what it reports: the best two candidates on top, in order, as often as their probability.
    best = np.argsort(-attraction, axis=1, kind="stable")[:, :2]
    best_chosen = weights[rows, best]
    best_left = weights.sum(1, keepdims=True) - np.concatenate([np.zeros((len(frame), 1)), best_chosen[:, :1]], 1)
    probability = np.prod(best_chosen / best_left, axis=1)
    drawn = (slates[:, :2] == best).all(1)
    assert abs(drawn.mean() - probability.mean()) < 4 * np.sqrt((probability * (1 - probability)).sum()) / len(frame)
    # Cascading feedback: zeros down to the click, a 1 there, the slots below not examined (null).
    for _, row in frame.head(300).iterrows():
        feedback = list(row["slot_rewards"])
        if row["position"] is None or np.isnan(row["position"]):
            assert feedback == [0.0, 0.0, 0.0] and row["reward"] == 0.0
        else:
            at = int(row["position"])
            assert feedback[:at + 1] == [0.0] * at + [1.0] and all(value is None or np.isnan(value)
                                                                   for value in feedback[at + 1:])
            assert row["reward"] == 1.0

    # Offline training learns every examined slot's candidate: the closed-form ridge over those.
    learned = []
    for index, row in frame.iterrows():
        for slot, value in enumerate(row["slot_rewards"]):
            if value is not None and not np.isnan(value):
                learned.append((row["context"], row["candidate_features"][slates[index, slot]], value))
    contexts, features, rewards = (np.array([item[k] for item in learned], dtype=np.float64) for k in range(3))
    inputs = candidate_features(torch.from_numpy(contexts), torch.from_numpy(features)[:, None], True)[:, 0].numpy()
    theta, covariance = _ridge(inputs, rewards)
    train(tmp_path / "soft", "linucb", tmp_path / "trained", use_ray=False, batch_rows=700)
    learned_theta, learned_covariance, counts = _learned(tmp_path / "trained")
    assert counts.sum() == len(rewards) > 4_000
    np.testing.assert_allclose(learned_theta[0], theta, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(learned_covariance[0], covariance, rtol=1e-6, atol=1e-6)

    # Uniform and eps-greedy slates; position-based clicks give feedback on every slot.
    collect("movielens-ranking", "uniform", 500, tmp_path / "uniform", data_dir=small_data_dir, env_config=settings)
    uniform = read_dataset(tmp_path / "uniform").frame
    np.testing.assert_allclose(np.stack(uniform["slot_propensities"].to_numpy()),
                               np.tile([1 / 6, 1 / 30, 1 / 120], (500, 1)), rtol=1e-12)
    np.testing.assert_allclose(np.stack(uniform["slot_marginals"].to_numpy()), np.full((500, 3), 1 / 6), rtol=1e-12)
    collect("movielens-ranking", "eps-greedy", 2_000, tmp_path / "greedy", data_dir=small_data_dir, epsilon=0.2,
            env_config={**settings, "choice_model": "position_based"})
    greedy = read_dataset(tmp_path / "greedy").frame
    attraction = np.stack(greedy["expected_rewards"].to_numpy())
    oracle = np.argsort(-attraction, axis=1, kind="stable")[:, :3]
    slates = np.array([[list(row["candidates"]).index(item) for item in row["slate"]] for _, row in greedy.iterrows()])
    exploit = (slates == oracle).all(1)
    assert abs(exploit.mean() - (0.8 + 0.2 / 120)) < 0.04
    # Each slot holds the oracle's item with probability 0.8 + 0.2 / 6, as logged and as often.
    np.testing.assert_allclose(np.stack(greedy["slot_marginals"].to_numpy()),
                               np.where(slates == oracle, 0.8 + 0.2 / 6, 0.2 / 6), rtol=1e-12)
    assert abs((slates == oracle).mean() - (0.8 + 0.2 / 6)) < 0.03
    np.testing.assert_allclose(np.stack(greedy["slot_propensities"][exploit].to_numpy()),
                               0.8 + 0.2 * np.tile([1 / 6, 1 / 30, 1 / 120], (int(exploit.sum()), 1)), rtol=1e-12)
    slot_rewards = np.stack(greedy["slot_rewards"].to_numpy())
    assert np.isfinite(slot_rewards).all()
    np.testing.assert_array_equal(slot_rewards.sum(1), greedy["reward"])

    # Plackett-Luce prefix probabilities stay exact at low temperature (in log space, no cancellation).
    from recbandits.jobs.collect import sample_slates

    for temperature in (0.03, 0.02, 0.001):
        _, prefixes = sample_slates("softmax", np.array([[1.0, 0.0, 0.0, 0.0]]), 2, 0.0, temperature,
                                    np.random.default_rng(0))
        assert np.isfinite(prefixes).all() and 0 < prefixes[0, 1] <= prefixes[0, 0] <= 1
    _, prefixes = sample_slates("softmax", np.array([[0.0, 0.0, 0.0, 0.0]]), 2, 0.0, 0.03, np.random.default_rng(0))
    np.testing.assert_allclose(prefixes, [[1 / 4, 1 / 12]], rtol=1e-12)

    with pytest.raises(ValueError, match="rankings are logged with uniform, eps-greedy, softmax, not a checkpoint"):
        collect("movielens-ranking", str(tmp_path / "trained"), 10, tmp_path / "refused", data_dir=small_data_dir)


def test_tf_agents_agents_train_offline_to_the_closed_form_ridge_and_their_checkpoints_load(tmp_path):
    """TF-Agents' LinUCB trained on a dataset predicts what the ridge regression of the same rows predicts (per arm;
    per-arm agents: on [global, arm] features); a neural agent takes one optimizer step per minibatch."""
    from recbandits.algos.checkpoints import load_module
    from recbandits.jobs.train import train

    rng = np.random.default_rng(7)
    disjoint = DatasetSpec(shape="disjoint", context_dim=3, arm_ids=["a", "b", "c"])
    rows = _disjoint_rows(rng, 300)
    write_dataset(tmp_path / "disjoint", disjoint, [rows[::2], rows[1::2]])
    summary = train(tmp_path / "disjoint", "tfa-linucb", tmp_path / "linucb", {"lambda_": 0.5})
    rewarded = [row for row in rows if row["reward"] is not None]
    assert summary["learned_rows"] == len(rewarded) and summary["engine"] == "tf-agents"
    contexts = np.array([row["context"] for row in rewarded])
    rewards = np.array([row["reward"] for row in rewarded])
    theta = np.stack([_ridge(contexts[[row["action"] == arm for row in rewarded]],
                             rewards[[row["action"] == arm for row in rewarded]], 0.5)[0] for arm in "abc"])
    probe = rng.normal(size=(5, 3)).astype(np.float32)
    _, predicted = load_module(tmp_path / "linucb").greedy_actions(probe)
    np.testing.assert_allclose(predicted, probe @ theta.T, rtol=1e-4, atol=1e-5)

    shared = DatasetSpec(shape="shared", context_dim=2, arm_dim=3)
    rows = _shared_rows(rng, 300)
    write_dataset(tmp_path / "shared", shared, [rows])
    train(tmp_path / "shared", "tfa-linucb", tmp_path / "per-arm", {"lambda_": 0.5})
    joined = np.array([row["context"] + row["candidate_features"][row["candidates"].index(row["action"])]
                       for row in rows])
    theta = _ridge(joined, np.array([row["reward"] for row in rows]), 0.5)[0]
    observations = {"global": np.array([row["context"] for row in rows[:3]], np.float32),
                    "per_arm": np.array([row["candidate_features"] for row in rows[:3]], np.float32)}
    _, predicted = load_module(tmp_path / "per-arm").greedy_actions(observations)
    both = np.concatenate([np.repeat(observations["global"][:, None], 4, 1), observations["per_arm"]], 2)
    np.testing.assert_allclose(predicted, both @ theta, rtol=1e-4, atol=1e-5)

    # Neural: 120 learning rows per file, minibatches of 16: 8 optimizer steps per file.
    summary = train(tmp_path / "disjoint", "tfa-neural-eps-greedy", tmp_path / "neural")
    assert summary["batches"] == 2 and np.isfinite(summary["loss"])
    assert load_module(tmp_path / "neural").train_step == 16
    rows[5]["candidates"], rows[5]["candidate_features"] = rows[5]["candidates"][:3], rows[5]["candidate_features"][:3]
    rows[5]["action"] = rows[5]["candidates"][0]
    write_dataset(tmp_path / "ragged", shared, [rows])
    with pytest.raises(ValueError, match="TF-Agents' per-arm agents score a fixed number of candidates; the rows of "
                                         ".*ragged have 3, 4"):
        train(tmp_path / "ragged", "tfa-neural-linucb", tmp_path / "refused")


def test_a_log_without_decisions_exports_to_a_dataset_of_no_rows(tmp_path):
    import asyncio

    from recbandits.jobs.train import train
    from recbandits.serve.config import ServeConfig
    from recbandits.serve.core import BanditCore
    from recbandits.serve.export import export_log
    from recbandits.serve.state import prepare_state_dir

    config = prepare_state_dir(ServeConfig(state_dir=str(tmp_path / "state"), context_dim=2, num_arms=3))

    async def start_and_stop():
        await BanditCore(config).close()

    asyncio.run(start_and_stop())
    assert export_log(config.state_path, tmp_path / "out")["decisions"] == 0
    assert len(read_dataset(tmp_path / "out").frame) == 0
    assert train(tmp_path / "out", "linucb", tmp_path / "model", use_ray=False)["learned_rows"] == 0
