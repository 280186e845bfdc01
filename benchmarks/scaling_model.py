"""How the linear bandits scale with env runners: per-iteration timing of ``train()`` and a projection model.

``TimedAlgorithm`` wraps the three calls of ``LinearBandit.training_step`` on a built algorithm (the runners'
``sample_statistics``, the Learner's ``learn_from_runners``, ``sync_weights``) and times each of them for
every iteration; RLlib's own ``result["timers"]`` are exponential moving averages over iterations, too smooth
to split one iteration. Each runner's own sampling time and its CPU time come from its metrics
(``sample_time_s``, ``sample_cpu_time_s``).

The model (weak scaling: every runner samples the same fragment per iteration, so the work per runner is
fixed and more runners mean more env steps per iteration)::

    T(n)    = t_s + c0 + c1 n + (n B_delta + m B_state) / W          iteration time with n runners on m nodes
    rate(n) = n S / T(n)                                               env steps/s, S = env steps per runner
    eff(n)  = rate(n) / (n rate(1)) = T(1) / T(n)                      parallel efficiency

``t_s`` is one runner's sampling time (its fragment; the slowest runner sets the pace: the max over runners);
``c0`` the fixed cost of an iteration (the ``sync_weights`` broadcast of the small posterior is one
``ray.put``, cheap and nearly flat in n; metrics, bookkeeping); ``c1`` the per-runner cost (dispatch and
gather of one runner's call and result, its ``set_state`` call, the Learner adding one delta: O(n) in
total). Both are fitted to the measured synchronization cost ``T - max runner sample time``. The last term is
what one machine cannot measure: each runner's statistics delta (``B_delta`` bytes) crosses the network to
the Learner's node, and the posterior (``B_state``) goes once to each of the m nodes, over a link of ``W``
bytes/s.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

import numpy as np

from recbandits.algos.metrics import SAMPLE_CPU_TIME, SAMPLE_TIME


@dataclass
class IterationTiming:
    """Wall-clock split of one ``train()`` call, in seconds."""

    runners: int
    env_steps: int
    total_s: float
    sample_max_s: float  # the slowest runner's own sampling time
    sample_mean_s: float
    sample_cpu_mean_s: float  # a runner's sampling thread's CPU time (above sample_mean_s: it waited for a CPU)
    gather_s: (
        float  # sampling call's wall time beyond the slowest runner: dispatch, transfer, deserialization
    )
    learn_s: float  # the Learner adding the deltas
    sync_s: float  # sync_weights: posterior to every runner
    other_s: float  # the rest of train(): metrics, health probe, results

    @property
    def sync_cost_s(self) -> float:
        """Everything in the iteration that is not the slowest runner sampling."""
        return self.total_s - self.sample_max_s


def _value(stat) -> float:
    return float(stat.peek() if hasattr(stat, "peek") else stat)


class TimedAlgorithm:
    """A built ``LinearBandit`` whose ``train()`` also returns the iteration's ``IterationTiming``."""

    def __init__(self, algo):
        self.algo = algo
        self._calls: dict[str, float] = {}
        self._samples: list[tuple[float, float]] = []
        runners, learners = algo.env_runner_group, algo.learner_group
        foreach_env_runner, foreach_learner = runners.foreach_env_runner, learners.foreach_learner
        sync_weights = runners.sync_weights

        def timed_foreach_env_runner(*args, **kwargs):
            started = time.perf_counter()
            out = foreach_env_runner(*args, **kwargs)
            if out and isinstance(out[0], tuple) and isinstance(out[0][0], dict) and "payload" in out[0][0]:
                self._calls["sample"] = time.perf_counter() - started
                self._samples = [(_value(metrics.get(SAMPLE_TIME, 0.0)), _value(metrics.get(SAMPLE_CPU_TIME, 0.0)))
                                 for _, metrics in out]
            return out

        def timed(name, function):
            def call(*args, **kwargs):
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    self._calls[name] = self._calls.get(name, 0.0) + time.perf_counter() - started

            return call

        # Instance attributes shadow the methods training_step calls; nothing else changes.
        runners.foreach_env_runner = timed_foreach_env_runner
        learners.foreach_learner = timed("learn", foreach_learner)
        runners.sync_weights = timed("sync", sync_weights)

    @property
    def num_runners(self) -> int:
        return max(self.algo.config.num_env_runners, 1)

    def env_steps(self) -> int:
        return int(self.algo.metrics.peek(("env_runners", "num_env_steps_sampled_lifetime"), default=0))

    def train(self) -> tuple[dict, IterationTiming]:
        self._calls, self._samples = {}, []
        before = self.env_steps()
        started = time.perf_counter()
        result = self.algo.train()
        total = time.perf_counter() - started
        samples, cpu_times = np.array(self._samples or [(0.0, 0.0)]).T
        sample_call = self._calls.get("sample", 0.0)
        learn, sync = self._calls.get("learn", 0.0), self._calls.get("sync", 0.0)
        timing = IterationTiming(
            runners=self.num_runners,
            env_steps=int(result["env_runners"]["num_env_steps_sampled_lifetime"]) - before,
            total_s=total,
            sample_max_s=float(samples.max()),
            sample_mean_s=float(samples.mean()),
            sample_cpu_mean_s=float(cpu_times.mean()),
            gather_s=max(sample_call - float(samples.max()), 0.0),
            learn_s=learn,
            sync_s=sync,
            other_s=max(total - sample_call - learn - sync, 0.0),
        )
        return result, timing

    def stop(self) -> None:
        self.algo.stop()


def typical_timing(timings: list[IterationTiming]) -> IterationTiming:
    """Mean of every field over the middle half of the iterations by wall time (the interquartile mean).

    Robust to the odd slow iteration on a shared machine, and unlike per-field medians its parts still add up:
    ``sync_cost_s == gather_s + learn_s + sync_s + other_s``.
    """
    ordered = sorted(timings, key=lambda timing: timing.total_s)
    quarter = len(ordered) // 4
    middle = ordered[quarter : len(ordered) - quarter] or ordered
    return IterationTiming(
        **{
            name: type(value)(np.mean([getattr(timing, name) for timing in middle]))
            for name, value in asdict(middle[0]).items()
        }
    )


def statistics_bytes(module) -> int:
    """Bytes of one runner's statistics delta (= of the posterior state sent back): the float64 buffers."""
    return int(
        sum(
            buffer.numel() * buffer.element_size()
            for buffer in (module.data_precision, module.data_response, module.response_square, module.counts)
        )
    )


@dataclass
class ScalingModel:
    """``T(n) = t_s + c0 + c1 n + (n B_delta + m B_state) / W`` (see the module docstring)."""

    sample_s: float  # t_s
    steps_per_runner: int  # S
    fixed_s: float  # c0
    per_runner_s: float  # c1
    delta_bytes: int  # B_delta (B_state is the same buffers)

    def iteration_s(self, runners: int, nodes: int = 1, bandwidth_bytes_per_s: float | None = None) -> float:
        network = 0.0
        if bandwidth_bytes_per_s and nodes > 1:
            network = (runners * self.delta_bytes + nodes * self.delta_bytes) / bandwidth_bytes_per_s
        return self.sample_s + self.fixed_s + self.per_runner_s * runners + network

    def steps_per_s(self, runners: int, nodes: int = 1, bandwidth_bytes_per_s: float | None = None) -> float:
        return runners * self.steps_per_runner / self.iteration_s(runners, nodes, bandwidth_bytes_per_s)

    def efficiency(self, runners: int, nodes: int = 1, bandwidth_bytes_per_s: float | None = None) -> float:
        return self.steps_per_s(runners, nodes, bandwidth_bytes_per_s) / (runners * self.steps_per_s(1))


SYNC_PARTS = ("gather_s", "learn_s", "sync_s", "other_s")


def fit_model(typical: dict[int, IterationTiming], delta_bytes: int) -> tuple[ScalingModel, dict[str, tuple]]:
    """Fit ``c0 + c1 n`` to the synchronization cost, part by part; return the model and each part's fit.

    Each part of the sync cost (gather, learner, sync_weights, rest) gets a least-squares line over the runner
    counts; a part that does not grow (a negative slope: noise) counts as fixed at its mean. ``c1`` is the sum
    of the slopes, ``c0`` of the intercepts. With a single runner count nothing separates fixed from
    per-runner cost, so every part that touches the runners (gather, learner, sync_weights) is taken as
    per-runner: an upper bound. ``t_s`` is the slowest runner's sampling time at the smallest count: on a
    cluster every runner has its own core, while on a small machine more runners share the same cores and
    sample slower.
    """
    counts = sorted(typical)
    smallest = typical[counts[0]]
    parts: dict[str, tuple] = {}
    for name in SYNC_PARTS:
        values = np.array([getattr(typical[n], name) for n in counts])
        if len(counts) >= 2:
            slope, intercept = np.polyfit(np.array(counts, dtype=float), values, 1)
            if slope < 0:
                slope, intercept = 0.0, float(values.mean())
        elif name == "other_s":
            slope, intercept = 0.0, float(values[0])
        else:
            slope, intercept = float(values[0]) / counts[0], 0.0
        parts[name] = (max(float(intercept), 0.0), float(slope))
    model = ScalingModel(
        sample_s=smallest.sample_max_s,
        steps_per_runner=int(round(smallest.env_steps / smallest.runners)),
        fixed_s=sum(intercept for intercept, _ in parts.values()),
        per_runner_s=sum(slope for _, slope in parts.values()),
        delta_bytes=delta_bytes,
    )
    return model, parts
