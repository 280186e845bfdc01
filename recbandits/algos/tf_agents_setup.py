"""TF-Agents next to torch in one process, the agents and their options (the bridge's module is
``recbandits.algos.tf_agents_module``).

TensorFlow next to torch (what must hold in every process that builds this module):

- ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is first imported: TF-Agents 0.19 needs Keras 2 (``tf_keras``);
  TF 2.21's default ``tf.keras`` is Keras 3. ``import recbandits.algos`` and this module set it
  (``recbandits.worker_env.set_worker_env``); ``configure_tensorflow`` raises a clear error if TensorFlow was imported
  before without it. ``recbandits.worker_env.WORKER_ENV_VARS`` puts it into every Ray worker's environment.
- ``RLLIB_TEST_NO_TF_IMPORT=1`` before ``ray.rllib`` is first imported: RLlib's new API stack is torch-only,
  but without it importing RLlib imports TensorFlow, switches it to TF1 graph mode (``disable_v2_behavior``)
  and resolves ``tf.keras`` to Keras 3: TF-Agents cannot run in that process any more
  (``configure_tensorflow`` says so). ``recbandits.algos`` sets it before it imports RLlib; a script must
  import ``recbandits.algos`` before ``ray.rllib`` (or export the variable). TF-Agents code imports
  TensorFlow itself, lazily: ``import recbandits.algos`` never imports TensorFlow.
- ``TF_CPP_MIN_LOG_LEVEL=3`` silences TensorFlow's C++ start-up logging.
- Threads: env runners sample with 1 torch thread (``BanditEnvRunner``) and, via ``configure_tensorflow``,
  1 TensorFlow intra-op and 1 inter-op thread (config ``tf_num_threads``), set before TensorFlow's runtime
  starts in the sampling process. Runners are the unit of parallelism; more threads per runner oversubscribe
  cores. With remote env runners the Learner (in the driver with ``num_learners=0``) keeps TensorFlow's
  default pools; with ``num_env_runners=0`` the driver samples too and gets 1 thread like torch.
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from recbandits.worker_env import set_worker_env

set_worker_env()  # before TensorFlow is first imported (see the module docstring)

AGENTS = ("linucb", "lints", "neural-eps-greedy", "neural-linucb")

DEFAULT_MODEL_CONFIG: dict[str, Any] = {
    "agent": "linucb",
    # Exploration scale of LinUCB, LinTS (std of the sampled rewards) and NeuralLinUCB's LinUCB phase.
    "alpha": 10.0,
    # Ridge regularisation of LinUCB / LinTS; None: 0.001 for LinUCB (MovieLens example), 1.0 (TF-Agents'
    # default) for LinTS. NeuralLinUCB always adds the identity.
    "tikhonov_weight": None,
    "gamma": 1.0,  # forgetting factor of the linear statistics (LinUCB, LinTS, NeuralLinUCB)
    "epsilon": 0.05,  # neural agents' exploration rate
    "layers": (50, 50, 50),  # hidden layers of the neural agents' networks
    "global_layers": None,  # per-arm towers; None: ``layers``
    "arm_layers": None,
    "common_layers": None,  # NeuralLinUCB's per-arm common tower; None: (layers[-1],)
    "learning_rate": 0.005,  # Adam (tf.compat.v1.train.AdamOptimizer, as in TF-Agents' examples)
    "encoding_dim": 20,
    "encoding_network_num_train_steps": 1000,
    "gradient_clipping": None,
    "seed": 0,  # TensorFlow seed the networks are initialized with (same in every process)
    "exploration_seed": None,  # TensorFlow seed set after construction (env runners: one per runner)
}


def canonical_agent_name(name: str) -> str:
    """``linucb`` / ``tfa-linucb`` -> ``linucb``; anything else is a ValueError naming the valid ones."""
    key = str(name).strip().lower().replace("_", "-")
    key = key[len("tfa-"):] if key.startswith("tfa-") else key
    if key not in AGENTS:
        raise ValueError(f"unknown TF-Agents agent {name!r}; valid agents: {', '.join(AGENTS)} "
                         f"(algorithms: {', '.join('tfa-' + agent for agent in AGENTS)})")
    return key


def configure_tensorflow(num_threads: int | None = None):
    """Import TensorFlow with the settings TF-Agents needs next to torch; return the ``tf`` module.

    ``num_threads`` (e.g. 1 in env runners) sets TensorFlow's intra- and inter-op thread pools; it only
    takes effect before TensorFlow's runtime has started in this process (a warning says when it is late).
    """
    from recbandits.verbosity import native_stderr_silenced

    set_worker_env()
    with native_stderr_silenced():
        import tensorflow as tf

    problems = []
    if str(getattr(tf.keras, "__version__", "2")).startswith("3"):
        problems.append("tf.keras is Keras 3 (TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set)")
    if not tf.executing_eagerly():
        problems.append("TensorFlow runs in TF1 graph mode (ray.rllib imported it without RLLIB_TEST_NO_TF_IMPORT=1)")
    if problems:
        raise RuntimeError(
            f"TF-Agents cannot run in this process: {'; '.join(problems)}. Import recbandits.algos before "
            "ray.rllib and tensorflow, or export recbandits.worker_env.WORKER_ENV_VARS (RLLIB_TEST_NO_TF_IMPORT=1, "
            "TF_USE_LEGACY_KERAS=1) in the environment of the driver and of every Ray worker"
        )
    if num_threads:
        threading = tf.config.threading
        wanted = int(num_threads)
        if (threading.get_intra_op_parallelism_threads(), threading.get_inter_op_parallelism_threads()) != (
            wanted, wanted
        ):
            try:
                threading.set_intra_op_parallelism_threads(wanted)
                threading.set_inter_op_parallelism_threads(wanted)
            except RuntimeError:
                warnings.warn(f"TensorFlow's runtime already started in this process: cannot set its thread "
                              f"pools to {wanted}", RuntimeWarning, stacklevel=2)
    return tf


def _layers(value) -> tuple[int, ...]:
    layers = tuple(int(n) for n in value)
    if any(n < 1 for n in layers):
        raise ValueError(f"layer sizes must be >= 1, got {value!r}")
    return layers


def resolve_model_config(model_config: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults filled in and checked; raises ValueError naming the bad setting."""
    config = {**DEFAULT_MODEL_CONFIG, **(model_config or {})}
    config["agent"] = canonical_agent_name(config["agent"])
    if config["tikhonov_weight"] is None:
        config["tikhonov_weight"] = 1.0 if config["agent"] == "lints" else 0.001
    for name in ("alpha", "tikhonov_weight", "gamma", "epsilon", "learning_rate"):
        value = config[name]
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            raise ValueError(f"{name}={value!r} must be a finite number")
        config[name] = float(value)
    if config["alpha"] < 0:
        raise ValueError(f"alpha={config['alpha']} must be >= 0")
    if not config["tikhonov_weight"] > 0:
        raise ValueError(f"tikhonov_weight={config['tikhonov_weight']} must be > 0")
    if not 0 < config["gamma"] <= 1:
        raise ValueError(f"gamma={config['gamma']} must be in (0, 1]")
    if not 0 <= config["epsilon"] <= 1:
        raise ValueError(f"epsilon={config['epsilon']} must be in [0, 1]")
    if not config["learning_rate"] > 0:
        raise ValueError(f"learning_rate={config['learning_rate']} must be > 0")
    config["layers"] = _layers(config["layers"])
    for name in ("global_layers", "arm_layers", "common_layers"):
        if config[name] is not None:
            config[name] = _layers(config[name])
    if int(config["encoding_dim"]) < 1:
        raise ValueError(f"encoding_dim={config['encoding_dim']} must be >= 1")
    config["encoding_dim"] = int(config["encoding_dim"])
    config["encoding_network_num_train_steps"] = int(config["encoding_network_num_train_steps"])
    if config["gradient_clipping"] is not None and not config["gradient_clipping"] > 0:
        raise ValueError(f"gradient_clipping={config['gradient_clipping']} must be > 0 (or None)")
    return config


def observation_layout(observation_space: gym.Space, action_space: gym.Space) -> tuple[bool, int, int, int]:
    """(per_arm, number of arms, global dim, arm dim) of the spaces, or a clear error."""
    if not isinstance(action_space, gym.spaces.Discrete):
        raise ValueError(f"the TF-Agents bandit agents need Discrete actions (recbandits/MovieLens-v0, "
                         f"recbandits/MovieLensPerArm-v0); got {action_space}")
    if isinstance(observation_space, gym.spaces.Box) and len(observation_space.shape) == 1:
        return False, int(action_space.n), int(observation_space.shape[0]), 0
    if isinstance(observation_space, gym.spaces.Dict) and {"global", "per_arm"} == set(observation_space.spaces):
        per_arm = observation_space["per_arm"].shape
        if len(per_arm) != 2 or int(per_arm[0]) != int(action_space.n):
            raise ValueError(f"per_arm features {per_arm} must be (num_actions={action_space.n}, arm_dim)")
        return True, int(per_arm[0]), int(observation_space["global"].shape[0]), int(per_arm[1])
    raise ValueError("TF-Agents bandit agents need a flat Box context or a Dict observation with exactly 'global' "
                     f"and 'per_arm' features; got {observation_space}")
