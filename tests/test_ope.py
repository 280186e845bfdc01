"""Off-policy estimators: hand-computed values on a tiny dataset, cross-fitting, and coverage of the true value on
simulator data (``logs collect`` knows every candidate's expected reward)."""

from __future__ import annotations

import numpy as np
import pytest

from recbandits.ope.estimators import LoggedRows, estimate, support


def _tiny() -> LoggedRows:
    # Three rows, two candidates. The target always picks candidate 0.
    return LoggedRows(rewards=np.array([1.0, 0.0, 2.0]), actions=np.array([0, 1, 0]),
                      propensities=np.array([0.5, 0.25, 0.8]),
                      target=np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]),
                      predictions=np.array([[0.8, 0.1], [0.6, 0.2], [1.5, 0.3]]),
                      logging=np.array([[0.5, 0.5], [0.75, 0.25], [0.8, 0.2]]))


def test_every_estimator_gives_its_hand_computed_value():
    rows = _tiny()
    # w = [1/0.5, 0/0.25, 1/0.8] = [2, 0, 1.25]; residuals r - q(a) = [0.2, -0.2, 0.5]; dm terms = [0.8, 0.6, 1.5]
    np.testing.assert_allclose(rows.weights, [2.0, 0.0, 1.25])
    expected = {
        "dm": (0.8 + 0.6 + 1.5) / 3,
        "ips": (2.0 * 1.0 + 0.0 + 1.25 * 2.0) / 3,
        "snips": (2.0 + 2.5) / 3.25,
        "dr": ((0.8 + 2 * 0.2) + 0.6 + (1.5 + 1.25 * 0.5)) / 3,
        "sndr": (0.8 + 0.6 + 1.5) / 3 + (2 * 0.2 + 1.25 * 0.5) / 3.25,
        "switch-dr": ((0.8 + 0.0) + 0.6 + (1.5 + 1.25 * 0.5)) / 3,  # tau 1.5: the weight 2 row falls back on dm
        "clipped-ips": (1.5 * 1.0 + 0.0 + 1.25 * 2.0) / 3,  # tau 1.5
    }
    for name, value in expected.items():
        result = estimate(name, rows, tau=1.5)
        assert result.value == pytest.approx(value, rel=1e-12), name
    ips = estimate("ips", rows)
    terms = np.array([2.0, 0.0, 2.5])
    half = 1.959963984540054 * terms.std(ddof=1) / np.sqrt(3)
    assert ips.normal_interval == pytest.approx((terms.mean() - half, terms.mean() + half), rel=1e-9)
    assert ips.effective_sample_size == pytest.approx(3.25 ** 2 / (4 + 1.5625)) and ips.max_weight == 2.0
    # SNIPS' normal interval: the delta method, psi_i = w_i (r_i - V) / mean(w).
    value = 4.5 / 3.25
    psi = np.array([2.0, 0.0, 1.25]) * (np.array([1.0, 0.0, 2.0]) - value) / (3.25 / 3)
    half = 1.959963984540054 * np.sqrt((psi ** 2).sum() / 2 / 3)
    assert estimate("snips", rows).normal_interval == pytest.approx((value - half, value + half), rel=1e-9)
    assert estimate("dm", rows).effective_sample_size is None
    # Every resample's SNIPS is a weighted mean of the weighted rows' rewards (1 and 2).
    low, high = estimate("snips", rows, bootstrap=300, seed=1).bootstrap_interval
    assert 1.0 <= low < high <= 2.0
    with pytest.raises(ValueError, match="estimator 'dm' needs a reward model's predictions"):
        estimate("dm", LoggedRows(rows.rewards, rows.actions, rows.propensities, rows.target))
    with pytest.raises(ValueError, match="estimator 'magic' is not one of dm, ips, snips"):
        estimate("magic", rows)


def test_without_any_propensity_the_weighted_estimators_say_so_instead_of_zero():
    rows = _tiny()
    rows.propensities[:] = np.nan
    for name in ("ips", "snips", "dr", "sndr", "switch-dr", "clipped-ips"):
        result = estimate(name, rows, bootstrap=20)
        assert np.isnan(result.value) and result.normal_interval is None and result.bootstrap_interval is None
        assert result.details == {"reason": "no row has a logged propensity"}, name
    assert estimate("dm", rows).value == pytest.approx((0.8 + 0.6 + 1.5) / 3)


def test_support_counts_unknown_propensities_and_mass_the_logging_policy_never_puts():
    rows = _tiny()
    assert support(rows) == {"unknown_propensity_share": 0.0, "target_mass_off_support": 0.0}
    rows.propensities[1] = np.nan  # unknown: no weight, and its target mass is off support
    rows.logging[2] = [0.0, 1.0]  # the target's candidate 0 never logged there
    rows.actions[2] = 1
    rows.propensities[2] = 1.0
    assert rows.weights.tolist() == [2.0, 0.0, 0.0]
    assert support(rows) == {"unknown_propensity_share": pytest.approx(1 / 3), "target_mass_off_support": 2 / 3}


def test_cross_fitted_predictions_come_from_the_other_folds(small_data_dir, tmp_path):
    from recbandits.jobs.collect import collect
    from recbandits.logs import read_dataset
    from recbandits.ope.evaluation import decisions_of, folds_of, reward_model_predictions

    collect("movielens", "uniform", 300, tmp_path / "log", data_dir=small_data_dir,
            env_config={"rank": 3, "num_movies": 4})
    dataset = read_dataset(tmp_path / "log")
    decisions = decisions_of(dataset)
    fields = {"shape": "disjoint", "context_dim": dataset.spec.context_dim, "num_arms": 4, "arm_dim": 0,
              "arm_ids": dataset.spec.arm_ids, "interaction": False}
    predictions = reward_model_predictions(decisions, fields, folds=3, seed=5)
    fold_of = folds_of(decisions.event_ids, 3, seed=5)
    assert sorted(np.bincount(fold_of).tolist())[0] > 70  # a hash of the event id splits the rows about evenly
    contexts = np.stack([job.context for job in decisions.jobs])
    for fold in range(3):
        train = fold_of != fold
        for arm in range(4):
            mine = train & (decisions.actions == arm)
            x, y = contexts[mine], decisions.rewards[mine]
            theta = np.linalg.solve(np.eye(x.shape[1]) + x.T @ x, x.T @ y)
            np.testing.assert_allclose(predictions[~train, arm], contexts[~train] @ theta, rtol=1e-9, atol=1e-9)


@pytest.fixture(scope="module")
def per_arm_world(small_data_dir, tmp_path_factory):
    """A target model trained on one logged dataset, and 40,000 softmax-logged decisions to evaluate it on."""
    from recbandits.algos.checkpoints import load_module
    from recbandits.jobs.collect import collect
    from recbandits.jobs.train import train
    from recbandits.logs import read_dataset

    out = tmp_path_factory.mktemp("ope")
    settings = {"rank": 4, "num_actions": 5, "reward_noise_std": 0.5}
    collect("movielens-per-arm", "uniform", 3_000, out / "train", data_dir=small_data_dir, env_config=settings,
            seed=100)
    train(out / "train", "linucb", out / "model", use_ray=False)
    collect("movielens-per-arm", "softmax", 40_000, out / "log", data_dir=small_data_dir, env_config=settings,
            seed=7, temperature=1.0)
    return load_module(out / "model"), read_dataset(out / "log"), out


@pytest.mark.parametrize("target", ["greedy", "eps_greedy"])
def test_dr_and_snips_intervals_cover_the_true_value(per_arm_world, target):
    """50 disjoint slices of 400 logged rows: DR's normal and SNIPS' bootstrap 95% intervals cover each slice's
    true value (the simulator's expected rewards under the target's probabilities) at least 45 times."""
    from recbandits.algos.candidates import LinearCandidatePolicy, module_policy_fields
    from recbandits.logs.dataset import LoggedDataset
    from recbandits.ope.evaluation import evaluate

    module, dataset, _ = per_arm_world
    fields = module_policy_fields(module)
    fields["model_config"] = {**fields["model_config"], "exploration": target, "epsilon": 0.3}
    policy = LinearCandidatePolicy(fields, module.get_state())
    covered = {"dr": 0, "snips": 0}
    errors = []
    for part in range(50):
        frame = dataset.frame.iloc[part * 400:(part + 1) * 400].reset_index(drop=True)
        result = evaluate(LoggedDataset(dataset.spec, frame, dataset.files), policy, ("dr", "snips"),
                          bootstrap=200, seed=part)
        truth = result["true_value"]
        low, high = result["estimates"]["dr"].normal_interval
        covered["dr"] += low <= truth <= high
        low, high = result["estimates"]["snips"].bootstrap_interval
        covered["snips"] += low <= truth <= high
        errors.append(result["estimates"]["dr"].value - truth)
        assert result["support"]["target_mass_off_support"] == 0.0 and result["monte_carlo_samples"] is None
    assert covered["dr"] >= 45 and covered["snips"] >= 45, covered
    assert abs(np.mean(errors)) < 3 * np.std(errors) / np.sqrt(50)  # no visible bias


def test_evaluate_command_writes_its_table_and_refuses_what_does_not_fit(per_arm_world, small_data_dir, tmp_path):
    import csv

    from typer.testing import CliRunner

    from recbandits.cli import app
    from recbandits.jobs.collect import collect
    from recbandits.jobs.train import train

    module, dataset, _ = per_arm_world
    model = dataset.files[0].parent.parent / "model"
    log = dataset.files[0].parent
    result = CliRunner().invoke(app, ["evaluate", "--data", str(log), "--policy", str(model), "--out",
                                      str(tmp_path / "eval"), "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    assert "true value (simulator's expected rewards):" in result.output
    with open(tmp_path / "eval" / "table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["estimator"] for row in rows] == ["dm", "ips", "snips", "dr", "sndr", "switch-dr", "clipped-ips"]
    assert all(float(row["low"]) <= float(row["value"]) <= float(row["high"]) for row in rows)
    assert {path.name for path in (tmp_path / "eval").iterdir()} == {"table.md", "table.csv", "evaluation.json",
                                                                   "forest.png"}
    # A model of the MF env (disjoint, 20 arms) does not fit per-arm data.
    collect("movielens", "uniform", 200, tmp_path / "mf", data_dir=small_data_dir, env_config={"rank": 3})
    train(tmp_path / "mf", "linucb", tmp_path / "mf-model", use_ray=False)
    result = CliRunner().invoke(app, ["evaluate", "--data", str(log), "--policy", str(tmp_path / "mf-model")])
    assert result.exit_code == 2
    assert "does not fit the dataset (shared, context 4, arm features 4)" in result.output
    result = CliRunner().invoke(app, ["evaluate", "--data", str(log), "--policy", str(model), "--estimators", "ips,x"])
    assert result.exit_code == 2 and "--estimators x: the estimators are dm, ips, snips" in result.output
    # The same arms in another order: refused, not scored with the wrong models.
    import dataclasses

    from recbandits.logs import read_dataset, write_dataset

    mf = read_dataset(tmp_path / "mf")
    write_dataset(tmp_path / "reordered", dataclasses.replace(mf.spec, arm_ids=mf.spec.arm_ids[::-1]), [mf.frame])
    result = CliRunner().invoke(app, ["evaluate", "--data", str(tmp_path / "reordered"), "--policy",
                                      str(tmp_path / "mf-model")])
    assert result.exit_code == 2 and "its arms are [" in result.output and "another order or other ids" in \
        result.output, result.output


def _slices(dataset, size: int, count: int):
    from recbandits.logs.dataset import LoggedDataset

    for part in range(count):
        frame = dataset.frame.iloc[part * size:(part + 1) * size].reset_index(drop=True)
        yield LoggedDataset(dataset.spec, frame, dataset.files)


def _greedy(module):
    from recbandits.algos.candidates import LinearCandidatePolicy, module_policy_fields

    fields = module_policy_fields(module)
    fields["model_config"] = {**fields["model_config"], "exploration": "greedy"}
    return LinearCandidatePolicy(fields, module.get_state())


def test_dm_is_biased_under_a_misspecified_model_and_dr_is_not(per_arm_world):
    """The simulator's reward is u . v: a reward model without interaction features, and shrunk hard (ridge
    lambda 1,000), cannot express it. Over 20 slices of 1,000 rows, DM's mean error is more than 5 standard errors
    from 0, DR's (the same model, corrected by the propensities) within 3."""
    from recbandits.ope.evaluation import evaluate

    module, dataset, _ = per_arm_world
    policy = _greedy(module)
    errors = {"dm": [], "dr": []}
    for part in _slices(dataset, 1_000, 20):
        result = evaluate(part, policy, ("dm", "dr"), bootstrap=0, model_interaction=False, model_lambda=1_000.0)
        for name in errors:
            errors[name].append(result["estimates"][name].value - result["true_value"])
    dm, dr = np.array(errors["dm"]), np.array(errors["dr"])
    assert abs(dm.mean()) > 5 * dm.std(ddof=1) / np.sqrt(len(dm)), dm
    assert abs(dr.mean()) < 3 * dr.std(ddof=1) / np.sqrt(len(dr)), dr


def test_ips_and_dr_errors_shrink_as_one_over_root_n(per_arm_world):
    """Root-mean-square error over disjoint slices: 500 rows (40 slices) against 5,000 rows (8 slices) is about
    sqrt(10) = 3.2 times larger (between 1.8 and 6: 8 slices measure the larger size's error to about 25%)."""
    from recbandits.ope.evaluation import evaluate

    module, dataset, _ = per_arm_world
    policy = _greedy(module)
    rmse = {}
    for size, count in ((500, 40), (5_000, 8)):
        errors = {"ips": [], "dr": []}
        for part in _slices(dataset, size, count):
            result = evaluate(part, policy, ("ips", "dr"), bootstrap=0)
            for name in errors:
                errors[name].append(result["estimates"][name].value - result["true_value"])
        rmse[size] = {name: float(np.sqrt(np.mean(np.square(values)))) for name, values in errors.items()}
    for name in ("ips", "dr"):
        assert 1.8 < rmse[500][name] / rmse[5_000][name] < 6, rmse


@pytest.mark.usefixtures("ray_local")
def test_the_estimates_over_ray_data_equal_the_in_memory_ones(per_arm_world, small_data_dir, tmp_path):
    from recbandits.algos.candidates import module_policy_fields
    from recbandits.jobs.collect import collect
    from recbandits.logs import read_dataset
    from recbandits.ope.estimators import ESTIMATORS
    from recbandits.ope.evaluation import evaluate, evaluate_files

    module, _, _ = per_arm_world
    collect("movielens-per-arm", "softmax", 2_000, tmp_path / "log", data_dir=small_data_dir,
            env_config={"rank": 4, "num_actions": 5, "reward_noise_std": 0.5}, seed=3, rows_per_file=700,
            num_envs=256)
    dataset = read_dataset(tmp_path / "log")
    assert len(dataset.files) == 3
    fields = module_policy_fields(module)
    fields["model_config"] = {**fields["model_config"], "exploration": "eps_greedy", "epsilon": 0.2}
    from recbandits.algos.candidates import LinearCandidatePolicy

    memory = evaluate(dataset, LinearCandidatePolicy(fields, module.get_state()), bootstrap=0)
    parallel = evaluate_files(tmp_path / "log", fields, module.get_state(), workers=2)
    assert parallel["rows"] == memory["rows"] == 2_000
    assert parallel["true_value"] == pytest.approx(memory["true_value"], rel=1e-12)
    for name in ESTIMATORS:
        ours, theirs = parallel["estimates"][name], memory["estimates"][name]
        assert ours.value == pytest.approx(theirs.value, rel=1e-9), name
        assert ours.normal_interval == pytest.approx(theirs.normal_interval, rel=1e-9), name
        assert (ours.effective_sample_size is None) == (theirs.effective_sample_size is None)
        if theirs.effective_sample_size is not None:
            assert ours.effective_sample_size == pytest.approx(theirs.effective_sample_size, rel=1e-9)


def test_slate_estimators_give_their_hand_computed_values(tmp_path):
    """Two uniformly logged slates of 3 among 3 candidates; the target is a cold eps-greedy policy (every score
    0: each candidate on top with probability 1/3, then the others in index order). By hand: top a gives
    [a, b, c], top b [b, a, c], top c [c, a, b], so slot 2 holds a with 2/3, b with 1/3, and slot 3 c with 2/3."""
    from recbandits.algos.candidates import LinearCandidatePolicy
    from recbandits.logs.dataset import DatasetSpec, read_dataset, write_dataset
    from recbandits.ope.evaluation import evaluate

    spec = DatasetSpec(shape="disjoint", context_dim=1, arm_ids=["a", "b", "c"])
    rows = [{"event_id": f"e{index}", "context": [1.0], "candidates": ["a", "b", "c"], "action": slate[0],
             "propensity": 1 / 3, "slate": slate, "slot_propensities": [1 / 3, 1 / 6, 1 / 6],
             "slot_marginals": [1 / 3] * 3, "slot_rewards": slot_rewards, "reward": sum(r or 0 for r in slot_rewards),
             "policy": "uniform"}
            for index, (slate, slot_rewards) in enumerate([(["b", "a", "c"], [1.0, 0.0, 1.0]),
                                                           (["c", "b", "a"], [0.0, 1.0, None])])]
    write_dataset(tmp_path, spec, [rows])
    policy = LinearCandidatePolicy({**spec.model_fields(), "model_config": {"exploration": "eps_greedy",
                                                                          "epsilon": 0.3}})
    result = evaluate(read_dataset(tmp_path), policy, bootstrap=0)
    # sips: row 1 (the target's [b, a, c]): weight (1/3)/(1/6) = 2 times 2 clicks; row 2: not a target slate.
    # rips: row 1: 1*1 + 2*0 + 2*1; row 2: 1*0 + 0*1 + 0*0. iips: row 1: 1*1 + 2*0 + 2*1; row 2: 1*0 + 1*1 + 0.
    values = {name: estimate.value for name, estimate in result["estimates"].items()}
    assert values == pytest.approx({"sips": 2.0, "rips": 1.5, "iips": 2.0}, rel=1e-12)
    # Terms 4 and 0: standard deviation 2 sqrt(2), standard error 2.
    assert result["estimates"]["sips"].normal_interval == pytest.approx((2.0 - 1.959964 * 2, 2.0 + 1.959964 * 2))
    assert result["estimates"]["sips"].max_weight == 2.0 and result["rows"] == 2 and result["logging_value"] == 1.5
    assert result["support"]["rows_off_the_target_slates"] == 0.5
    with pytest.raises(ValueError, match="a ranking dataset takes the slate estimators sips, iips, rips"):
        evaluate(read_dataset(tmp_path), policy, ("dr",))


@pytest.fixture(scope="module")
def slate_worlds(small_data_dir, tmp_path_factory):
    """Per click model: a ranking model trained on eps-greedy slates, and 40,000 uniformly logged slates."""
    from recbandits.algos.checkpoints import load_module
    from recbandits.jobs.collect import collect
    from recbandits.jobs.train import train
    from recbandits.logs import read_dataset

    out = tmp_path_factory.mktemp("slates")
    worlds = {}
    for choice_model in ("position_based", "cascade"):
        settings = {"rank": 4, "num_candidates": 6, "slate_size": 3, "choice_model": choice_model}
        collect("movielens-ranking", "eps-greedy", 3_000, out / f"train-{choice_model}", data_dir=small_data_dir,
                env_config=settings, epsilon=0.5, seed=99)
        train(out / f"train-{choice_model}", "linucb", out / f"model-{choice_model}", use_ray=False)
        collect("movielens-ranking", "uniform", 40_000, out / f"log-{choice_model}", data_dir=small_data_dir,
                env_config=settings, seed=3)
        worlds[choice_model] = load_module(out / f"model-{choice_model}"), read_dataset(out / f"log-{choice_model}")
    return worlds


@pytest.mark.parametrize("choice_model", ["position_based", "cascade"])
def test_slate_estimators_against_the_truth_of_each_click_model(slate_worlds, choice_model):
    """50 slices of 800 uniformly logged slates, an eps-greedy ranking target. Under the position-based model a
    slot's clicks depend on its own item: IIPS and RIPS cover each slice's true value (the click model's expected
    clicks of the target's slates) at least 45 times, without visible bias. Under the cascade they depend on the
    slots above: RIPS still does, and IIPS is biased."""
    from recbandits.algos.candidates import LinearCandidatePolicy, module_policy_fields
    from recbandits.logs.dataset import LoggedDataset
    from recbandits.ope.evaluation import evaluate

    module, dataset = slate_worlds[choice_model]
    fields = module_policy_fields(module)
    fields["model_config"] = {**fields["model_config"], "exploration": "eps_greedy", "epsilon": 0.3}
    policy = LinearCandidatePolicy(fields, module.get_state())
    covered, errors = {"iips": 0, "rips": 0}, {"iips": [], "rips": []}
    for part in range(50):
        frame = dataset.frame.iloc[part * 800:(part + 1) * 800].reset_index(drop=True)
        result = evaluate(LoggedDataset(dataset.spec, frame, dataset.files), policy, ("iips", "rips"), bootstrap=0)
        for name in covered:
            low, high = result["estimates"][name].normal_interval
            covered[name] += low <= result["true_value"] <= high
            errors[name].append(result["estimates"][name].value - result["true_value"])
    bias = {name: abs(np.mean(values)) / (np.std(values) / np.sqrt(50)) for name, values in errors.items()}
    unbiased = ("iips", "rips") if choice_model == "position_based" else ("rips",)
    for name in unbiased:
        assert covered[name] >= 45 and bias[name] < 3, (name, covered, bias)
    if choice_model == "cascade":
        assert bias["iips"] > 5, (covered, bias)  # its mean error over the slices, in standard errors


def test_a_thompson_ranking_target_is_sampled_to_the_same_estimates_as_its_mean(slate_worlds):
    """Thompson sampling has no closed-form ranking probabilities: they are the share of sampled rankings. With a
    posterior scale of 1e-9 every sample is the greedy ranking, so the estimates are the greedy target's (exact)."""
    from recbandits.algos.candidates import LinearCandidatePolicy, module_policy_fields
    from recbandits.logs.dataset import LoggedDataset
    from recbandits.ope.evaluation import evaluate

    module, dataset = slate_worlds["position_based"]
    dataset = LoggedDataset(dataset.spec, dataset.frame.iloc[:1_000].reset_index(drop=True), dataset.files)
    results = {}
    for exploration in ("greedy", "thompson"):
        fields = module_policy_fields(module)
        fields["model_config"] = {**fields["model_config"], "exploration": exploration, "posterior_scale": 1e-9}
        results[exploration] = evaluate(dataset, LinearCandidatePolicy(fields, module.get_state()), bootstrap=0,
                                        samples=20)
    assert results["thompson"]["monte_carlo_samples"] == 20 and results["greedy"]["monte_carlo_samples"] is None
    for name, greedy in results["greedy"]["estimates"].items():
        assert results["thompson"]["estimates"][name].value == pytest.approx(greedy.value, rel=1e-12), name
    assert results["thompson"]["true_value"] == pytest.approx(results["greedy"]["true_value"], rel=1e-12)


@pytest.fixture(scope="module")
def tf_agents_target(per_arm_world, tmp_path_factory):
    """TF-Agents' LinUCB, trained (``recbandits train --algo tfa-linucb``) on 3,000 uniformly logged per-arm rows."""
    from recbandits.jobs.train import train

    out = tmp_path_factory.mktemp("tfa-target")
    train(per_arm_world[2] / "train", "tfa-linucb", out / "model", use_ray=False)
    return out / "model"


@pytest.mark.parametrize("which", ["greedy", "policy"])
def test_a_tf_agents_target_is_evaluated_through_the_policy_interface(per_arm_world, tf_agents_target, which):
    """TF-Agents' LinUCB, greedy and optimistic (what TF-Agents deploys), both deterministic (exact one-hot
    probabilities): over 20 slices of 400 softmax-logged rows DR's interval covers the true value at least 18
    times."""
    from recbandits.jobs.evaluate import policy_from_checkpoint
    from recbandits.logs.dataset import LoggedDataset
    from recbandits.ope.evaluation import evaluate

    _, dataset, _ = per_arm_world
    policy = policy_from_checkpoint(tf_agents_target, dataset.spec, which)
    covered = 0
    for part in range(20):
        frame = dataset.frame.iloc[part * 400:(part + 1) * 400].reset_index(drop=True)
        result = evaluate(LoggedDataset(dataset.spec, frame, dataset.files), policy, ("dr",), bootstrap=0)
        low, high = result["estimates"]["dr"].normal_interval
        covered += low <= result["true_value"] <= high
        assert result["monte_carlo_samples"] is None
    assert covered >= 18, covered


def test_a_tf_agents_sampling_target_is_sampled(per_arm_world, tmp_path):
    """TF-Agents' LinTS samples its decisions: no closed-form probabilities, so they are the share of ``samples``
    sampled decisions (each row's sum to 1, on the row's candidates)."""
    from recbandits.jobs.evaluate import policy_from_checkpoint
    from recbandits.jobs.train import train
    from recbandits.logs.dataset import LoggedDataset
    from recbandits.ope.evaluation import decisions_of, evaluate, target_probabilities

    _, dataset, out = per_arm_world
    train(out / "train", "tfa-lints", tmp_path / "lints", use_ray=False)
    policy = policy_from_checkpoint(tmp_path / "lints", dataset.spec)
    frame = LoggedDataset(dataset.spec, dataset.frame.iloc[:400].reset_index(drop=True), dataset.files)
    probabilities, samples = target_probabilities(policy, decisions_of(frame), samples=20)
    assert samples == 20 and np.allclose(probabilities.sum(1), 1.0) and set(np.unique(probabilities * 20)) <= set(
        range(21))
    assert 0 < (probabilities.max(1) < 1).mean() < 1  # it explores on some rows, not on all
    result = evaluate(frame, policy, ("dr",), bootstrap=0, samples=20)
    assert result["monte_carlo_samples"] == 20 and np.isfinite(result["estimates"]["dr"].value)
