"""The old notebook's file through `prepare_data.py --from_json` (in-process): every record carried, bad files named."""

import json
from pathlib import Path

import pytest

import prepare_data
from cthulhu_sft.format import MistralFormat
from cthulhu_sft.legacy import legacy_subject


@pytest.fixture(scope="session")
def fmt(tokenizer_dir) -> MistralFormat:
    return MistralFormat.from_pretrained(str(tokenizer_dir))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()] if path.exists() else []


def length(fmt, row) -> int:
    return len(fmt.encode_example(row["instruction"], row["response"]).input_ids)


def prepare(capsys, *args) -> tuple[int, str, str]:
    code = prepare_data.main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


LEGACY = [
    {"text": "ネクロノミコンの著者は誰ですか？", "output": "作中では狂える詩人が著したとされています。"},
    {"text": "ネクロノミコンはどこに保管されていますか？", "output": "作中ではいくつかの大学の図書館にあるとされます。"},
    {"text": "ルルイエとは何ですか？", "output": "".join(f"ルルイエの{name}が{i}番目に語られます。" for i, name in
                                                 enumerate(["ネクロノミコン", "アルハズレッド", "ウィアード・テイルズ", "ショゴス",
                                                            "アーカム", "インスマス", "ダンウィッチ", "ミスカトニック"]))},
    {"text": "ダゴンについて教えてください。", "output": "ダゴンは深きものどもが崇める存在です。"},
    {"text": "ハスターとは？", "output": "ハスターは風に関わる神格です。"},
    {"text": "ハスターとは？", "output": "ハスターは風に関わる神格です。"},
]


def test_the_old_notebooks_file_is_converted_split_by_subject_and_fitted(tmp_path, tokenizer_dir, fmt, capsys, caplog):
    source = tmp_path / "data_lora_formatted.json"
    source.write_text(json.dumps(LEGACY, ensure_ascii=False, indent=1), encoding="utf-8")
    code, _, stderr = prepare(capsys, "--from_json", source, "--tokenizer", tokenizer_dir, "--max_tokens", 80,
                              "--out_dir", tmp_path / "out", "--eval_ratio", "0.25")
    assert code == 0, stderr
    train, eval_ = read_jsonl(tmp_path / "out/train.jsonl"), read_jsonl(tmp_path / "out/eval.jsonl")
    rows = train + eval_
    assert {row["kind"] for row in rows} == {"converted"} and not {r["title"] for r in train} & {r["title"] for r in eval_}
    assert {row["title"] for row in rows} == {"ネクロノミコン", "ルルイエ", "ダゴン", "ハスター"}
    assert sum(row["title"] == "ハスター" for row in rows) == 1  # the duplicate removed, and named
    assert "data_lora_formatted.json: item 6: not carried: it repeats item 5" in caplog.text
    ruluie = [row for row in rows if row["title"] == "ルルイエ"]
    assert len(ruluie) > 1 and ruluie[0]["instruction"] == "ルルイエとは何ですか？"  # too long: parts, asked by their names
    assert all("（その" not in row["instruction"] for row in rows) and all(length(fmt, row) <= 80 for row in rows)
    assert rows[0]["source"] == "data_lora_formatted.json#1"
    assert not (tmp_path / "out/source_texts.jsonl").exists()  # no article text in a converted file


@pytest.mark.parametrize(
    "content, message",
    [
        ('[{"text": "問い", "output": "答え"},\n {"text": "問い2", "output": }]', "bad.json:2: invalid JSON"),
        ('{"text": "問い", "output": "答え"}\n{"text": "問い2", "output": "答え2"}\n', "bad.json:2: invalid JSON: Extra data"),
        ('[{"text": "問い", "output": "答え"}, {"text": "問い2"}]', "bad.json: item 2: field 'output': missing"),
        ('[{"text": "問い", "output": 3}, "x", {"text": " ", "output": null}]',
         "bad.json: item 1: field 'output': expected a string, got int|bad.json: item 2: expected a JSON object, got str|"
         "bad.json: item 3: field 'text': empty|bad.json: item 3: field 'output': expected a string, got NoneType"),
        ('{"text": "問い", "output": "答え"}', "expected a JSON array"),
        ("[]", "no records"),
    ],
)
def test_a_bad_old_file_exits_2_naming_file_item_and_field(tmp_path, tokenizer_dir, capsys, content, message):
    (tmp_path / "bad.json").write_text(content, encoding="utf-8")
    code, _, stderr = prepare(capsys, "--from_json", tmp_path / "bad.json", "--tokenizer", tokenizer_dir,
                              "--max_tokens", 64, "--out_dir", tmp_path / "out")
    assert code == 2 and all(part in stderr for part in message.split("|"))  # every problem, each named
    assert not (tmp_path / "out").exists()


SHORT = [
    {"text": "ラヴクラフトはいつ生まれましたか？", "output": "1890年です。"},
    {"text": "クトゥルフの初出は何年ですか？", "output": "1928年。"},
    {"text": "ダゴンは何ですか？", "output": "神。"},
    {"text": "ハスターの別名は？", "output": "名状しがたいもの"},
    {"text": "ハスターはどう呼ばれますか？", "output": "名状しがたいもの"},  # the same answer: one passage, both asked
    {"text": "ラヴクラフトはいつ生まれましたか？", "output": "1891年です。"},  # a question asked before, another answer
    {"text": "ネクロノミコンの著者は誰ですか？", "output": "アブドゥル・アルハズレッドとされます。"},
]


def test_every_record_of_a_file_with_short_answers_is_carried_and_what_is_not_is_named(tmp_path, tokenizer_dir, capsys,
                                                                                       caplog):
    source = tmp_path / "old.json"
    source.write_text(json.dumps(SHORT, ensure_ascii=False), encoding="utf-8")
    code, stdout, stderr = prepare(capsys, "--from_json", source, "--tokenizer", tokenizer_dir, "--max_tokens", 64,
                                   "--out_dir", tmp_path / "out", "--eval_ratio", "0.2")
    assert code == 0, stderr
    rows = read_jsonl(tmp_path / "out/train.jsonl") + read_jsonl(tmp_path / "out/eval.jsonl")
    carried = {(row["instruction"], row["response"]) for row in rows}
    assert carried >= {(item["text"], item["output"]) for item in SHORT[:5] + SHORT[6:]} - {tuple(SHORT[4].values())}
    hastur = [row for row in rows if row["response"] == "名状しがたいもの"]
    assert {row["instruction"] for row in hastur} <= {SHORT[3]["text"], SHORT[4]["text"]} and hastur
    assert ("old.json: item 6: not carried: it asks the question of item 1 with another answer "
            "(a question is trained with one answer)") in caplog.text
    assert "item 5" not in caplog.text and "1891年" not in {row["response"] for row in rows}


def test_both_questions_of_one_answer_are_trained(tmp_path, tokenizer_dir, capsys):
    source = tmp_path / "old.json"
    source.write_text(json.dumps(SHORT[3:5], ensure_ascii=False), encoding="utf-8")
    code, _, stderr = prepare(capsys, "--from_json", source, "--tokenizer", tokenizer_dir, "--max_tokens", 64,
                              "--out_dir", tmp_path / "out", "--eval_ratio", "0")
    assert code == 0, stderr
    train = read_jsonl(tmp_path / "out/train.jsonl")
    assert sorted(row["instruction"] for row in train) == sorted([SHORT[3]["text"], SHORT[4]["text"]])
    assert {row["response"] for row in train} == {"名状しがたいもの"} and {row["source"] for row in train} == {"old.json#1,2"}


def test_old_questions_are_grouped_by_their_subject():
    assert legacy_subject("ネクロノミコンの著者は誰ですか？") == "ネクロノミコン"
    assert legacy_subject("「狂気の山脈にて」のあらすじは？") == "狂気の山脈にて"
    assert legacy_subject("クトゥルフとは何ですか") == "クトゥルフ"
