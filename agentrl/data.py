"""Datasets of tasks: JSONL or Parquet rows turned into :class:`~agentrl.envs.Task` records.

``--input-key``, ``--label-key`` and ``--metadata-key`` (slime's names) say which field of a row
becomes the task's prompt, label and metadata. A malformed row is reported with its file and
line (or row) number and nothing is silently skipped; so is a byte that is not UTF-8.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentrl.envs.core import Task, is_message
from agentrl.errors import AgentRLError, DataError


@dataclass(frozen=True)
class TaskKeys:
    """Which row fields become the task's prompt, label and metadata (slime's flag names).

    Attributes:
        input_key: field holding the prompt (a string or a list of chat messages); required.
        label_key: field holding the reference answer; ``None`` means the data has no labels.
        metadata_key: field holding a JSON object of extra data; optional in each row.
    """

    input_key: str = "input"
    label_key: str | None = "label"
    metadata_key: str = "metadata"


def load_tasks(path: str | Path, keys: TaskKeys = TaskKeys()) -> list[Task]:
    """Read every row of a ``.jsonl`` or ``.parquet`` file as a :class:`Task`; slime's
    ``PATH@[start:end]`` reads only those rows (Python slice bounds, negatives from the end),
    indexed from 0 again.

    Raises:
        DataError: the file is missing, unreadable, empty (or its slice is), or a row is
            malformed; the message names the file and line (JSONL) or row (Parquet).
    """
    path, rows_wanted = split_row_slice(path)
    if not path.is_file():
        raise DataError(f"{path}: no such data file")
    rows = list(_parquet_rows(path) if path.suffix == ".parquet" else _jsonl_rows(path))
    if rows_wanted is not None:
        rows = rows[rows_wanted]
    tasks = [_to_task(row, where, len_so_far, keys) for len_so_far, (where, row) in enumerate(rows)]
    if not tasks:
        raise DataError(f"{path}: {'the slice ' + str(rows_wanted) + ' of ' if rows_wanted else ''}the file holds no rows")
    return tasks


_ROW_SLICE = re.compile(r"^(?P<path>.*)@\[(?P<start>-?\d*):(?P<end>-?\d*)\]$")


def split_row_slice(spec: str | Path) -> tuple[Path, slice | None]:
    """``"data.jsonl@[0:3000]"`` -> ``(Path("data.jsonl"), slice(0, 3000))`` (slime's syntax; an
    empty bound is open); a plain path -> ``(path, None)``."""
    match = _ROW_SLICE.match(str(spec))
    if match is None:
        return Path(spec), None
    return Path(match["path"]), slice(_bound(match["start"]), _bound(match["end"]))


def _bound(text: str) -> int | None:
    return int(text) if text else None


def utf8_lines(path: str | Path, error: type[AgentRLError] = DataError) -> Iterator[tuple[int, str]]:
    """The lines of a UTF-8 text file (a byte order mark allowed) with their 1-based numbers.

    Raises:
        error: a byte that is not UTF-8; the message names the file, line, column and byte offset.
    """
    offset = 0
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise error(
                    f"{path}:{lineno}: not UTF-8: byte 0x{raw[e.start]:02x} at column {e.start + 1} (byte offset {offset + e.start} "
                    "of the file); save the file as UTF-8") from None
            yield lineno, line
            offset += len(raw)


def _jsonl_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    for lineno, line in utf8_lines(path):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            row = json.loads(line.rstrip("\r\n"))
        except json.JSONDecodeError as e:
            raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        yield where, row


def _parquet_rows(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several unrelated types for a bad file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from e
    for i, row in enumerate(table.to_pylist(), start=1):
        yield f"{path}: row {i}", row


def _to_task(row: Any, where: str, index: int, keys: TaskKeys) -> Task:
    if not isinstance(row, dict):
        raise DataError(f"{where}: a row must be a JSON object, got {type(row).__name__}")
    prompt = _field(row, keys.input_key, where, "--input-key")
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt and all(map(is_message, prompt)))):
        raise DataError(f"{where}: field {keys.input_key!r} must be a string or a non-empty list of messages "
                        f"{{'role': str, 'content': str}}, got {prompt!r:.120}")
    label = None if keys.label_key is None else _field(row, keys.label_key, where, "--label-key")
    metadata = row.get(keys.metadata_key) or {}
    if not isinstance(metadata, dict):
        raise DataError(f"{where}: field {keys.metadata_key!r} (--metadata-key) must be an object")
    return Task(prompt=prompt, label=label, metadata=metadata, index=index)


def _field(row: dict[str, Any], key: str, where: str, flag: str) -> Any:
    if key not in row:
        present = ", ".join(sorted(row)) or "none"
        raise DataError(f"{where}: missing field {key!r} (set {flag}); fields present: {present}")
    return row[key]


@dataclass
class TaskStream:
    """Hands out batches of tasks in a reproducible order, epoch after epoch.

    The order of epoch ``e`` is a permutation seeded by ``(seed, e)`` when ``shuffle`` is on, the
    file order otherwise. ``position`` (epoch, cursor) is all a checkpoint needs to continue the
    exact same sequence of batches.
    """

    tasks: list[Task]
    batch_size: int
    shuffle: bool = False
    seed: int = 0
    epoch: int = 0
    cursor: int = 0

    def next_batch(self, n: int | None = None) -> list[Task]:
        """The next ``n`` tasks (default: the batch size), wrapping into the next epoch."""
        size = self.batch_size if n is None else n
        batch: list[Task] = []
        while len(batch) < size:
            order = self._order()
            take = order[self.cursor : self.cursor + size - len(batch)]
            batch.extend(self.tasks[i] for i in take)
            self.cursor += len(take)
            if self.cursor >= len(order):
                self.epoch, self.cursor = self.epoch + 1, 0
        return batch

    @property
    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "cursor": self.cursor}

    def seek(self, position: dict[str, int]) -> None:
        self.epoch, self.cursor = position["epoch"], position["cursor"]

    def _order(self) -> list[int]:
        order = list(range(len(self.tasks)))
        if self.shuffle:
            random.Random(f"{self.seed}/{self.epoch}").shuffle(order)
        return order
