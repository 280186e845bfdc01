"""The logged bandit feedback dataset: one schema, Parquet files, validated on read.

A dataset is a directory of Parquet files (``part-00000.parquet``, ...) and ``dataset.json``, which names the
shape and dimensions every row must have. One row is one logged decision:

| column | type | meaning |
|---|---|---|
| ``event_id`` | string | unique over the dataset |
| ``timestamp`` | float64 | seconds since the epoch of the decision |
| ``context`` | list<float64> [context_dim] | the global (user) features |
| ``candidates`` | list<string> | the candidate ids, in the order they were scored |
| ``candidate_features`` | list<list<float64>> [n, arm_dim] or null | shared shape: every candidate's features |
| ``action`` | string | the chosen candidate's id (one of ``candidates``) |
| ``propensity`` | float64 in (0, 1] or null | probability of ``action`` under the logging policy; null: unknown |
| ``action_probabilities`` | list<float64> [n] or null | every candidate's, when known |
| ``reward`` | float64 or null | null: no reward arrived |
| ``reward_source`` | string or null | ``observed`` or ``default_on_expiry`` |
| ``slate`` | list<string> [k] or null | rankings: the ids shown, in slot order (among ``candidates``) |
| ``slot_propensities`` | list<float64> [k] or null | rankings: probability of the slate's first 1, 2, ..., k slots |
| ``slot_marginals`` | list<float64> [k] or null | rankings: probability of each slot's item at that slot |
| ``position`` | int32 or null | the clicked slot of ``slate``; no slate: the slot of ``action`` in ``candidates`` |
| ``slot_rewards`` | list<float64> or null | feedback per slot: of ``slate`` [k], else of ``candidates`` [n] |
| ``policy`` | string | name of the logging policy |
| ``policy_version`` | int64 or null | its version (the service's) |
| ``expected_rewards`` | list<float64> [n] or null | simulators only: every candidate's expected reward |

A null element of ``slot_rewards`` is a slot that was not examined (a cascade's slots below its click). A ranking
row's ``action`` is the slate's top item, ``action_probabilities`` the probability of each candidate
at the top, ``propensity`` the action's (``slot_propensities[0]``), and ``reward`` the slate's total feedback.

Shapes (``dataset.json``): ``disjoint``, one model per arm, ``arm_ids`` lists every arm and candidates are arm
ids; ``shared``, one model over ``[context, candidate features]`` (and their outer product with
``interaction``), and every row carries ``candidate_features``.

    >>> import tempfile
    >>> spec = DatasetSpec(shape="disjoint", context_dim=2, arm_ids=["a", "b"])
    >>> rows = [{"event_id": "e1", "context": [1.0, 0.0], "candidates": ["a", "b"], "action": "b",
    ...          "propensity": 0.5, "reward": 1.0, "policy": "uniform"}]
    >>> out = tempfile.mkdtemp()
    >>> write_dataset(out, spec, [rows])[0].name
    'part-00000.parquet'
    >>> read_dataset(out).frame["action"].tolist()
    ['b']
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

SPEC_FILE = "dataset.json"
REWARD_SOURCES = ("observed", "default_on_expiry")

SCHEMA = pa.schema([
    pa.field("event_id", pa.string(), nullable=False),
    pa.field("timestamp", pa.float64()),
    pa.field("context", pa.list_(pa.float64()), nullable=False),
    pa.field("candidates", pa.list_(pa.string()), nullable=False),
    pa.field("candidate_features", pa.list_(pa.list_(pa.float64()))),
    pa.field("action", pa.string(), nullable=False),
    pa.field("propensity", pa.float64()),
    pa.field("action_probabilities", pa.list_(pa.float64())),
    pa.field("reward", pa.float64()),
    pa.field("reward_source", pa.string()),
    pa.field("slate", pa.list_(pa.string())),
    pa.field("slot_propensities", pa.list_(pa.float64())),
    pa.field("slot_marginals", pa.list_(pa.float64())),
    pa.field("position", pa.int32()),
    pa.field("slot_rewards", pa.list_(pa.float64())),
    pa.field("policy", pa.string(), nullable=False),
    pa.field("policy_version", pa.int64()),
    pa.field("expected_rewards", pa.list_(pa.float64())),
])
REQUIRED_COLUMNS = ("event_id", "context", "candidates", "action", "policy")


class LogFormatError(ValueError):
    """A logged dataset that breaks the schema: the message names the file, row and column."""


@dataclass
class DatasetSpec:
    """What every row of a dataset must agree with (``dataset.json``)."""

    shape: str  # "disjoint" or "shared"
    context_dim: int
    arm_dim: int = 0  # shared shape
    arm_ids: list[str] | None = None  # disjoint shape: every arm, in model order
    interaction: bool | None = None  # shared shape: the model's outer-product features (None: on)
    context_names: list[str] | None = None
    arm_feature_names: list[str] | None = None
    producer: dict[str, Any] = field(default_factory=dict)  # how it was made (command, env, policy, seed)

    def __post_init__(self):
        if self.shape not in ("disjoint", "shared"):
            raise ValueError(f"shape={self.shape!r} must be 'disjoint' or 'shared'")
        if self.context_dim < 1:
            raise ValueError(f"context_dim={self.context_dim} must be >= 1")
        if self.shape == "disjoint" and not self.arm_ids:
            raise ValueError("a disjoint dataset names its arm_ids")
        if self.shape == "shared" and self.arm_dim < 1:
            raise ValueError(f"a shared dataset needs arm_dim >= 1, got {self.arm_dim}")

    def model_fields(self, interaction: bool | None = None) -> dict[str, Any]:
        """The policy fields (``algos.candidates.build_module``, without ``model_config``) of a linear model over
        this dataset's features; ``interaction`` None: the dataset's own setting (shared datasets: on)."""
        if interaction is None:
            interaction = self.interaction if self.interaction is not None else self.shape == "shared"
        if interaction and self.shape == "disjoint":
            raise ValueError("--interaction applies to shared (per-arm features) datasets only")
        return {"shape": self.shape, "context_dim": self.context_dim,
                "num_arms": len(self.arm_ids) if self.shape == "disjoint" else 0, "arm_dim": self.arm_dim,
                "arm_ids": self.arm_ids, "interaction": bool(interaction)}

    @classmethod
    def read(cls, directory: str | Path) -> DatasetSpec:
        path = Path(directory) / SPEC_FILE
        try:
            values = json.loads(path.read_text())
            return cls(**values)
        except FileNotFoundError:
            raise LogFormatError(f"{path}: missing; a logged dataset is a directory of Parquet files and "
                                 f"{SPEC_FILE} (recbandits logs from-ratings / collect / export write one)") from None
        except (json.JSONDecodeError, TypeError, ValueError) as error:
            raise LogFormatError(f"{path}: {error}") from None


def dataset_files(directory: str | Path) -> list[Path]:
    """The Parquet files of a dataset, in name order."""
    directory = Path(directory)
    if not directory.is_dir():
        raise LogFormatError(f"{directory}: not a directory (a logged dataset is a directory of Parquet files)")
    files = sorted(directory.glob("*.parquet"))
    if not files:
        raise LogFormatError(f"{directory}: no .parquet files")
    return files


def write_dataset(directory: str | Path, spec: DatasetSpec,
                  parts: Iterable[Sequence[dict[str, Any]] | pd.DataFrame | pa.Table]) -> list[Path]:
    """Write ``parts`` (each row dicts, a DataFrame or a table) as ``part-NNNNN.parquet`` and ``dataset.json``.

    Columns a part leaves out are null. The rows are validated as the reader validates them, so a dataset that
    was written reads back.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("part-*.parquet"):
        stale.unlink()
    (directory / SPEC_FILE).write_text(json.dumps(asdict(spec), indent=1) + "\n")
    written, seen = [], {}
    for index, part in enumerate(parts):
        path = directory / f"part-{index:05d}.parquet"
        table = conform(part, path.name) if isinstance(part, pa.Table) else to_table(part, path.name)
        validate_table(table, spec, path.name, seen)
        pq.write_table(table, path)
        written.append(path)
    return written


def to_table(part: Sequence[dict[str, Any]] | pd.DataFrame, name: str = "rows") -> pa.Table:
    """Rows (dicts, or a DataFrame whose NaN in a float column means null) as a table of ``SCHEMA``."""
    if isinstance(part, pd.DataFrame):
        return conform(pa.Table.from_pandas(part, preserve_index=False), name)
    rows = list(part)
    # Every row's keys: pyarrow would infer the columns from the first row alone and drop the others' silently.
    unknown = sorted({key for row in rows for key in row} - set(SCHEMA.names))
    if unknown:
        raise LogFormatError(f"{name}: unknown column(s) {', '.join(unknown)}; the schema's are "
                             f"{', '.join(SCHEMA.names)}")
    try:
        return pa.Table.from_pylist(rows, schema=SCHEMA)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
        raise LogFormatError(f"{name}: a value does not fit the schema ({error})") from None


def table_from_arrays(columns: dict[str, Any], name: str = "rows") -> pa.Table:
    """A table of ``SCHEMA`` from columns: numpy arrays (1-d for scalars, [N, n] for list columns, [N, n, p] for
    ``candidate_features``: vectorized, no Python per row), Python lists (None for null, ragged lists allowed), or a
    scalar repeated on every row (e.g. a policy name)."""
    length = next(len(value) for value in columns.values() if isinstance(value, (np.ndarray, list)))
    arrays = {}
    for column, value in columns.items():
        if isinstance(value, list):
            arrays[column] = pa.array(value, type=SCHEMA.field(column).type)
            continue
        if not isinstance(value, np.ndarray):
            arrays[column] = pa.array([value] * length)
            continue
        if value.ndim == 1:
            arrays[column] = pa.array(value.astype(str) if value.dtype.kind in "OUS" else value)
            continue
        flat = value.reshape(-1)
        array = pa.array(flat.astype(str) if value.dtype.kind in "OUS" else flat)
        for size in reversed(value.shape[1:]):
            array = pa.FixedSizeListArray.from_arrays(array, size)
        arrays[column] = array
    return conform(pa.table(arrays), name)


# --------------------------------------------------------------------------------------------------
# Reading and validation
# --------------------------------------------------------------------------------------------------


@dataclass
class LoggedDataset:
    """A validated dataset in memory: its spec and every row (pandas)."""

    spec: DatasetSpec
    frame: pd.DataFrame
    files: list[Path]


def read_dataset(directory: str | Path, columns: Sequence[str] | None = None) -> LoggedDataset:
    """Read and validate every file of a dataset (small data; ``ray.data.read_parquet`` for large)."""
    spec = DatasetSpec.read(directory)
    files = dataset_files(directory)
    tables, seen = [], {}
    for path in files:
        table = read_table(path)
        validate_table(table, spec, path.name, seen)
        tables.append(table.select(list(columns)) if columns else table)
    frame = pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=SCHEMA.names)
    return LoggedDataset(spec, frame, files)


def read_table(path: Path) -> pa.Table:
    """One file, its columns checked against the schema and cast to it."""
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        raise LogFormatError(f"{path.name}: not a readable Parquet file ({error})") from None
    return conform(table, path.name)


def conform(table: pa.Table, name: str) -> pa.Table:
    """``table`` with the schema's columns in order, cast to its types, absent optional ones null."""
    missing = [name for name in REQUIRED_COLUMNS if name not in table.column_names]
    if missing:
        raise LogFormatError(f"{name}: missing column(s) {', '.join(missing)}")
    unknown = [name for name in table.column_names if name not in SCHEMA.names]
    if unknown:
        raise LogFormatError(f"{name}: unknown column(s) {', '.join(unknown)}; the schema's are "
                             f"{', '.join(SCHEMA.names)}")
    columns = []
    for schema_field in SCHEMA:
        if schema_field.name not in table.column_names:
            columns.append(pa.nulls(len(table), type=schema_field.type))
            continue
        column = table.column(schema_field.name)
        try:
            columns.append(_cast(column, schema_field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise LogFormatError(f"{name}: column {schema_field.name} has type {column.type}, "
                                 f"the schema {schema_field.type}") from None
    return pa.Table.from_arrays(columns, schema=SCHEMA)


def _cast(column: pa.ChunkedArray, target: pa.DataType) -> pa.ChunkedArray:
    """``column`` cast to ``target``, its list arrays compacted (``_compact``)."""
    cast = column.cast(target)
    if not pa.types.is_list(target):
        return cast
    return pa.chunked_array([_compact(chunk) for chunk in cast.chunks], type=target)


def _compact(array: pa.Array) -> pa.Array:
    """A list array whose null entries span no values (a null written by another tool, or a cast fixed-size list,
    may still hold values): then its offsets, ``flatten()`` and its parent indices all agree. Recurses into
    nested lists; an array without null lists is returned as it is."""
    if not _has_null_lists(array):
        return array
    values = _compact(array.flatten())
    lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(zero_copy_only=False)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    return pa.ListArray.from_arrays(offsets, values, mask=array.is_null() if array.null_count else None)


def _has_null_lists(array: pa.Array) -> bool:
    return pa.types.is_list(array.type) and (array.null_count > 0 or _has_null_lists(array.flatten()))


def validate_table(table: pa.Table, spec: DatasetSpec, file: str, seen_event_ids: dict[str, str]) -> None:
    """Raise ``LogFormatError`` naming the file, row (0-based within the file) and column of the first bad value.

    Vectorized over Arrow columns; the checks run column by column, so the error is the first bad row of the first
    column (in the order below) that has one.
    """
    rows = table.num_rows

    def check(bad, column: str, message) -> None:
        """``bad``: a boolean array over rows; ``message``: a text, or a function of the bad row's index."""
        bad = np.asarray(bad, dtype=bool)
        if bad.any():
            row = int(np.argmax(bad))
            raise LogFormatError(f"{file} row {row} column {column}: {message(row) if callable(message) else message}")

    def column(name: str) -> pa.Array:
        return table.column(name).combine_chunks()

    def per_row(flat_bad: np.ndarray, list_column: pa.Array) -> np.ndarray:
        """Rows of a list column with at least one bad element."""
        bad = np.zeros(rows, dtype=bool)
        if len(flat_bad):
            bad[pc.list_parent_indices(list_column).to_numpy()[flat_bad]] = True
        return bad

    def lengths(list_column: pa.Array) -> np.ndarray:
        return pc.fill_null(pc.list_value_length(list_column), -1).to_numpy()

    def optional_list(name: str) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """(the list column, which rows have one, its lengths: -1 where null)."""
        array = column(name)
        return array, pc.is_valid(array).to_numpy(zero_copy_only=False), lengths(array)

    def finite(list_column: pa.Array) -> np.ndarray:
        values = list_column.flatten()
        return per_row(~np.isfinite(pc.fill_null(values, np.nan).to_numpy(zero_copy_only=False)), list_column)

    event_ids = column("event_id")
    check(pc.is_null(event_ids).to_numpy(zero_copy_only=False) | (pc.fill_null(pc.utf8_length(event_ids), 0)
                                                                  .to_numpy() == 0), "event_id", "missing")
    ids = event_ids.to_pylist()
    duplicate = pd.Series(ids).duplicated().to_numpy() | np.array([event in seen_event_ids for event in ids], bool)
    check(duplicate, "event_id", lambda row: f"duplicate event id {ids[row]!r} (also in "
                                             f"{seen_event_ids.get(ids[row], 'an earlier row of this file')})")
    check(pc.is_null(column("policy")).to_numpy(zero_copy_only=False), "policy", "missing")

    contexts = column("context")
    context_lengths = lengths(contexts)
    check(context_lengths != spec.context_dim, "context", lambda row: f"{max(context_lengths[row], 0)} values, the "
                                                                      f"dataset's context_dim is {spec.context_dim}")
    check(finite(contexts), "context", "NaN or infinite value")

    candidates = column("candidates")
    counts = lengths(candidates)
    check(counts <= 0, "candidates", "empty")
    flat_candidates = candidates.flatten()
    check(per_row(pc.is_null(flat_candidates).to_numpy(zero_copy_only=False), candidates), "candidates",
          "a null candidate id")
    owner = pc.list_parent_indices(candidates).to_numpy()
    pairs = pd.DataFrame({"row": owner, "id": flat_candidates.to_numpy(zero_copy_only=False)})
    check(per_row(pairs.duplicated().to_numpy(), candidates), "candidates", "repeated candidate id")
    features = column("candidate_features")
    if spec.shape == "disjoint":
        known_arm = pc.is_in(flat_candidates, value_set=pa.array(spec.arm_ids)).to_numpy(zero_copy_only=False)
        arm_set = set(spec.arm_ids)

        def unknown_arm(row: int) -> str:
            first = next(candidate for candidate in candidates[row].as_py() if candidate not in arm_set)
            return f"{first!r} is not one of the dataset's arm_ids"

        check(per_row(~known_arm, candidates), "candidates", unknown_arm)
        check(pc.is_valid(features).to_numpy(zero_copy_only=False), "candidate_features",
              "a disjoint dataset has no candidate features")
    else:
        feature_rows = lengths(features)
        check(feature_rows != counts, "candidate_features",
              lambda row: f"{max(feature_rows[row], 0)} rows for {counts[row]} candidates")
        vectors = features.flatten()
        vector_lengths = lengths(vectors)

        def wrong_vector(row: int) -> str:
            sizes = lengths(features[row].values)
            return f"a vector of {max(sizes[sizes != spec.arm_dim][0], 0)} values, the arm_dim is {spec.arm_dim}"

        check(per_row(vector_lengths != spec.arm_dim, features), "candidate_features", wrong_vector)
        flat_features = pc.fill_null(vectors.flatten(), np.nan).to_numpy(zero_copy_only=False)
        bad_vectors = np.zeros(len(vectors), dtype=bool)
        bad_vectors[pc.list_parent_indices(vectors).to_numpy()[~np.isfinite(flat_features)]] = True
        check(per_row(bad_vectors, features), "candidate_features", "NaN or infinite value")

    actions = column("action")
    is_action = pc.fill_null(pc.equal(flat_candidates, actions.take(pa.array(owner))), False).to_numpy(
        zero_copy_only=False)
    found = np.bincount(owner[is_action], minlength=rows) > 0
    action_values = actions.to_pylist()
    check(~found, "action", lambda row: f"{action_values[row]!r} is not among the row's candidates")

    propensity = column("propensity")
    known = pc.is_valid(propensity).to_numpy(zero_copy_only=False)
    values = pc.fill_null(propensity, 0.5).to_numpy(zero_copy_only=False)
    check(known & ~((values > 0) & (values <= 1)), "propensity",
          lambda row: f"{values[row]} is outside (0, 1]")
    probabilities, has_probabilities, probability_counts = optional_list("action_probabilities")
    check(has_probabilities & (probability_counts != counts), "action_probabilities",
          lambda row: f"{probability_counts[row]} values for {counts[row]} candidates")
    if has_probabilities.any():
        flat = pc.fill_null(probabilities.flatten(), np.nan).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(probabilities).to_numpy()
        out_of_range = per_row(~((flat >= 0) & (flat <= 1)), probabilities)
        sums = np.bincount(parents, weights=np.nan_to_num(flat), minlength=rows)
        check(has_probabilities & (out_of_range | (np.abs(sums - 1.0) > 1e-6)), "action_probabilities",
              "not a probability distribution over the candidates")
        # Candidates and probabilities are aligned row by row (same lengths): the action's entry is at is_action.
        action_probability = np.full(rows, np.nan)
        aligned = has_probabilities[owner] & is_action
        offsets = probabilities.offsets.to_numpy()[:-1]
        candidate_offsets = candidates.offsets.to_numpy()[:-1]
        positions = np.flatnonzero(aligned)
        action_probability[owner[positions]] = flat[offsets[owner[positions]] + positions -
                                                    candidate_offsets[owner[positions]]]
        check(known & has_probabilities & ~np.isclose(action_probability, values, rtol=1e-9, atol=1e-12),
              "propensity", lambda row: f"{values[row]} differs from the action's action_probabilities entry")

    rewards = pc.fill_null(column("reward"), 0.0).to_numpy(zero_copy_only=False)
    check(~np.isfinite(rewards), "reward", "NaN or infinite")
    sources = column("reward_source")
    source_values = sources.to_pylist()
    check(pc.is_valid(sources).to_numpy(zero_copy_only=False)
          & ~pc.fill_null(pc.is_in(sources, value_set=pa.array(REWARD_SOURCES)), True).to_numpy(zero_copy_only=False),
          "reward_source", lambda row: f"{source_values[row]!r} is not one of {', '.join(REWARD_SOURCES)}")
    slates, has_slate, slate_sizes = optional_list("slate")
    check(has_slate & (slate_sizes <= 0), "slate", "empty")
    shown = np.where(has_slate, slate_sizes, counts)  # the slots: the slate's, else every candidate
    if has_slate.any():
        slate_owner = pc.list_parent_indices(slates).to_numpy()
        slate_pairs = pd.DataFrame({"row": slate_owner, "id": slates.flatten().to_numpy(zero_copy_only=False)})
        check(per_row(slate_pairs.duplicated().to_numpy(), slates), "slate", "repeated id")
        unknown = ~pd.MultiIndex.from_frame(slate_pairs).isin(pd.MultiIndex.from_frame(pairs))
        check(per_row(unknown, slates), "slate", "an id that is not among the row's candidates")
        first = pc.list_element(pc.fill_null(slates, pa.scalar(["?"], pa.list_(pa.string()))), 0)
        check(has_slate & ~pc.fill_null(pc.equal(first, actions), False).to_numpy(zero_copy_only=False), "action",
              lambda row: f"{action_values[row]!r} is not the slate's top item")
    def per_slot(name: str) -> tuple[pa.Array, np.ndarray, np.ndarray]:
        """A list column of one value per slot of the slate (``optional_list``), given only with a slate."""
        array, given, sizes = optional_list(name)
        check(given & ~has_slate, name, "given without a slate")
        check(given & (sizes != shown), name, lambda row: f"{sizes[row]} values for a slate of {shown[row]}")
        return array, given, sizes

    slot_propensities, has_slot_propensities, sizes = per_slot("slot_propensities")
    if has_slot_propensities.any():
        flat = pc.fill_null(slot_propensities.flatten(), np.nan).to_numpy(zero_copy_only=False)
        parents = pc.list_parent_indices(slot_propensities).to_numpy()
        rising = np.zeros(len(flat), dtype=bool)
        rising[1:] = (flat[1:] > flat[:-1] * (1 + 1e-12)) & (parents[1:] == parents[:-1])
        check(per_row(~((flat > 0) & (flat <= 1)) | rising, slot_propensities), "slot_propensities",
              "not the probabilities of a slate's prefixes (in (0, 1], never rising)")
        top = np.full(rows, np.nan)
        nonempty = has_slot_propensities & (sizes > 0)
        top[nonempty] = flat[slot_propensities.offsets.to_numpy()[:-1][nonempty]]
        check(known & has_slot_propensities & ~np.isclose(top, values, rtol=1e-9, atol=1e-12), "propensity",
              lambda row: f"{values[row]} differs from slot_propensities[0]")
    slot_marginals, has_slot_marginals, _ = per_slot("slot_marginals")
    if has_slot_marginals.any():
        flat = pc.fill_null(slot_marginals.flatten(), np.nan).to_numpy(zero_copy_only=False)
        check(per_row(~((flat > 0) & (flat <= 1)), slot_marginals), "slot_marginals", "not in (0, 1]")
    positions = column("position")
    has_position = pc.is_valid(positions).to_numpy(zero_copy_only=False)
    position_values = pc.fill_null(positions, 0).to_numpy(zero_copy_only=False)
    check(has_position & ((position_values < 0) | (position_values >= shown)), "position",
          lambda row: f"{position_values[row]} is not one of the row's {shown[row]} slots")
    action_slot = np.full(rows, -1)
    action_slot[owner[is_action]] = (np.arange(len(owner)) - candidates.offsets.to_numpy()[:-1][owner])[is_action]
    check(has_position & ~has_slate & (position_values != action_slot), "position",
          lambda row: f"{position_values[row]} is not the slot of the action ({action_slot[row]})")
    slot_rewards, has_slots, slot_counts = optional_list("slot_rewards")
    check(has_slots & (slot_counts != shown), "slot_rewards",
          lambda row: f"{slot_counts[row]} values for {shown[row]} {'slots' if has_slate[row] else 'candidates'}")
    slot_values = slot_rewards.flatten()
    infinite = ~np.isfinite(pc.fill_null(slot_values, 0.0).to_numpy(zero_copy_only=False))
    check(has_slots & per_row(infinite, slot_rewards), "slot_rewards", "NaN or infinite value")
    timestamps = pc.fill_null(column("timestamp"), 0.0).to_numpy(zero_copy_only=False)
    check(~np.isfinite(timestamps), "timestamp", "NaN or infinite")
    expected, has_expected, expected_counts = optional_list("expected_rewards")
    check(has_expected & finite(expected), "expected_rewards", "NaN or infinite value")
    check(has_expected & (expected_counts != counts), "expected_rewards",
          lambda row: f"{expected_counts[row]} values for {counts[row]} candidates")
    seen_event_ids.update(dict.fromkeys(ids, file))


# --------------------------------------------------------------------------------------------------
# Rows as model inputs
# --------------------------------------------------------------------------------------------------


def learning_columns(spec: DatasetSpec, slot_rewards: bool) -> list[str]:
    """The columns ``learning_rows`` reads, for a file with (or without) any ``slot_rewards``."""
    columns = ["context", "action", "reward", "slot_rewards"]
    if spec.shape == "shared" or slot_rewards:
        columns.append("candidates")
    if slot_rewards:
        columns.append("slate")
    if spec.shape == "shared":
        columns.append("candidate_features")
    return columns


def select_columns(table: pa.Table, columns: Sequence[str], name: str) -> pa.Table:
    """``columns`` of a validated table, cast to the schema's types (null where the table has none)."""
    arrays = []
    for column in columns:
        target = SCHEMA.field(column).type
        if column not in table.column_names:
            arrays.append(pa.nulls(len(table), type=target))
            continue
        try:
            arrays.append(_cast(table.column(column), target))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise LogFormatError(f"{name}: column {column} has type {table.column(column).type}, the schema "
                                 f"{target}") from None
    return pa.table(dict(zip(columns, arrays, strict=True)))


def learning_rows(table: pa.Table, spec: DatasetSpec) -> tuple[np.ndarray, np.ndarray | None, np.ndarray,
                                                               np.ndarray]:
    """(contexts [N, g], learned candidates' features [N, p] or None, model index [N], rewards [N]): what a linear
    bandit learns from a dataset. A row with ``slot_rewards`` teaches every examined slot's candidate its feedback
    (the slate's items, or with no slate every candidate); any other row with a reward teaches its action.
    Vectorized over Arrow columns (validated rows; the table needs
    ``learning_columns``, cast to the schema: ``select_columns``)."""
    slotted = pc.is_valid(table.column("slot_rewards"))
    parts = [_action_rows(table.filter(pc.and_(pc.invert(slotted), pc.is_valid(table.column("reward")))), spec)]
    if pc.any(slotted).as_py():
        parts.append(_slot_rows(table.filter(slotted), spec))
    if len(parts) == 1:
        return parts[0]
    return tuple(None if parts[0][k] is None else np.concatenate([part[k] for part in parts]) for k in range(4))


def _slot_rows(table: pa.Table, spec: DatasetSpec):
    """Every slot with feedback (a null element: not examined) teaches its candidate: the slate's item, or with
    no slate the candidate at that index."""
    candidates = table.column("candidates").combine_chunks()
    candidate_starts = candidates.offsets.to_numpy()[:-1]
    slot_rewards = table.column("slot_rewards").combine_chunks()
    owner = pc.list_parent_indices(slot_rewards).to_numpy()
    slot = np.arange(len(owner)) - slot_rewards.offsets.to_numpy()[:-1][owner]
    index = slot.copy()  # the slot's candidate, within its row
    slates = table.column("slate").combine_chunks()
    with_slate = pc.is_valid(slates).to_numpy(zero_copy_only=False)[owner]
    if with_slate.any():
        ids = pd.DataFrame({"row": pc.list_parent_indices(candidates).to_numpy(),
                            "id": candidates.flatten().to_numpy(zero_copy_only=False)})
        ids["index"] = np.arange(len(ids)) - candidate_starts[ids["row"].to_numpy()]
        shown = pd.DataFrame({"row": pc.list_parent_indices(slates).to_numpy(),
                              "id": slates.flatten().to_numpy(zero_copy_only=False)})
        shown_index = shown.merge(ids, on=["row", "id"], how="left")["index"].to_numpy()
        slate_starts = slates.offsets.to_numpy()[:-1]
        index[with_slate] = shown_index[slate_starts[owner[with_slate]] + slot[with_slate]]
    examined = pc.is_valid(slot_rewards.flatten()).to_numpy(zero_copy_only=False)
    owner, position = owner[examined], candidate_starts[owner[examined]] + index[examined]
    rewards = _flat(slot_rewards)[examined] if examined.all() else \
        slot_rewards.flatten().filter(pa.array(examined)).to_numpy().astype(np.float64)
    contexts = _flat(table.column("context")).reshape(table.num_rows, spec.context_dim)[owner]
    if spec.shape == "disjoint":
        models = pc.index_in(candidates.flatten().take(pa.array(position)), value_set=pa.array(spec.arm_ids))
        return contexts, None, models.to_numpy(zero_copy_only=False).astype(np.int64), rewards
    features = _flat(table.column("candidate_features").combine_chunks().flatten()).reshape(-1, spec.arm_dim)
    return contexts, features[position], np.zeros(len(rewards), dtype=np.int64), rewards


def _action_rows(table: pa.Table, spec: DatasetSpec):
    count = table.num_rows
    contexts = _flat(table.column("context")).reshape(count, spec.context_dim)
    rewards = table.column("reward").to_numpy().astype(np.float64)
    actions = table.column("action").combine_chunks()
    if spec.shape == "disjoint":
        models = pc.index_in(actions, value_set=pa.array(spec.arm_ids)).to_numpy(zero_copy_only=False)
        return contexts, None, models.astype(np.int64), rewards
    candidates = table.column("candidates").combine_chunks()
    flat_candidates = candidates.flatten()
    owner = pc.list_parent_indices(candidates)
    is_action = pc.equal(flat_candidates, actions.take(owner)).to_numpy(zero_copy_only=False)
    features = _flat(table.column("candidate_features").combine_chunks().flatten()).reshape(-1, spec.arm_dim)
    return contexts, features[is_action], np.zeros(count, dtype=np.int64), rewards


def _flat(column) -> np.ndarray:
    """The float64 values of a list column (or chunked array) of equal-length lists, as one flat array."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    return array.flatten().to_numpy(zero_copy_only=False).astype(np.float64)


def per_file_tasks(files: Sequence[str | Path], task, workers: int | None = None):
    """Run ``task`` (a Ray Data batch function of ``{"path": [one path]}``) over Ray Data, one task per file, at
    most ``workers`` at a time (None: as the cluster's CPUs allow); yield each task's output batch.

    One block per file: ``read_parquet`` would merge small files into one read task and process them serially."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = False
    pool = {"compute": ray.data.TaskPoolStrategy(size=workers)} if workers else {}
    paths = ray.data.from_items([{"path": str(path)} for path in files], override_num_blocks=len(files))
    yield from paths.map_batches(task, batch_size=1, **pool).iter_batches(batch_size=None)
