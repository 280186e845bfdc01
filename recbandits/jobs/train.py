"""Offline training: a linear bandit learned from a logged-feedback dataset, written as a servable checkpoint.

    recbandits train --data logs/ratings-train --algo linucb --out runs/offline
    recbandits serve --checkpoint runs/offline --state-dir state/    # warm-starts from it

The linear bandits' state is sufficient statistics, sums over the rewarded rows (``kernel``'s table), so the
files are reduced in parallel: one Ray Data task per Parquet file reads it in batches and reduces them to
statistics (a [M, D, D] array, whatever the number of rows; memory is bounded by one batch), and the driver adds
the files' statistics up. The result equals the closed-form ridge regression on the same rows, for any number
of files and workers. A row teaches its action's reward, or with ``slot_rewards`` every candidate its slot's;
rows without either are not learned from. Every file is validated before Ray starts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from recbandits.algos import kernel
from recbandits.logs.dataset import (
    DatasetSpec,
    dataset_files,
    learning_columns,
    learning_rows,
    read_table,
    select_columns,
    validate_table,
)

TRAIN_FILE = "train.json"
OFFLINE_ALGOS = {"linucb": "ucb", "lints": "thompson", "eps-greedy": "eps_greedy"}
STATISTICS = ("data_precision", "data_response", "response_square", "counts")


def policy_fields(spec: DatasetSpec, algo: str, training: dict[str, Any]) -> dict[str, Any]:
    """The policy fields (``candidates.build_module``) of a model for the dataset's shape."""
    interaction = training.pop("interaction", None)
    if interaction is None:
        interaction = spec.interaction if spec.interaction is not None else spec.shape == "shared"
    if interaction and spec.shape == "disjoint":
        raise ValueError("--interaction applies to shared (per-arm features) datasets only")
    return {"shape": spec.shape, "context_dim": spec.context_dim,
            "num_arms": len(spec.arm_ids) if spec.shape == "disjoint" else 0, "arm_dim": spec.arm_dim,
            "arm_ids": spec.arm_ids, "interaction": bool(interaction),
            "model_config": {"exploration": OFFLINE_ALGOS[algo], **training}}


def batch_statistics(table: pa.Table, spec: DatasetSpec, fields: dict[str, Any],
                     chunk_rows: int = 8_192) -> dict[str, np.ndarray]:
    """The sufficient statistics of one block of rows (``learning_rows``: what its rows teach), computed
    ``chunk_rows`` learning rows at a time (a row with slot rewards teaches one per candidate)."""
    contexts, learned, models, rewards = learning_rows(select_columns(table, learning_columns(spec, True), "block"),
                                                       spec)
    num_models = max(fields["num_arms"], 1) if spec.shape == "disjoint" else 1
    totals = None
    for start in range(0, max(len(rewards), 1), chunk_rows):
        part = slice(start, start + chunk_rows)
        features = torch.from_numpy(contexts[part])
        if spec.shape == "shared":
            features = kernel.candidate_features(features, torch.from_numpy(learned[part]).unsqueeze(1),
                                                 fields["interaction"])[:, 0]
        statistics = kernel.sufficient_statistics(features, torch.from_numpy(models[part]),
                                                  torch.from_numpy(rewards[part]), num_models)
        totals = statistics if totals is None else [a + b for a, b in zip(totals, statistics, strict=True)]
    return {name: value.numpy() for name, value in zip(STATISTICS, totals, strict=True)}


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

    if algo not in OFFLINE_ALGOS:
        raise ValueError(f"--algo {algo!r}: offline training takes {', '.join(OFFLINE_ALGOS)}")
    training = dict(training or {})
    if validate:
        spec, files, rows = validate_files(data)
    else:
        spec, files = DatasetSpec.read(data), dataset_files(data)
        rows = None
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


def file_statistics(path: str | Path, spec: DatasetSpec, fields: dict[str, Any],
                    batch_rows: int) -> tuple[dict[str, np.ndarray], int]:
    """(statistics, batches) of one file, read ``batch_rows`` rows at a time (memory bounded by the batch)."""
    totals, batches = None, 0
    parquet = pq.ParquetFile(path)
    # Only the columns learning reads (the ids and probabilities are most of a row); the candidates only where
    # they are needed: shared features, or slot rewards, which teach every candidate.
    slots = ("slot_rewards" in parquet.schema_arrow.names
             and parquet.read(columns=["slot_rewards"]).column(0).null_count < parquet.metadata.num_rows)
    columns = [column for column in learning_columns(spec, slots) if column in parquet.schema_arrow.names]
    for batch in parquet.iter_batches(batch_size=batch_rows, columns=columns):
        part = batch_statistics(pa.Table.from_batches([batch]), spec, fields)
        totals = part if totals is None else {name: totals[name] + part[name] for name in STATISTICS}
        batches += 1
    return totals, batches


def _connect(address: str | None) -> None:
    import ray

    from recbandits.cluster import connect
    from recbandits.verbosity import quiet_libraries

    quiet_libraries()
    connect(address)
    ray.data.DataContext.get_current().enable_progress_bars = False


def _reduce_with_ray_data(files: list[Path], spec: DatasetSpec, fields: dict[str, Any], workers: int | None,
                          batch_rows: int) -> tuple[dict[str, np.ndarray], int]:
    """(sum of the files' statistics, number of batches): one Ray Data task per file reduces it to one row of
    statistics (``file_statistics``), at most ``workers`` at a time; the driver adds the rows up."""
    import ray

    def reduce_files(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [file_statistics(path, spec, fields, batch_rows) for path in batch["path"]]
        rows = {name: np.stack([statistics[name] for statistics, _ in results]) for name in STATISTICS}
        return {**rows, "batches": np.array([batches for _, batches in results])}

    # One block per file: ``read_parquet`` would merge small files into one read task and reduce them serially.
    paths = ray.data.from_items([{"path": str(path)} for path in files], override_num_blocks=len(files))
    totals, batches = None, 0
    for rows in paths.map_batches(reduce_files, batch_size=1, concurrency=workers).iter_batches(batch_size=None):
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
