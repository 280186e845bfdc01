"""Counter-based random numbers for batched simulators.

Every random number a simulator uses is a pure function of (sub-env key, draw counter, stream, index),
computed with the SplitMix64 mixing function over whole numpy arrays. This is what lets a natively
vectorized env step 1024 sub-environments without a Python loop *and* give each sub-environment exactly
the transitions a single env seeded the same way gives: no shared generator state is consumed in an order
that depends on the batch size. (JAX's PRNG and numpy's Philox are counter-based for the same reason.)
"""

from __future__ import annotations

import numpy as np
from gymnasium.utils import seeding

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)
_TO_UNIT = 2.0**-53

# One stream per kind of randomness, so adding a draw of one kind never shifts another.
STREAM_CONTEXT = 1
STREAM_CANDIDATES = 2
STREAM_REWARD_NOISE = 3
STREAM_CLICK = 4
STREAM_DRIFT = 5


def _mix(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finalizer: a bijective avalanche over uint64 (wraps modulo 2**64 by design)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX_1
    z = (z ^ (z >> np.uint64(27))) * _MIX_2
    return z ^ (z >> np.uint64(31))


def key_from_seed(seed: int | None) -> np.uint64:
    """The 64-bit key of one sub-environment, derived through Gymnasium's seeding like any env RNG."""
    generator, _ = seeding.np_random(seed)
    return key_from_generator(generator)


def key_from_generator(generator: np.random.Generator) -> np.uint64:
    return np.uint64(generator.integers(0, 2**63, dtype=np.int64))


def uniform(keys: np.ndarray, counters: np.ndarray, stream: int, size: int) -> np.ndarray:
    """Uniform [0, 1) floats of shape (len(keys), size), one row per sub-environment."""
    counters = counters.astype(np.uint64)
    base = _mix(keys ^ _mix(counters * _GOLDEN_GAMMA + np.uint64(stream)))
    offsets = (np.arange(1, size + 1, dtype=np.uint64) * _GOLDEN_GAMMA)[None, :]
    bits = _mix(base[:, None] + offsets)
    return (bits >> np.uint64(11)).astype(np.float64) * _TO_UNIT


def integers(keys: np.ndarray, counters: np.ndarray, stream: int, high: int, size: int = 1) -> np.ndarray:
    """Uniform integers in [0, high), shape (len(keys), size). Bias is below 2**-40 for high < 2**13."""
    values = (uniform(keys, counters, stream, size) * high).astype(np.int64)
    return np.minimum(values, high - 1)


def normal(keys: np.ndarray, counters: np.ndarray, stream: int, size: int) -> np.ndarray:
    """Standard normal floats of shape (len(keys), size), by the Box-Muller transform."""
    pairs = uniform(keys, counters, stream, 2 * size)
    radius = np.sqrt(-2.0 * np.log1p(-pairs[:, :size]))
    return radius * np.cos(2.0 * np.pi * pairs[:, size:])


def sample_without_replacement(
    keys: np.ndarray, counters: np.ndarray, stream: int, population: int, size: int
) -> np.ndarray:
    """`size` distinct indices in [0, population) per row, each ordered subset equally likely."""
    if size > population:
        raise ValueError(f"cannot draw {size} distinct items from {population}")
    if size * size > population:
        # Dense case (a repeat would be likely, birthday bound): the `size` smallest of i.i.d. random keys, in the order
        # of their keys.
        random_keys = uniform(keys, counters, stream, population)
        chosen = np.argpartition(random_keys, size - 1, axis=1)[:, :size]
        order = np.argsort(np.take_along_axis(random_keys, chosen, axis=1), axis=1)
        return np.take_along_axis(chosen, order, axis=1)
    # Sparse case: draw with replacement and redraw the rows that repeat an index (rejection sampling).
    # Each row's redraws depend only on its own key and counter, so rows stay independent of the batch.
    draws = integers(keys, counters, stream, population, size)
    pending = np.arange(len(keys))
    for attempt in range(1, 1000):
        ordered = np.sort(draws[pending], axis=1)
        repeats = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)
        pending = pending[repeats]
        if len(pending) == 0:
            return draws
        draws[pending] = integers(keys[pending], counters[pending], stream + 1000 * attempt, population, size)
    raise RuntimeError("rejection sampling did not converge")  # a row repeats with probability < 1/2 here
