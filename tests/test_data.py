"""Validation of data files: every kind of bad record gets a message with file, line and field."""

import json
import time

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


def test_array_followed_by_another_array_is_an_error_not_lost_records(tmp_path):
    text = '[{"instruction":"q1","response":"a1"}]\n[{"instruction":"q2","response":"a2"},\n{"instruction":"q3","response":"a3"}]'
    with pytest.raises(DataError, match=r"old.json:2: invalid JSON: text after the closing '\]'"):
        load_records(write(tmp_path, "old.json", text))


@pytest.mark.parametrize(
    "text,expected",
    [
        ('[{"text": "q", "output": "a"}]\ntrailing garbage {', "old.json:2: invalid JSON: text after the closing ']'"),
        ('[{"text": "q", "output": "a"}\n {"text": "q2", "output": "a2"}]', "old.json:2: invalid JSON: expected ',' or ']'"),
        ('[{"text": "q", "output": "a"},\n,{"text": "q2", "output": "a2"}]', "old.json:2: invalid JSON: expected an item after ',', found ','"),
        ('[{"text": "q", "output": "a"},\n]', "old.json:2: invalid JSON: expected an item after ',', found ']'"),
        ('[\n,{"text": "q", "output": "a"}]', "old.json:2: invalid JSON: Expecting value"),
        ('[{"text": "q", "output": "a"},\n', "old.json:2: invalid JSON: the array is not closed with ']'"),
        ('[{"text": "q", "output": "a"}\n', "old.json:2: invalid JSON: the array is not closed with ']'"),
    ],
)
def test_malformed_array_is_reported_with_file_and_line(tmp_path, text, expected):
    path = write(tmp_path, "old.json", text)
    with pytest.raises(DataError) as error:
        load_records(path)
    assert expected in str(error.value)
    assert str(path) in str(error.value)


def test_empty_array_has_no_records_and_whitespace_after_an_array_is_fine(tmp_path):
    with pytest.raises(DataError, match="no records"):
        load_records(write(tmp_path, "empty.json", " [ \n ] \n"))
    assert load_records(write(tmp_path, "one.json", '[{"text": "q", "output": "a"}]\r\n\n'))[0]["response"] == "a"


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


def test_many_array_items_get_their_lines_in_linear_time(tmp_path):
    # 20000 items of ~500 characters: counting newlines from the start for every item took ~30 s here; now well
    # under a second, so the bound is loose enough not to flake on a busy machine.
    items = [{"instruction": f"q{i}", "response": "a" * 500} for i in range(20000)]
    path = write(tmp_path, "big.json", json.dumps(items, indent=1))
    start = time.perf_counter()
    records = load_records(path)
    assert time.perf_counter() - start < 10
    assert [r["line"] for r in records] == [2 + 4 * i for i in range(20000)]
    assert records[-1]["instruction"] == "q19999"
