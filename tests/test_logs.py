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
    ({"event_id": "e0"}, "row 1 column event_id: duplicate event id 'e0'"),
    ({"action_probabilities": [0.5, 0.5, 0.5]}, "row 1 column action_probabilities: not a probability distribution"),
    ({"reward_source": "guess"}, "row 1 column reward_source: 'guess' is not one of observed, default_on_expiry"),
]


@pytest.mark.parametrize(("change", "message"), BAD_ROWS)
def test_a_bad_row_is_named_by_file_row_and_column(tmp_path, change, message):
    spec = DatasetSpec(shape="disjoint", context_dim=3, arm_ids=["a", "b", "c"])
    rows = _disjoint_rows(np.random.default_rng(1), 3)
    rows[1].update(change)
    # Written by another tool (pyarrow directly): the reader validates it.
    write_dataset(tmp_path, spec, [])
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "part-00000.parquet")
    with pytest.raises(LogFormatError, match=f"^part-00000.parquet {message}"):
        read_dataset(tmp_path)
    # The writer refuses the same rows, and writes nothing of them.
    with pytest.raises(LogFormatError, match=message):
        write_dataset(tmp_path / "out", spec, [rows])
    assert not list((tmp_path / "out").glob("*.parquet"))


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

        chosen = np.array([row["candidate_features"][row["candidates"].index(row["action"])] for row in rewarded])
        features = candidate_features(torch.from_numpy(contexts), torch.from_numpy(chosen)[:, None], True)[:, 0]
        expected = [_ridge(features.numpy(), rewards, lambda_=0.5)]
    theta = np.stack([value[0] for value in expected])
    covariance = np.stack([value[1] for value in expected])
    for files, options in ((1, {"use_ray": False}), (3, {"use_ray": False}), (1, {"workers": 1}),
                           (3, {"workers": 1, "batch_rows": 50}), (3, {"workers": 2, "batch_rows": 50})):
        out = tmp_path / f"out-{files}-{options}"
        summary = train(tmp_path / f"data{files}", "linucb", out, {"lambda_": 0.5}, **options)
        assert summary["rows"] == 300 and summary["learned_rows"] == len(rewarded)
        if "batch_rows" in options:  # 300 rows: 6 batches or more, reduced in parallel with 2 workers
            assert summary["batches"] >= 6
        learned_theta, learned_covariance, counts = _learned(out)
        np.testing.assert_allclose(learned_theta, theta, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(learned_covariance, covariance, rtol=1e-6, atol=1e-6)
        assert counts.sum() == len(rewarded)


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
