"""Validation of data files: every kind of bad record gets a message with file, line and field."""

import json

import pytest

from cthulhu_sft.data import DataError, load_records


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_records_are_read_stripped_with_extra_fields(tmp_path):
    path = write(tmp_path, "a.jsonl", json.dumps({"instruction": " 問い ", "response": "答え\n", "title": "T", "source": "u"}) + "\n\n")
    [record] = load_records(path)
    assert record == {"instruction": "問い", "response": "答え", "title": "T", "source": "u", "line": 1}


@pytest.mark.parametrize(
    "line,expected",
    [
        ('{"instruction": "q", "response": "a"', "data.jsonl:2: invalid JSON"),
        ('{"instruction": "q"}', "data.jsonl:2: field 'response': missing"),
        ('{"response": "a"}', "data.jsonl:2: field 'instruction': missing"),
        ('{"instruction": "q", "response": "   "}', "data.jsonl:2: field 'response': empty"),
        ('{"instruction": 3, "response": "a"}', "data.jsonl:2: field 'instruction': expected a string, got int"),
        ('{"text": "q", "output": "a"}', "data.jsonl:2: field 'instruction': missing (a notebook {text, output} file?"),
        ('["q", "a"]', "data.jsonl:2: expected a JSON object, got list"),
        ('{"question": "q", "answer": "a"}', "data.jsonl:2: field 'instruction': missing"),
    ],
)
def test_bad_record_is_reported_with_file_line_and_field(tmp_path, line, expected):
    path = write(tmp_path, "data.jsonl", '{"instruction": "ok", "response": "ok"}\n' + line + "\n")
    with pytest.raises(DataError) as error:
        load_records(path)
    assert expected in str(error.value)
    assert str(path) in str(error.value)


def test_all_problems_are_listed_in_one_message(tmp_path):
    path = write(tmp_path, "d.jsonl", '{"instruction": "", "response": "a"}\n{"instruction": "q"}\n')
    with pytest.raises(DataError) as error:
        load_records(path)
    assert "d.jsonl:1: field 'instruction': empty" in str(error.value)
    assert "d.jsonl:2: field 'response': missing" in str(error.value)


def test_missing_and_empty_files_are_errors(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_records(tmp_path / "nope.jsonl")
    with pytest.raises(DataError, match="no records"):
        load_records(write(tmp_path, "empty.jsonl", "\n"))


def test_unicode_line_separators_inside_strings_do_not_split_records(tmp_path):
    records = [{"instruction": "区切り\u2028文字", "response": "答え\u0085と\u2029段落\x0cページ"}, {"instruction": "次", "response": "二"}]
    path = write(tmp_path, "d.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\r\n" for r in records))
    loaded = load_records(path)
    assert [(r["instruction"], r["response"], r["line"]) for r in loaded] == [
        ("区切り\u2028文字", "答え\u0085と\u2029段落\x0cページ", 1), ("次", "二", 2)]


def test_byte_order_mark_is_not_data(tmp_path):
    path = tmp_path / "bom.jsonl"
    path.write_bytes("\ufeff".encode() + json.dumps({"instruction": "q", "response": "a"}).encode() + b"\n")
    assert load_records(path)[0]["instruction"] == "q"


def test_utf16_file_is_reported_as_not_utf8(tmp_path):
    path = tmp_path / "win.json"
    path.write_bytes(json.dumps([{"instruction": "q", "response": "a"}]).encode("utf-16"))  # with its BOM
    with pytest.raises(DataError) as error:
        load_records(path)
    assert f"{path}:1: the file is UTF-16" in str(error.value)
    assert "must be saved as UTF-8" in str(error.value)


def test_latin1_byte_is_reported_with_its_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    # After a UTF-8 byte-order mark, so the line is counted in the file's own bytes: the bad byte opens line 2.
    path.write_bytes("\ufeff".encode() + b'{"instruction": "q", "response": "a"}\n\xe9{"instruction": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"latin1.jsonl:2: not UTF-8 \(byte 0xe9\); the file must be saved as UTF-8"):
        load_records(path)


def test_a_json_array_points_to_the_one_converter(tmp_path):
    """The notebook's {text, output} array is converted once, by prepare_data.py --from_json; training reads JSONL."""
    path = write(tmp_path, "old.json", json.dumps([{"text": "q", "output": "a"}]))
    with pytest.raises(DataError, match=r"old.json:1: a JSON array, not JSON Lines: convert it once with "
                                        r"`python prepare_data.py --from_json .*old.json`"):
        load_records(path)
