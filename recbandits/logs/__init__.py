"""recbandits.logs: the logged bandit feedback dataset (schema, writer, reader, validation; docs/logged-data.md)."""

from recbandits.logs.dataset import (
    SCHEMA,
    DatasetSpec,
    LogFormatError,
    LoggedDataset,
    read_dataset,
    write_dataset,
)

__all__ = ["SCHEMA", "DatasetSpec", "LogFormatError", "LoggedDataset", "read_dataset", "write_dataset"]
