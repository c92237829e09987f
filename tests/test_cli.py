"""Bad input to the trainers gives a clear message, never a silent change or a raw traceback: data
files, flags, the output folder (one run at a time, never mixed) and resuming from a damaged log
or checkpoint."""
import dataclasses
import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import grpo
import rrpo
import run
import srpo

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Data files
# ---------------------------------------------------------------------------------------------


def write_rows(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_rows_without_a_question_or_answer_are_skipped_and_counted(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [
        {"question": "1+1?", "answer": "2"},
        {"question": "2+2?", "answer": None},  # would train with the gold answer "None"
        {"question": None, "answer": "4"},  # would train on "Problem: None"
        {"question": "3+3?"},
        {"question": "4+4?", "answer": "#### "},  # no answer can be read from it
        {"question": " ", "answer": "5"},
    ])
    with pytest.warns(UserWarning, match=r"skipped 5 of 6 rows .* \(rows 2, 3, 4, 5, 6\)"):
        examples = run.load_examples(str(path), True, grpo.Config())
    assert examples == [{"question": "1+1?", "answer": "2"}]


def test_a_dataset_without_a_usable_row_is_refused(tmp_path):
    path = write_rows(tmp_path / "d.jsonl", [{"question": "2+2?", "answer": None}, {"question": None, "answer": "4"}])
    with pytest.raises(SystemExit, match=r"None of the 2 rows .* has both a question \('question'\) and a "
                                         r"readable answer \('answer'\)"):
        run.load_examples(str(path), True, grpo.Config())


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", r"'.*empty.jsonl' holds no rows"),
    ("blank.json", b"\n\n", r"'.*blank.json' holds no rows"),
    ("torn.jsonl", b'{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "ans\n',
     r"'.*torn.jsonl' line 2 is not valid JSON .*fix or delete that line"),
    ("latin1.jsonl", b'{"question": "1+1?", "answer": "2"}\n{"question": "caf\xe9?", "answer": "2"}\n',
     r"'.*latin1.jsonl' line 2 is not UTF-8 text: save the file as UTF-8"),
    ("list.json", b'[{"question": "1+1?", "answer": "2"},\n {"question": "2+2?" "answer": "4"}]',
     r"'.*list.json' line 2 is not valid JSON"),
    ("numbers.jsonl", b'{"question": "1+1?", "answer": "2"}\n3\n', r"'.*numbers.jsonl' line 2 is not a JSON object"),
    ("zero.parquet", b"", r"Cannot read '.*zero.parquet' as a parquet file .*write it again"),
])
def test_unreadable_data_files_name_the_file_the_line_and_the_fix(tmp_path, name, content, message):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SystemExit, match=message):
        run.load_examples(str(tmp_path / name), True, grpo.Config())


def test_a_parquet_file_without_rows_is_refused_and_one_with_rows_is_read(tmp_path):
    import pyarrow
    import pyarrow.parquet

    no_strings = pyarrow.array([], pyarrow.string())
    empty = pyarrow.table({"question": no_strings, "answer": no_strings})
    pyarrow.parquet.write_table(empty, tmp_path / "empty.parquet")
    with pytest.raises(SystemExit, match=r"'.*empty.parquet' holds no rows"):
        run.load_examples(str(tmp_path / "empty.parquet"), True, grpo.Config())
    pyarrow.parquet.write_table(pyarrow.table({"problem": ["1+1?"], "answer": [2.0]}), tmp_path / "d.parquet")
    assert run.load_examples(str(tmp_path / "d.parquet"), True, grpo.Config()) == [{"question": "1+1?", "answer": "2"}]


def test_a_json_list_and_a_byte_order_mark_are_read(tmp_path):
    (tmp_path / "d.json").write_bytes(b'\xef\xbb\xbf[{"question": "1+1?", "answer": "2"}, {"question": "2+2?", '
                                      b'"answer": 4}]')
    assert run.load_examples(str(tmp_path / "d.json"), True, grpo.Config()) == [
        {"question": "1+1?", "answer": "2"}, {"question": "2+2?", "answer": "4"}]
