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


def test_legacy_text_output_array_is_converted(tmp_path):
    items = [{"text": "クトゥルフとは？", "output": "旧支配者。"}, {"text": "ダゴンとは？", "output": "神性。"}]
    path = write(tmp_path, "old.json", json.dumps(items, ensure_ascii=False, indent=2))
    records = load_records(path)
    assert [(r["instruction"], r["response"]) for r in records] == [("クトゥルフとは？", "旧支配者。"), ("ダゴンとは？", "神性。")]
    assert [r["line"] for r in records] == [2, 6]


def test_legacy_text_output_jsonl_is_converted(tmp_path):
    path = write(tmp_path, "old.jsonl", json.dumps({"text": "q", "output": "a"}) + "\n")
    assert load_records(path)[0]["response"] == "a"


@pytest.mark.parametrize(
    "line,expected",
    [
        ('{"instruction": "q", "response": "a"', "data.jsonl:2: invalid JSON"),
        ('{"instruction": "q"}', "data.jsonl:2: field 'response': missing"),
        ('{"response": "a"}', "data.jsonl:2: field 'instruction': missing"),
        ('{"instruction": "q", "response": "   "}', "data.jsonl:2: field 'response': empty"),
        ('{"instruction": 3, "response": "a"}', "data.jsonl:2: field 'instruction': expected a string, got int"),
        ('{"text": "q", "output": null}', "data.jsonl:2: field 'output': expected a string, got NoneType"),
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


def test_bad_json_in_array_names_its_line(tmp_path):
    path = write(tmp_path, "old.json", '[\n {"text": "q", "output": "a"},\n {"text": "q2", "output": }\n]')
    with pytest.raises(DataError, match=r"old.json:3: invalid JSON"):
        load_records(path)


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
