"""Offline training: a bandit learned from a logged-feedback dataset, written as a checkpoint ``simulate``'s layout.

    recbandits train --data logs/ratings-train --algo linucb --out runs/offline
    recbandits serve --checkpoint runs/offline --state-dir state/    # warm-starts from it

The linear bandits' state is sufficient statistics, sums over the rewarded rows (``kernel``'s table), so the
files are reduced in parallel: one Ray Data task per Parquet file reads it in batches and reduces them to
statistics (a [M, D, D] array, whatever the number of rows; memory is bounded by one batch), and the driver adds
the files' statistics up. The result equals the closed-form ridge regression on the same rows, for any number
of files and workers. A row teaches its action's reward, or with ``slot_rewards`` every candidate its slot's;
rows without either are not learned from. Every file is validated before Ray starts. The TF-Agents agents
(``tfa-*``) train in this process on the same learning rows, in file order (``_train_tf_agents``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from recbandits.algos import kernel
from recbandits.algos.options import TF_AGENTS_ALGOS
from recbandits.logs.dataset import (
    DatasetSpec,
    dataset_files,
    learning_columns,
    learning_rows,
    per_file_tasks,
    read_table,
    select_columns,
    validate_table,
)

TRAIN_FILE = "train.json"
OFFLINE_ALGOS = {"linucb": "ucb", "lints": "thompson", "eps-greedy": "eps_greedy"}
STATISTICS = ("data_precision", "data_response", "response_square", "counts")


def policy_fields(spec: DatasetSpec, algo: str, training: dict[str, Any]) -> dict[str, Any]:
    """The policy fields (``candidates.build_module``) of a model for the dataset's shape."""
    fields = spec.model_fields(training.pop("interaction", None))
    return {**fields, "model_config": {"exploration": OFFLINE_ALGOS[algo], **training}}


def rows_statistics(rows: tuple, spec: DatasetSpec, fields: dict[str, Any]) -> dict[str, np.ndarray]:
    """The sufficient statistics of learning rows (``learning_rows``) as numpy."""
    contexts, learned, models, rewards = rows
    num_models = max(fields["num_arms"], 1) if spec.shape == "disjoint" else 1
    statistics = kernel.row_statistics(contexts, learned if spec.shape == "shared" else None, models, rewards,
                                       num_models, fields["interaction"])
    return {name: value.numpy() for name, value in zip(STATISTICS, statistics, strict=True)}


def learning_batches(path: str | Path, spec: DatasetSpec, batch_rows: int):
    """The learning rows (``learning_rows``) of one file, ``batch_rows`` logged rows at a time."""
    parquet = pq.ParquetFile(path)
    # Only the columns learning reads (the ids and probabilities are most of a row); the candidates only where
    # they are needed: shared features, or slot rewards, which teach every examined slot's candidate.
    slots = ("slot_rewards" in parquet.schema_arrow.names
             and parquet.read(columns=["slot_rewards"]).column(0).null_count < parquet.metadata.num_rows)
    wanted = learning_columns(spec, slots)
    columns = [column for column in wanted if column in parquet.schema_arrow.names]
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
        yield learning_rows(select_columns(pa.Table.from_batches([batch]), learning_columns(spec, True), path.name
                                           if isinstance(path, Path) else str(path)), spec)


def validate_files(directory: str | Path) -> tuple[DatasetSpec, list[Path], int]:
    """(spec, files, rows) after validating every file, one at a time (bounded memory)."""
    spec = DatasetSpec.read(directory)
    files, rows, seen = dataset_files(directory), 0, {}
    for path in files:
        table = read_table(path)
        validate_table(table, spec, path.name, seen)
        rows += table.num_rows
    return spec, files, rows


def train(data: str | Path, algo: str, out: str | Path, training: dict[str, Any] | None = None,
          address: str | None = None, use_ray: bool = True, workers: int | None = None,
          batch_rows: int = 8_192, validate: bool = True) -> dict[str, Any]:
    """Learn ``algo`` from the dataset at ``data``; write the module checkpoint and ``train.json`` to ``out``.

    ``use_ray``: reduce the files in Ray Data tasks, at most ``workers`` at a time (None: as the cluster's CPUs
    allow), each reading ``batch_rows`` rows at a time; otherwise file by file in this process.
    """
    from recbandits.algos.candidates import build_module

    if algo not in OFFLINE_ALGOS and algo not in TF_AGENTS_ALGOS:
        raise ValueError(f"--algo {algo!r}: offline training takes {', '.join((*OFFLINE_ALGOS, *TF_AGENTS_ALGOS))}")
    training = dict(training or {})
    if validate:
        spec, files, rows = validate_files(data)
    else:
        spec, files = DatasetSpec.read(data), dataset_files(data)
        rows = None
    if algo in TF_AGENTS_ALGOS:
        return _train_tf_agents(data, spec, files, rows, algo, training, out, batch_rows)
    fields = policy_fields(spec, algo, training)
    module = build_module(fields)  # a bad hyperparameter is named here, before Ray starts
    if use_ray:
        _connect(address)
    started = time.perf_counter()
    if use_ray:
        totals, blocks = _reduce_with_ray_data(files, spec, fields, workers, batch_rows)
    else:
        totals, blocks = None, 0
        for path in files:
            part, batches = file_statistics(path, spec, fields, batch_rows)
            totals = part if totals is None else {name: totals[name] + part[name] for name in STATISTICS}
            blocks += batches
    module.absorb(*(torch.from_numpy(totals[name]) for name in STATISTICS))
    elapsed = time.perf_counter() - started
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    module.save_to_path(str(out / "checkpoint"))
    summary = {"data": str(Path(data).resolve()), "algo": algo, "policy": fields, "files": len(files), "rows": rows,
               "learned_rows": float(totals["counts"].sum()), "reduce_s": elapsed,
               "learned_rows_per_s": float(totals["counts"].sum()) / elapsed if elapsed > 0 else None,
               "engine": "ray.data" if use_ray else "in-process", "workers": workers, "batches": blocks}
    (out / TRAIN_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _train_tf_agents(data, spec: DatasetSpec, files: list[Path], rows: int | None, algo: str,
                     training: dict[str, Any], out, batch_rows: int) -> dict[str, Any]:
    """A TF-Agents agent (the bridge's RLModule) trained on the dataset's learning rows in file order, in this
    process: ``agent.train`` on each batch (neural agents: every ``minibatch_size`` rows), as its runners do.

    Its spaces are the dataset's: disjoint, a context Box and one action per arm; shared, TF-Agents' per-arm
    observation with the dataset's number of candidates, which must be the same in every row.
    """
    import gymnasium as gym

    from recbandits.jobs.simulate import algorithm_configs

    context = gym.spaces.Box(-np.inf, np.inf, (spec.context_dim,), np.float32)
    if spec.shape == "disjoint":
        observation_space, action_space = context, gym.spaces.Discrete(len(spec.arm_ids))
    else:
        sizes = set()
        for path in files:
            lengths = pc.list_value_length(pq.read_table(path, columns=["candidates"]).column(0))
            sizes.update(np.unique(lengths.to_numpy(zero_copy_only=False)).tolist())
        if len(sizes) != 1:
            raise ValueError(f"--algo {algo}: TF-Agents' per-arm agents score a fixed number of candidates; the "
                             f"rows of {data} have {', '.join(map(str, sorted(sizes)))}")
        candidates = sizes.pop()
        observation_space = gym.spaces.Dict({"global": context, "per_arm": gym.spaces.Box(
            -np.inf, np.inf, (candidates, spec.arm_dim), np.float32)})
        action_space = gym.spaces.Discrete(candidates)
    config = algorithm_configs()[algo]().training(**training)
    module_spec = config.get_rl_module_spec(spaces={"default_policy": (observation_space, action_space)})
    module_spec.observation_space, module_spec.action_space = observation_space, action_space
    module = module_spec.build()  # a bad hyperparameter is named here
    started = time.perf_counter()
    learned, batches, losses = 0, 0, []
    for path in files:
        for contexts, features, models, rewards in learning_batches(path, spec, batch_rows):
            if not len(rewards):
                continue
            # Per-arm agents learn from the chosen arm's features; their action is a slot (0: the features
            # say which candidate it was).
            payload = module.logged_transitions(contexts, models if spec.shape == "disjoint" else
                                                np.zeros_like(models), rewards, features)
            losses += module.train_on_step(payload, config.minibatch_size)
            learned += len(rewards)
            batches += 1
    elapsed = time.perf_counter() - started
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    module.save_to_path(str(out / "checkpoint"))
    summary = {"data": str(Path(data).resolve()), "algo": algo,
               "policy": {"shape": spec.shape, "arm_ids": spec.arm_ids, "model_config": module.agent_config},
               "files": len(files), "rows": rows, "learned_rows": float(learned), "reduce_s": elapsed,
               "learned_rows_per_s": learned / elapsed if elapsed > 0 else None, "engine": "tf-agents",
               "workers": None, "batches": batches, "loss": float(np.mean(losses)) if losses else None}
    (out / TRAIN_FILE).write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


def file_statistics(path: str | Path, spec: DatasetSpec, fields: dict[str, Any],
                    batch_rows: int) -> tuple[dict[str, np.ndarray], int]:
    """(statistics, batches) of one file, read ``batch_rows`` rows at a time (memory bounded by the batch)."""
    totals, batches = None, 0
    for rows in learning_batches(path, spec, batch_rows):
        part = rows_statistics(rows, spec, fields)
        totals = part if totals is None else {name: totals[name] + part[name] for name in STATISTICS}
        batches += 1
    if totals is None:  # a file without rows: zero statistics of the right shapes
        empty = (np.zeros((0, spec.context_dim)), np.zeros((0, spec.arm_dim)) if spec.shape == "shared" else None,
                 np.zeros(0, dtype=np.int64), np.zeros(0))
        totals = rows_statistics(empty, spec, fields)
    return totals, batches


def _connect(address: str | None) -> None:
    from recbandits.cluster import connect
    from recbandits.verbosity import quiet_libraries

    quiet_libraries()
    connect(address)


def _reduce_with_ray_data(files: list[Path], spec: DatasetSpec, fields: dict[str, Any], workers: int | None,
                          batch_rows: int) -> tuple[dict[str, np.ndarray], int]:
    """(sum of the files' statistics, number of batches): one Ray Data task per file reduces it to one row of
    statistics (``file_statistics``), at most ``workers`` at a time; the driver adds the rows up."""

    def reduce_files(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [file_statistics(path, spec, fields, batch_rows) for path in batch["path"]]
        rows = {name: np.stack([statistics[name] for statistics, _ in results]) for name in STATISTICS}
        return {**rows, "batches": np.array([batches for _, batches in results])}

    totals, batches = None, 0
    for rows in per_file_tasks(files, reduce_files, workers):
        part = {name: rows[name].sum(0) for name in STATISTICS}
        batches += int(rows["batches"].sum())
        totals = part if totals is None else {name: totals[name] + part[name] for name in STATISTICS}
    return totals, batches


def trained_arm_ids(path: str | Path) -> list[str] | None:
    """The arm ids of a ``train`` output (disjoint datasets), or None when ``path`` is not one."""
    for candidate in (Path(path), *Path(path).parents[:2]):
        if (candidate / TRAIN_FILE).is_file():
            return json.loads((candidate / TRAIN_FILE).read_text())["policy"].get("arm_ids")
    return None
