"""Logged data at scale: offline training rows/s over Ray Data against a single-process numpy reduction of the
same rows, peak memory on a dataset larger than the object store, and the producers' throughput.

    .venv/bin/python benchmarks/logged_data.py [--rows 10000000] [--files 100] [--object-store-mb 256]
                                               [--collect-steps 200000] [--export-events 50000] [--out DIR]

1. A synthetic disjoint dataset (``--rows`` rows in ``--files`` Parquet files; context 20, 20 arms, 5
   candidates per row) is written once to ``--out`` (reused when it is already there) and validated once.
2. Training, each run in turn: ``recbandits train`` over Ray Data with 1 and 2 workers (a local Ray whose object
   store is ``--object-store-mb``: the dataset does not fit it), ``train`` in-process, and a plain numpy
   reduction (pyarrow columns, one ``X^T X`` per arm, nothing of recbandits) in 1 and in 2 processes: the
   machine's own scaling for the same work. Every result is checked equal to the numpy one (rtol 1e-9). The
   peak RSS of the whole process tree (driver, raylet, workers) is sampled every 0.2 s.
3. ``logs collect`` rows/s (softmax on the MF env and on the per-arm env, 1 and 2 workers) and ``logs export``
   rows/s (a state dir of ``--export-events`` decisions written by the service's own core, with rewards).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow.compute as pc
import pyarrow.parquet as pq
from benchmark_data import ml100k_or_none

from recbandits.logs.dataset import DatasetSpec, table_from_arrays, write_dataset

CONTEXT_DIM, ARMS, CANDIDATES = 20, 20, 5
ARM_IDS = [f"arm{k}" for k in range(ARMS)]


def write_synthetic(out: Path, rows: int, files: int) -> float:
    """Write the dataset (seeded); return its rows/s."""
    spec = DatasetSpec(shape="disjoint", context_dim=CONTEXT_DIM, arm_ids=ARM_IDS,
                       producer={"command": "benchmarks/logged_data.py", "rows": rows, "files": files})
    per_file = rows // files
    truth = np.random.default_rng(0).normal(size=(ARMS, CONTEXT_DIM))

    def parts():
        for index in range(files):
            rng = np.random.default_rng(index + 1)
            contexts = rng.normal(size=(per_file, CONTEXT_DIM))
            candidates = np.argsort(rng.random((per_file, ARMS)), axis=1)[:, :CANDIDATES]
            actions = candidates[np.arange(per_file), rng.integers(CANDIDATES, size=per_file)]
            rewards = np.einsum("nd,nd->n", contexts, truth[actions]) + rng.normal(size=per_file)
            names = np.array(ARM_IDS)
            yield table_from_arrays({
                "event_id": np.char.add(f"f{index}-", np.arange(per_file).astype(str)),
                "context": contexts, "candidates": names[candidates], "action": names[actions],
                "propensity": np.full(per_file, 1.0 / CANDIDATES), "reward": rewards, "policy": "uniform"})

    started = time.perf_counter()
    write_dataset(out, spec, parts())
    return rows / (time.perf_counter() - started)


def numpy_file_statistics(path: str) -> np.ndarray:
    """[ARMS, D+1, D+1] sums of [x, r][x, r]^T per arm of one file, with pyarrow and numpy only."""
    table = pq.read_table(path, columns=["context", "action", "reward"])
    contexts = table.column("context").combine_chunks().flatten().to_numpy().reshape(-1, CONTEXT_DIM)
    arms = pc.index_in(table.column("action"), value_set=pc.cast(np.array(ARM_IDS), "string")).to_numpy()
    joined = np.column_stack([contexts, table.column("reward").to_numpy()])
    out = np.zeros((ARMS, CONTEXT_DIM + 1, CONTEXT_DIM + 1))
    for arm in range(ARMS):
        rows = joined[arms == arm]
        out[arm] = rows.T @ rows
    return out


def numpy_reduction(files: list[str], processes: int) -> np.ndarray:
    if processes == 1:
        return sum(numpy_file_statistics(path) for path in files)
    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        return sum(pool.map(numpy_file_statistics, files, chunksize=1))


class PeakMemory:
    """Peak RSS of this process and all its descendants, sampled every 0.2 s while in the block."""

    def __enter__(self):
        self.peak, self._stop = 0, threading.Event()
        self.before = self._tree_rss()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    @staticmethod
    def _tree_rss() -> int:
        me, total = psutil.Process(), 0
        for process in [me, *me.children(recursive=True)]:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                pass
        return total

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._tree_rss())
            self._stop.wait(0.2)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def learned_statistics(out: Path) -> np.ndarray:
    """The trained checkpoint's statistics as the numpy reduction lays them out."""
    from recbandits.algos.checkpoints import load_module

    state = load_module(out / "checkpoint").get_state()
    result = np.zeros((ARMS, CONTEXT_DIM + 1, CONTEXT_DIM + 1))
    result[:, :CONTEXT_DIM, :CONTEXT_DIM] = np.asarray(state["data_precision"])  # the data's sums, no prior
    result[:, :CONTEXT_DIM, CONTEXT_DIM] = np.asarray(state["data_response"])
    result[:, CONTEXT_DIM, :CONTEXT_DIM] = np.asarray(state["data_response"])
    result[:, CONTEXT_DIM, CONTEXT_DIM] = np.asarray(state["response_square"])
    return result


def training_section(args, data: Path) -> None:
    from recbandits.cluster import connect
    from recbandits.jobs.train import train, validate_files

    files = sorted(str(path) for path in data.glob("*.parquet"))
    disk_mb = sum(Path(path).stat().st_size for path in files) / 2**20
    arrow_mb = pq.read_table(files[0]).nbytes * len(files) / 2**20
    started = time.perf_counter()
    _, _, rows = validate_files(data)
    validate_s = time.perf_counter() - started
    print(f"dataset: {rows:,} rows in {len(files)} files, {disk_mb:,.0f} MiB on disk, {arrow_mb:,.0f} MiB as Arrow "
          f"in memory; object store {args.object_store_mb} MiB; validation {rows / validate_s:,.0f} rows/s")
    connect(num_cpus=2, object_store_memory=args.object_store_mb * 2**20)
    reference = None
    results = []
    for name, run in (("numpy, 1 process", lambda: numpy_reduction(files, 1)),
                      ("numpy, 2 processes", lambda: numpy_reduction(files, 2)),
                      ("train, Ray Data, 1 worker", lambda: train(data, "linucb", args.out / "t1", workers=1,
                                                                   validate=False)),
                      ("train, Ray Data, 2 workers", lambda: train(data, "linucb", args.out / "t2", workers=2,
                                                                    validate=False)),
                      ("train, in-process", lambda: train(data, "linucb", args.out / "t0", use_ray=False,
                                                           validate=False))):
        with PeakMemory() as memory:
            started = time.perf_counter()
            result = run()
            elapsed = time.perf_counter() - started
        if isinstance(result, np.ndarray):
            reference = result if reference is None else reference
            np.testing.assert_allclose(result, reference, rtol=1e-9)
        else:
            out = args.out / {1: "t1", 2: "t2"}.get(result["workers"], "t0")
            np.testing.assert_allclose(learned_statistics(out), reference, rtol=1e-9, atol=1e-6)
        results.append((name, elapsed, memory.peak))
        print(f"  {name:28s} {rows / elapsed:12,.0f} rows/s  {elapsed:6.1f} s  RSS of the process tree: peak "
              f"{memory.peak / 2**20:6,.0f} MiB, {(memory.peak - memory.before) / 2**20:+6,.0f} MiB over its start")
    rate = {name: rows / elapsed for name, elapsed, _ in results}
    ray_1, ray_2 = rate["train, Ray Data, 1 worker"], rate["train, Ray Data, 2 workers"]
    plain_1, plain_2 = rate["numpy, 1 process"], rate["numpy, 2 processes"]
    print(f"  2/1 speed-up: Ray Data {ray_2 / ray_1:.2f}x, plain processes {plain_2 / plain_1:.2f}x; "
          f"Ray Data (2 workers) against numpy (1 process): {ray_2 / plain_1:.2f}x")


def collect_section(args) -> None:
    from recbandits.jobs.collect import collect

    data_dir = ml100k_or_none()
    for env in ("movielens", "movielens-per-arm"):
        for workers in (1, 2):
            started = time.perf_counter()
            summary = collect(env, "softmax", args.collect_steps, args.out / f"collect-{env}-{workers}",
                              data_dir=data_dir, workers=workers, num_envs=1024)
            elapsed = time.perf_counter() - started
            print(f"  collect {env:18s} {workers} worker(s): {summary['rows'] / elapsed:10,.0f} rows/s "
                  f"({summary['rows']:,} rows, {elapsed:.1f} s with start-up)")


def export_section(args) -> None:
    from recbandits.serve.config import ServeConfig
    from recbandits.serve.core import BanditCore
    from recbandits.serve.export import export_log
    from recbandits.serve.state import prepare_state_dir

    state_dir = args.out / "export-state"
    if state_dir.exists():
        import shutil

        shutil.rmtree(state_dir)
    config = prepare_state_dir(ServeConfig(state_dir=str(state_dir), context_dim=CONTEXT_DIM, num_arms=ARMS,
                                           join_window_s=3600.0, snapshot_interval_s=3600.0))
    rng = np.random.default_rng(0)

    async def serve_events():
        core = BanditCore(config)
        for start in range(0, args.export_events, 1000):
            rows = []
            for index in range(start, min(start + 1000, args.export_events)):
                arm = core.policy.arm_ids[index % ARMS]
                rows.append({"kind": "decision", "event_id": f"e{index}", "policy_version": core.version_id,
                             "watermark": core.watermark, "context": rng.normal(size=CONTEXT_DIM).round(6).tolist(),
                             "candidates": None, "excluded": [], "action": arm, "model": core.policy.arm_index[arm],
                             "chosen_features": None, "propensity": 1.0, "exploration": "ucb"})
            await core.log_decisions(rows)
            for index in range(start, min(start + 1000, args.export_events), 2):
                await core.record_reward(f"e{index}", float(rng.normal()))
        await core.log.drain()
        await core.close()

    asyncio.run(serve_events())
    log_mb = (state_dir / "events.jsonl").stat().st_size / 2**20
    started = time.perf_counter()
    summary = export_log(state_dir, args.out / "export")
    elapsed = time.perf_counter() - started
    print(f"  export: {summary['decisions'] / elapsed:10,.0f} decisions/s ({summary['decisions']:,} decisions, "
          f"{log_mb:.0f} MiB of event log, {elapsed:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=100)
    parser.add_argument("--object-store-mb", type=int, default=256)
    parser.add_argument("--collect-steps", type=int, default=200_000)
    parser.add_argument("--export-events", type=int, default=50_000)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-logged-data"))
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: training, collect, export")
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"logged data benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {psutil.cpu_count()} CPUs")
    if "training" not in skip:
        data = args.out / f"synthetic-{args.rows}-{args.files}"
        if not (data / "dataset.json").is_file():
            print(f"writing the dataset: {write_synthetic(data, args.rows, args.files):,.0f} rows/s")
        training_section(args, data)
    if "collect" not in skip:
        collect_section(args)
    if "export" not in skip:
        export_section(args)


if __name__ == "__main__":
    main()
