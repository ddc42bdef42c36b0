"""Task files: JSONL and Parquet rows become tasks; bad rows are named by file and line."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from agentrl.data import TaskKeys, load_tasks
from agentrl.errors import DataError


def write_jsonl(path, lines):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def test_jsonl_rows_become_tasks_with_slime_keys(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [
        json.dumps({"question": "1+1?", "answer": "2", "meta": {"src": "a"}}),
        "",
        json.dumps({"question": [{"role": "user", "content": "2+2?"}], "answer": "4"}),
    ])
    tasks = load_tasks(path, TaskKeys(input_key="question", label_key="answer", metadata_key="meta"))
    assert [(t.prompt, t.label, t.metadata, t.index) for t in tasks] == [
        ("1+1?", "2", {"src": "a"}, 0),
        ([{"role": "user", "content": "2+2?"}], "4", {}, 1),
    ]


def test_no_label_key_means_no_labels(tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [json.dumps({"input": "hi"})])
    assert load_tasks(path, TaskKeys(label_key=None))[0].label is None


def test_parquet_rows_become_tasks(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"input": "a", "label": "1"}, {"input": "b", "label": "2"}]), path)
    assert [(t.prompt, t.label) for t in load_tasks(path)] == [("a", "1"), ("b", "2")]


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        (['{"input": "a", "label": "1"}', '{"input": "b", "label": '], r"t\.jsonl:2: not valid JSON \(Expecting value at column 25\)"),
        (['{"input": "a", "label": "1"}', '', '{"prompt": "b", "label": "2"}'], r"t\.jsonl:3: missing field 'input' \(set --input-key\); fields present: label, prompt"),
        (['{"input": "a"}'], r"t\.jsonl:1: missing field 'label' \(set --label-key\)"),
        (['["a", "b"]'], r"t\.jsonl:1: a row must be a JSON object, got list"),
        (['{"input": 3, "label": "1"}'], r"t\.jsonl:1: field 'input' must be a string or a non-empty list of messages"),
        (['{"input": "a", "label": "1"}', '{"input": ["hi"], "label": "1"}'], r"t\.jsonl:2: field 'input' must be .* got \['hi'\]"),
        (['{"input": [{"role": "user", "text": "hi"}], "label": "1"}'], r"t\.jsonl:1: field 'input' must be a string or a non-empty list of messages \{'role': str, 'content': str\}"),
        (['{"input": [], "label": "1"}'], r"t\.jsonl:1: field 'input' must be a string or a non-empty list"),
        (['{"input": "a", "label": "1", "metadata": [1]}'], r"t\.jsonl:1: field 'metadata' \(--metadata-key\) must be an object"),
        ([""], r"t\.jsonl: the file holds no rows"),
    ],
)
def test_malformed_jsonl_names_file_and_line(tmp_path, lines, message):
    with pytest.raises(DataError, match=message):
        load_tasks(write_jsonl(tmp_path / "t.jsonl", lines))


def test_parquet_errors_name_the_row(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"input": "a", "x": 1}]), path)
    with pytest.raises(DataError, match=r"t\.parquet: row 1: missing field 'label'"):
        load_tasks(path)
    (tmp_path / "bad.parquet").write_text("not parquet")
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable Parquet file"):
        load_tasks(tmp_path / "bad.parquet")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"nope\.jsonl: no such data file"):
        load_tasks(tmp_path / "nope.jsonl")


def test_a_file_that_is_not_utf8_is_named_with_line_and_byte_offset(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'{"input": "a", "label": "1"}\n{"input": "caf\xe9", "label": "2"}\n')
    with pytest.raises(DataError) as excinfo:
        load_tasks(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path}:2: not UTF-8: byte 0xe9 at column 15 (byte offset 43 of the file)") and "\n" not in message


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"input": "caf\xc3\xa9", "label": "1"}\n')
    assert load_tasks(path)[0].prompt == "café"
