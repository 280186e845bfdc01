"""Line-exact parsing of MovieLens text files: every error names the file and, when known, the line."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# Strict number syntax: Python's int()/float() also accept "1_000", "nan" and "inf", pandas does not.
INT_RE = re.compile(r"\s*[+-]?\d+\s*")
FLOAT_RE = re.compile(r"\s*[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?\s*")


class MovieLensFormatError(ValueError):
    """A MovieLens file is missing or malformed; the message names the file and, when known, the line."""

    def __init__(self, file: str, message: str, line: int | None = None):
        self.file = file
        self.line = line
        self.reason = message
        where = f"{file} line {line}" if line is not None else file
        super().__init__(f"{where}: {message}")


@dataclass(frozen=True)
class RatingScale:
    """The rating values a release allows."""

    low: float
    high: float
    step: float  # 1.0 for whole stars, 0.5 for half stars

    def describe(self) -> str:
        if self.step == 1.0:
            return f"whole numbers {self.low:g}-{self.high:g}"
        return f"{self.low:g}-{self.high:g} in steps of {self.step:g}"

    def valid(self, ratings: np.ndarray) -> np.ndarray:
        steps = ratings / self.step
        return (ratings >= self.low) & (ratings <= self.high) & (steps == np.round(steps))


WHOLE_STARS = RatingScale(1.0, 5.0, 1.0)
HALF_STARS = RatingScale(0.5, 5.0, 0.5)


def require_file(directory: Path, file: str, release: str, files: str) -> Path:
    path = directory / file
    if not path.is_file():
        raise MovieLensFormatError(
            file, f"required file is missing from {directory} ({release} releases contain {files})"
        )
    return path


def read_text(path: Path, encoding: str) -> str:
    data = path.read_bytes()
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise MovieLensFormatError(path.name, f"text is not valid {encoding}", line) from None


def numbered_lines(path: Path, encoding: str = "latin-1") -> Iterator[tuple[int, str]]:
    """Yield ``(1-based line number, line)`` for the non-empty lines of a file."""
    # split("\n") rather than splitlines(): latin-1 byte 0x85 decodes to NEL, which splitlines() breaks on.
    for number, line in enumerate(read_text(path, encoding).split("\n"), start=1):
        line = line.rstrip("\r")
        if line:
            yield number, line


def split_fields(file: str, line_no: int, line: str, separator: str, expected: int, what: str) -> list[str]:
    fields = line.split(separator)
    if len(fields) != expected:
        raise MovieLensFormatError(file, f"expected {expected} {what} fields, found {len(fields)}", line_no)
    return fields


def parse_int(file: str, line_no: int, value: str, what: str) -> int:
    if not INT_RE.fullmatch(value):
        raise MovieLensFormatError(file, f"{what} {value!r} is not an integer", line_no)
    return int(value)


def parse_id(file: str, line_no: int, value: str, what: str) -> int:
    number = parse_int(file, line_no, value, what)
    if number < 1:
        raise MovieLensFormatError(file, f"{what} {number} is not a positive integer", line_no)
    return number


def check_unique(file: str, ids: list[int], line_numbers: list[int], what: str) -> None:
    seen: dict[int, int] = {}
    for item_id, line_no in zip(ids, line_numbers, strict=True):
        if item_id in seen:
            raise MovieLensFormatError(
                file, f"duplicate {what} {item_id} (first defined on line {seen[item_id]})", line_no
            )
        seen[item_id] = line_no


def check_gender(file: str, line_no: int, gender: str) -> str:
    if gender not in ("M", "F"):
        raise MovieLensFormatError(file, f"gender {gender!r} is not M or F", line_no)
    return gender
