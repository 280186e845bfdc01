"""The compare job: contender parsing, a real side-by-side run with a TF-Agents baseline, its outputs."""

from __future__ import annotations

import json
import sys

import numpy as np
import pandas as pd
import pytest

from recbandits.jobs.compare import ComparisonSpec, Contender, compare, confidence_interval

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.tf_agents]


def test_contenders_parse_and_reject_bad_entries():
    assert Contender.parse("linucb:batch=1024:runners=2") == Contender("linucb:batch=1024:runners=2", "linucb", 1024, 2)
    assert Contender.parse("tfa-lints").library == "TF-Agents"
    with pytest.raises(ValueError, match="'ucb' is not one of linucb"):
        Contender.parse("ucb")
    with pytest.raises(ValueError, match="options are batch=N and runners=N, alpha=X, lambda=X; got 'size=3'"):
        Contender.parse("linucb:size=3")
    # Hyperparameters by the CLI's names, as keywords of each library.
    assert Contender.parse("tfa-lints:alpha=0.3:lambda=1").settings() == {"alpha": 0.3, "tikhonov_weight": 1.0}
    assert Contender.parse("lints:posterior_scale=0.3").settings() == {"posterior_scale": 0.3}
    assert Contender.parse("linucb:batch=64:alpha=1").settings() == {"alpha": 1.0}
    with pytest.raises(
        ValueError, match=r"options are batch=N and runners=N, lambda=X, posterior_scale=X; got 'alpha=1'"
    ):
        Contender.parse("lints:alpha=1")
    with pytest.raises(ValueError, match=r"--alpha -1 must be >= 0"):
        Contender.parse("tfa-lints:alpha=-1")
    with pytest.raises(ValueError, match=r"alpha must be a number, got 'x'"):
        Contender.parse("linucb:alpha=x")
    with pytest.raises(ValueError, match=r"--posterior-scale 0 must be > 0"):
        Contender.parse("lints:posterior_scale=0")
    with pytest.raises(ValueError, match="TF-Agents baselines run with their example's batch"):
        Contender.parse("tfa-linucb:batch=64")
    with pytest.raises(ValueError, match="--env 'movielens-slates': compare runs 'movielens', 'movielens-per-arm', "
                                         "'movielens-ranking'"):
        ComparisonSpec(algos=["linucb"], env="movielens-slates")
    with pytest.raises(ValueError, match=r"--env movielens-per-arm: tfa-linucb runs on --env movielens \(TF-Agents "
                                         r"contenders here: none\)"):
        ComparisonSpec(algos=["linucb", "tfa-linucb"], env="movielens-per-arm")


def test_confidence_interval_is_student_t():
    mean, half = confidence_interval(np.array([1.0, 2.0, 3.0]))
    assert mean == 2.0 and half == pytest.approx(4.302652729911275 * 1.0 / np.sqrt(3))
    assert confidence_interval(np.array([5.0])) == (5.0, 0.0)


def test_compare_runs_every_contender_on_every_seed(small_data_dir, tmp_path):
    spec = ComparisonSpec(algos=["linucb", "tfa-linucb", "random", "tfa-linucb:alpha=0"], steps=480, seeds=2,
                          first_seed=3, data_dir=str(small_data_dir), rank=6, num_movies=12)
    table, returned_runs = compare(spec, tmp_path, progress=False)
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(zip(runs["contender"], runs["seed"], strict=True)) == [
        ("linucb", 3), ("linucb", 4), ("random", 3), ("random", 4), ("tfa-linucb", 3), ("tfa-linucb", 4),
        ("tfa-linucb:alpha=0", 3), ("tfa-linucb:alpha=0", 4)]
    assert len(returned_runs) == 8
    # The contender's own alpha reaches TF-Agents' agent: greedy (alpha 0) decides otherwise than alpha 10.
    regret = runs.set_index(["contender", "seed"])["regret@480"]
    assert all(regret["tfa-linucb:alpha=0", seed] != regret["tfa-linucb", seed] for seed in (3, 4))
    assert (runs["samples"] >= 480).all() and (runs["samples_per_s"] > 0).all()
    # Regret at the budget that ran (480), none at budgets that did not.
    assert [column for column in runs.columns if column.startswith("regret@")] == ["regret@480"]
    assert runs["regret@480"].notna().all() and (runs["regret@480"] >= 0).all()
    assert list(table["contender"]) == ["linucb", "tfa-linucb", "random", "tfa-linucb:alpha=0"]
    assert [column for column in table.columns if column.startswith("regret@")] == ["regret@480"]
    assert not table.isin(["not run"]).any().any()
    assert table.loc[1, "hyperparameters"] == "alpha 10.0, tikhonov 0.001 (as its example ships); batch 8, 2 steps/loop"
    assert table.loc[3, "hyperparameters"] == (
        "alpha 0.0, tikhonov 0.001 (alpha 0 set, the rest as its example ships); "
        "batch 8, 2 steps/loop"
    )
    text = (tmp_path / "table.md").read_text()
    assert "| contender" in text and "MISSED" not in text and ">= 1000x" not in text  # no project targets
    assert (tmp_path / "regret.png").stat().st_size > 10_000
    assert json.loads((tmp_path / "config.json").read_text())["seeds"] == 2


def test_verdicts_say_what_was_tested():
    import pandas as pd
    from conftest import REPO_ROOT

    from recbandits.jobs.compare import BUDGETS, compare_means

    sys.path.insert(0, str(REPO_ROOT / "benchmarks"))  # the project's targets are the benchmark's
    from compare_targets import target_checks

    assert compare_means(10.0, 1.0, 20.0, 1.0) == "lower mean, intervals disjoint"
    assert compare_means(10.0, 6.0, 20.0, 5.0) == "lower mean, intervals overlap"
    assert compare_means(21.0, 1.0, 20.0, 1.0) == "higher mean, intervals overlap"
    assert compare_means(30.0, 1.0, 20.0, 1.0) == "higher mean, intervals disjoint"

    def runs(ours: list[float], theirs: list[float], budget: int = 1000) -> pd.DataFrame:
        rows = []
        for name, values in (("linucb", ours), ("tfa-linucb", theirs)):
            for seed, value in enumerate(values):
                row = {"contender": name, "seed": seed, "samples_per_s": 1.0}
                row.update({f"regret@{b}": (value if b == budget else float("nan")) for b in BUDGETS})
                rows.append(row)
        return pd.DataFrame(rows)

    first = target_checks(runs([10, 11, 12], [20, 21, 22]))[0]
    assert first == ("LinUCB not worse than TF-Agents LinUCB at any budget: met [1,000: 11.0 vs 21.0 (lower mean, "
                     "intervals disjoint)]")
    overlapping = target_checks(runs([20, 22, 24], [19, 21, 23]))[0]
    assert overlapping.startswith("LinUCB not worse than TF-Agents LinUCB at any budget: not shown (a higher mean "
                                  "within the intervals) [1,000: 22.0 vs 21.0 (higher mean, intervals overlap)]")
    assert target_checks(runs([30, 31, 32], [20, 21, 22]))[0].split(" [")[0].endswith(": MISSED")
    unreached = target_checks(runs([1, 2], [3, 4], budget=123))[0]  # no budget of the table was reached
    assert unreached == "LinUCB not worse than TF-Agents LinUCB at any budget: not measured (no budget reached) []"


def test_vw_contenders_parse_and_refuse_what_vw_does_not_take():
    contender = Contender.parse("vw-bag:bag=8:learning_rate=2")
    assert contender.library == "VW" and contender.settings() == {"bag": 8.0, "learning_rate": 2.0}
    with pytest.raises(ValueError, match=r"options are batch=N and runners=N \(recbandits only\), epsilon=X, "
                                         r"learning_rate=X, power_t=X; got 'gamma_scale=1'"):
        Contender.parse("vw-egreedy:gamma_scale=1")
    with pytest.raises(ValueError, match="vw-bag: bag=2.5 must be an integer >= 1"):
        Contender.parse("vw-bag:bag=2.5")
    with pytest.raises(ValueError, match=r"VW learns one decision at a time \(no batch or runners\)"):
        Contender.parse("vw-cover:batch=8")


def test_vw_learns_on_the_same_env_and_its_regret_is_the_envs(small_data_dir):
    """VW's trace on one seeded MF env: one entry per decision, the env's exact regret accumulated, and VW learns:
    over 3,000 users its regret is below half a uniform policy's on the same users."""
    from recbandits.algos.vw_baseline import VWBaselineConfig, run_vw_baseline
    from recbandits.envs import MovieLensVectorEnv

    config = VWBaselineConfig("vw-squarecb", data_dir=str(small_data_dir), env_config={"rank": 6, "num_movies": 12},
                              seed=5,
                              settings={"learning_rate": 32.0})
    assert config.arguments() == "--cb_explore_adf -q sa --quiet --random_seed 5 --squarecb -l 32"
    trace = run_vw_baseline(config, 3_000)
    assert len(trace.samples) == 3_000 and trace.samples[-1] == 3_000
    assert np.all(np.diff(trace.cumulative_regret) >= -1e-12)
    env = MovieLensVectorEnv(num_envs=1, data_dir=str(small_data_dir), rank=6, num_movies=12, episode_length=None)
    env.reset(seed=5)
    rng = np.random.default_rng(0)
    uniform = sum(float(env.step(rng.integers(12, size=1))[4]["regret"][0]) for _ in range(3_000))
    assert trace.cumulative_regret[-1] < 0.5 * uniform, (trace.cumulative_regret[-1], uniform)


def test_vw_and_recbandits_compare_on_the_per_arm_env(small_data_dir, tmp_path):
    """The per-arm env (candidates with features): VW's ADF lines carry each candidate's features; both libraries
    run on the same seeds and learn (their regret below random's)."""
    spec = ComparisonSpec(algos=["linucb", "vw-squarecb:learning_rate=32", "random"], steps=600, seeds=1,
                          env="movielens-per-arm", data_dir=str(small_data_dir), rank=6, num_movies=8)
    table, runs = compare(spec, tmp_path, progress=False)
    regret = runs.set_index("contender")["regret@600"]
    assert regret["linucb"] < regret["random"] and regret["vw-squarecb:learning_rate=32"] < regret["random"], regret
    assert list(table["library"]) == ["recbandits", "VW", "recbandits"]
