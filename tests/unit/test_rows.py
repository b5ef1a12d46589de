import pytest

from bricks.rows import RowError, read_rows


def test_read_rows_names_file_line_and_field(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text('{"id": "a", "instruction": "Reverse the text.", "input": "abc", "output": "cba"}\n\n')
    rows = read_rows(good)
    assert rows[0].output == "cba" and rows[0].skills == ()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "x", "output": "y"}\n{"instruction": "x"}\n')
    with pytest.raises(RowError, match=r"bad.jsonl:2: missing or empty field\(s\) output"):
        read_rows(bad)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{nope\n")
    with pytest.raises(RowError, match="broken.jsonl:1: malformed JSON"):
        read_rows(broken)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b'{"instruction": "\xff"}\n')
    with pytest.raises(RowError, match="not UTF-8"):
        read_rows(binary)
    with pytest.raises(RowError, match="no such file"):
        read_rows(tmp_path / "missing.jsonl")
