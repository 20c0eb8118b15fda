"""Text cleaning, example building and prepare_data.py end to end against the loopback MediaWiki server."""

import json
import shutil
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, run_script
from mediawiki_server import MediaWikiServer, cthulhu_wiki

from cthulhu_sft.data import load_records
from cthulhu_sft.examples import (
    build_examples,
    clean_text,
    dedupe,
    fit,
    parse_sections,
    split_sentences,
    wikitext_to_text,
)
from cthulhu_sft.format import MistralFormat
from prepare_data import legacy_subject, split_by_article

FIELDS = {"instruction", "response", "title", "source", "revid"}
RESIDUE = ("[[", "]]", "{{", "}}", "'''", "<ref", "</", "[1]", "[要出典]", "{|", "|}")


@pytest.fixture(scope="session")
def fmt(tokenizer_dir) -> MistralFormat:
    return MistralFormat.from_pretrained(str(tokenizer_dir))


def length(fmt, instruction, response) -> int:
    return len(fmt.encode_example(instruction, response).input_ids)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------------------------------------------
# Text


def test_reference_marks_footnotes_and_note_sections_are_removed():
    text = cthulhu_wiki().pages["クトゥルフ"].extract
    sections, dropped = parse_sections(clean_text(text))
    paths = [section.path for section in sections]
    assert paths == [(), ("概要",), ("登場作品", "小説")]  # the empty "登場作品" heading adds no section
    assert dropped == [("脚注",), ("関連項目",), ("外部リンク",)]
    body = "\n".join(section.text for section in sections)
    for gone in ("[1]", "[要出典]", "出典の説明文", "公式サイト", "ダゴン (クトゥルフ神話)", "=="):
        assert gone not in body
    assert sections[0].text == "クトゥルフ（Cthulhu）は、怪奇作家が創作した架空の神格である。海底都市ルルイエで眠り続けているとされる。"


@pytest.mark.parametrize("heading", ["脚注", "出典", "注釈", "参考文献", "関連項目", "外部リンク", "脚注・出典", "注釈と出典"])
def test_every_notes_and_links_section_is_dropped_with_its_subsections(heading):
    text = f"導入の文である。\n\n== 歴史 ==\n本文の文である。\n\n== {heading} ==\n捨てる文。\n\n=== 下位 ===\n捨てる文2。"
    sections, dropped = parse_sections(text)
    assert [section.path for section in sections] == [(), ("歴史",)]
    assert dropped == [(heading,)]


def test_wikitext_templates_render_as_a_reader_sees_them_and_markup_disappears():
    wikitext = (
        "{{Infobox 架空の存在|名前=クトゥルフ}}\n"
        "'''クトゥルフ'''（{{lang|en|Cthulhu}}、{{lang-en|Cthulhu}}）は{{仮リンク|旧き神|en|Elder God}}と対立する"
        "{{読み仮名|神格|しんかく}}である<ref name=\"a\">出典</ref><ref name=\"a\" />。''海底''に[[ルルイエ|都市]]がある"
        "<!-- 隠れた注記 -->。[https://example.org 公式サイト]も[[Category:神]]ある。[[en:Cthulhu]]<br />次の行。\n"
        "[[ファイル:Cthulhu.png|thumb|像のキャプション]]\n"
        "{| class=\"wikitable\"\n|-\n! 見出しセル\n|-\n| 表のセル\n|}\n"
        "== 脚注 ==\n<references />\n"
    )
    text = wikitext_to_text(wikitext)
    assert "クトゥルフ（Cthulhu、英語: Cthulhu）は旧き神と対立する神格（しんかく）である。海底に都市がある。公式サイトもある。" in text
    assert "\n次の行。" in text
    for gone in RESIDUE + ("出典", "キャプション", "表のセル", "見出しセル", "隠れた注記", "Infobox", "Category", "en:"):
        assert gone not in text.replace("== 脚注 ==", "")


def test_table_rows_left_in_plain_text_are_removed():
    text = clean_text("本文の文である。\n| 名前 || クトゥルフ\n! 見出し\n名前\t種族\t初出\n次の文である。")
    assert text == "本文の文である。\n次の文である。"


def test_markup_residue_in_plain_text_is_rendered_away():
    text = clean_text("ルルイエ（{{lang|en|R'lyeh}}）は[[太平洋]]の'''海底'''にある<ref>本</ref>。")
    assert text == "ルルイエ（R'lyeh）は太平洋の海底にある。"


def test_sentences_split_at_japanese_ends_closing_brackets_and_line_breaks():
    text = "彼は「いあ！　いあ！」と叫んだ。本当か？！」\n一覧の行\n\n最後の文"
    units = split_sentences(text)
    assert "".join(units) == text
    assert units == ["彼は「いあ！　いあ！」と叫んだ。", "本当か？！」", "\n", "一覧の行\n\n", "最後の文"]


def test_a_quotation_too_long_to_keep_whole_is_split_at_its_own_sentence_ends(fmt):
    quote = "「" + "".join(f"第{i}の呪文を唱えよ。" for i in range(30)) + "」と書かれていた。"
    parts, dropped = fit(fmt, "質問です。", quote, 64)
    assert dropped == 0 and len(parts) > 2
    assert "".join(response for _, response in parts) == quote
    assert all(response.endswith(("。", "」と書かれていた。")) for _, response in parts)


# ---------------------------------------------------------------------------------------------------
# Examples


def long_text() -> str:
    sentences = [f"第{i}の記録によれば、深海の神殿では{'古い儀式が' * (i % 4 + 1)}繰り返し行われたという。" for i in range(40)]
    sentences[7] += "\n"
    sentences[21] = "星辰は正しい位置にあるのか？"
    return "".join(sentences)


def test_long_text_is_split_at_sentence_ends_and_every_part_fits_the_real_tokenizer(fmt):
    text = long_text()
    parts, dropped = fit(fmt, "ルルイエの「歴史」について教えてください。", text, 128)
    assert dropped == 0 and len(parts) > 3
    assert all(length(fmt, instruction, response) <= 128 for instruction, response in parts)
    assert [instruction[-5:] for instruction, _ in parts][:2] == ["（その1）", "（その2）"]
    assert "".join(response for _, response in parts).replace("\n", "") == text.replace("\n", "")  # nothing lost
    sentences = [unit.strip() for unit in split_sentences(text) if unit.strip()]
    for sentence in sentences:  # each sentence lies whole inside one part: nothing cut
        assert sum(sentence in response for _, response in parts) >= 1
    for _, response in parts:
        assert response.endswith(("。", "？"))


def test_text_that_fits_stays_whole_with_the_plain_question(fmt):
    parts, dropped = fit(fmt, "ダゴンとは何ですか？", "ダゴンは海の神格である。", 128)
    assert parts == [("ダゴンとは何ですか？", "ダゴンは海の神格である。")] and dropped == 0


def test_a_sentence_longer_than_the_budget_is_dropped_not_cut(fmt):
    giant = "これは" + "とても" * 80 + "長い文である。"
    parts, dropped = fit(fmt, "質問です。", f"短い文である。{giant}次の短い文である。", 64)
    assert dropped == 1
    assert [response for _, response in parts] == ["短い文である。次の短い文である。"]
    assert parts[0][0] == "質問です。"  # one part left: no "（その1）"


def test_questions_cover_lead_and_sections_and_depend_only_on_the_seed(fmt):
    text = cthulhu_wiki().pages["クトゥルフ"].extract
    first, _ = build_examples("クトゥルフ", text, fmt, 1024, seed=1)
    again, _ = build_examples("クトゥルフ", text, fmt, 1024, seed=1)
    assert first == again
    assert [e["response"][:6] for e in first] == ["クトゥルフ（", "巨大な体と蛸", "最初に登場し"]
    assert "「登場作品」の「小説」" in first[2]["instruction"] and first[2]["instruction"].startswith("クトゥルフ")
    wordings = set()
    for seed in range(12):
        examples, _ = build_examples("ダゴン (クトゥルフ神話)", "ダゴンは海に住む神格である。\n== 信仰 ==\n港町の住民に崇拝される。", fmt, 1024, seed)
        wordings.add(examples[0]["instruction"])
        assert "ダゴン（クトゥルフ神話）" in examples[0]["instruction"]
    assert len(wordings) >= 3  # several natural phrasings, chosen by the seed


def test_duplicate_examples_are_removed():
    examples = [
        {"instruction": "A？", "response": "同じ答え。"},
        {"instruction": "A？", "response": "同じ答え。"},
        {"instruction": "B？", "response": "同じ答え。"},
        {"instruction": "B？", "response": "違う答え。"},
    ]
    kept, removed = dedupe(examples)
    assert kept == [examples[0], examples[3]] and removed == 2


def test_split_is_by_article_deterministic_and_eval_is_not_empty_with_two_articles():
    titles = [f"記事{i}" for i in range(30)]
    held_out = split_by_article(titles, 0.2, seed=3)
    assert len(held_out) == 6 and held_out == split_by_article(list(reversed(titles)), 0.2, seed=3)
    assert held_out != split_by_article(titles, 0.2, seed=4)
    assert len(split_by_article(["甲", "乙"], 0.1, seed=0)) == 1
    assert split_by_article(["甲"], 0.1, seed=0) == set()
    assert split_by_article(["甲"], 0.9, seed=0) == set()  # the train split is never empty
    assert len(split_by_article(["甲", "乙"], 0.9, seed=0)) == 1


def test_legacy_questions_are_grouped_by_their_subject():
    assert legacy_subject("ネクロノミコンの著者は誰ですか？") == "ネクロノミコン"
    assert legacy_subject("「狂気の山脈にて」のあらすじは？") == "狂気の山脈にて"
    assert legacy_subject("クトゥルフとは何ですか") == "クトゥルフ"


# ---------------------------------------------------------------------------------------------------
# prepare_data.py end to end


def prepare_args(server, tmp_path, tokenizer_dir, *extra, max_tokens=256) -> list[str]:
    return [
        "--api_url", server.url, "--tokenizer", str(tokenizer_dir),
        "--max_tokens", str(max_tokens), "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out"),
        "--request_interval", "0", "--backoff_factor", "0", "--depth", "2", *extra,
    ]


def prepare(server, tmp_path, tokenizer_dir, *extra, max_tokens=256):
    return run_script([PYTHON, "prepare_data.py", *prepare_args(server, tmp_path, tokenizer_dir, *extra, max_tokens=max_tokens)],
                      timeout=120)


@pytest.mark.slow
def test_crawl_writes_article_split_examples_that_fit_with_sources_and_a_card(tmp_path, tokenizer_dir, fmt):
    with MediaWikiServer(cthulhu_wiki()) as server:
        server.faults.extend(["maxlag", "429", "503html", "drop"])
        result = prepare(server, tmp_path, tokenizer_dir, "--titles", "ヨグ＝ソトース", "存在しないページ|Cthulhu",
                         "--eval_ratio", "0.3", max_tokens=160)
    assert result.returncode == 0, result.stderr
    train, eval_ = read_jsonl(tmp_path / "out/train.jsonl"), read_jsonl(tmp_path / "out/eval.jsonl")
    assert train and eval_
    assert not {r["title"] for r in train} & {r["title"] for r in eval_}  # split by article
    records = train + eval_
    assert all(set(r) == FIELDS for r in records)
    assert {r["title"] for r in records} == {"クトゥルフ", "ルルイエ", "ネクロノミコン", "ニャルラトホテプ", "ダゴン (クトゥルフ神話)",
                                          "ハスター", "インスマスを覆う影", "狂気の山脈にて", "ヨグ＝ソトース",
                                          "クトゥルフ神話TRPG: 第7版/" + "ルールブックに登場する架空の書物と神格の一覧" * 4}
    page = cthulhu_wiki().pages
    for record in records:
        assert record["revid"] == page[record["title"]].revid and record["source"].startswith("https://ja.wikipedia.org/wiki/")
        assert length(fmt, record["instruction"], record["response"]) <= 160
        assert not any(residue in record["response"] for residue in RESIDUE)
        assert "出典の説明文" not in record["response"] and "公式サイト" not in record["response"]
    assert any("Cthulhu" in r["response"] for r in records)
    assert len({r["response"] for r in records}) == len(records)
    assert load_records(tmp_path / "out/train.jsonl")  # the trainer's own validation accepts it
    card = (tmp_path / "out/README.md").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in card and f"oldid={page['ルルイエ'].revid}" in card and "| train |" in card
    assert "median" in card and "depth`: 2" in card
    assert "存在しないページ" in result.stderr  # reported, not fatal
    assert "requests: 2" in result.stdout and "4 retries" in result.stdout
    assert "examples: train" in result.stdout and "tokens: min" in result.stdout
    sources = read_jsonl(tmp_path / "out/source_texts.jsonl")  # for evaluate.py's unsupported-term rate
    assert {s["title"] for s in sources} == {r["title"] for r in eval_}
    assert all(s["text"] and not any(residue in s["text"] for residue in RESIDUE) for s in sources)


@pytest.mark.slow
def test_second_run_makes_zero_requests_and_writes_the_same_bytes_unless_refresh(tmp_path, tokenizer_dir):
    with MediaWikiServer(cthulhu_wiki()) as server:
        assert prepare(server, tmp_path, tokenizer_dir, "--titles", "Cthulhu").returncode == 0
        cold = len(server.requests)
        first = (tmp_path / "out/train.jsonl").read_bytes(), (tmp_path / "out/README.md").read_bytes()
        second = prepare(server, tmp_path, tokenizer_dir, "--titles", "Cthulhu")
        assert second.returncode == 0 and len(server.requests) == cold
        assert "requests: 0" in second.stdout
        assert ((tmp_path / "out/train.jsonl").read_bytes(), (tmp_path / "out/README.md").read_bytes()) == first
        assert prepare(server, tmp_path, tokenizer_dir, "--titles", "Cthulhu", "--refresh").returncode == 0
        assert len(server.requests) == 2 * cold


@pytest.mark.slow
def test_an_interrupted_crawl_fails_clearly_keeps_old_outputs_and_resumes(tmp_path, tokenizer_dir):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/train.jsonl").write_text("old\n", encoding="utf-8")
    with MediaWikiServer(cthulhu_wiki()) as server:
        server.fail_after = 12  # the listings (9) and 3 pages, then an outage
        failed = prepare(server, tmp_path, tokenizer_dir, "--retries", "1")
        assert failed.returncode == 1
        assert "HTTP 503" in failed.stderr and "run again to resume" in failed.stderr and "Traceback" not in failed.stderr
        assert (tmp_path / "out/train.jsonl").read_text(encoding="utf-8") == "old\n"
        before = list(server.extracts_served)
        server.fail_after = None
        resumed = prepare(server, tmp_path, tokenizer_dir)
    assert resumed.returncode == 0, resumed.stderr
    assert len(before) == 3 and not set(before) & set(server.extracts_served[3:])  # nothing fetched twice
    assert len(server.extracts_served) == 9  # every article of the tree, once


def write_legacy(path: Path, records, as_array: bool) -> Path:
    if as_array:
        path.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    else:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


LEGACY = [
    {"text": "ネクロノミコンの著者は誰ですか？", "output": "作中では狂える詩人が著したとされています。"},
    {"text": "ネクロノミコンはどこに保管されていますか？", "output": "作中ではいくつかの大学の図書館にあるとされます。"},
    {"text": "ルルイエとは何ですか？", "output": "".join(f"ルルイエの{i}番目の特徴が語られます。" for i in range(12))},
    {"text": "ダゴンについて教えてください。", "output": "ダゴンは深きものどもが崇める存在です。"},
    {"text": "ハスターとは？", "output": "ハスターは風に関わる神格です。"},
    {"text": "ハスターとは？", "output": "ハスターは風に関わる神格です。"},
]


@pytest.mark.slow
@pytest.mark.parametrize("as_array", [True, False])
def test_legacy_text_output_file_is_converted_split_by_subject_and_fitted(tmp_path, tokenizer_dir, fmt, as_array):
    source = write_legacy(tmp_path / "data_lora_formatted.json", LEGACY, as_array)
    result = run_script([PYTHON, "prepare_data.py", "--from_json", str(source), "--tokenizer", str(tokenizer_dir),
                         "--max_tokens", "64", "--out_dir", str(tmp_path / "out"), "--eval_ratio", "0.25"], timeout=120)
    assert result.returncode == 0, result.stderr
    train, eval_ = read_jsonl(tmp_path / "out/train.jsonl"), read_jsonl(tmp_path / "out/eval.jsonl")
    records = train + eval_
    assert all(set(r) == FIELDS for r in records) and train and eval_
    assert not {r["title"] for r in train} & {r["title"] for r in eval_}
    assert {r["title"] for r in records} == {"ネクロノミコン", "ルルイエ", "ダゴン", "ハスター"}
    assert sum(r["title"] == "ハスター" for r in records) == 1  # duplicate removed
    assert sum(r["title"] == "ルルイエ" for r in records) > 1  # too long: split at sentence ends
    assert all(length(fmt, r["instruction"], r["response"]) <= 64 for r in records)
    assert records[0]["source"].startswith("data_lora_formatted.json:")
    assert (tmp_path / "out/README.md").is_file()
    assert not (tmp_path / "out/source_texts.jsonl").exists()  # no article text in a converted file


@pytest.mark.slow
@pytest.mark.parametrize(
    "content, message",
    [
        ('{"text": "問い", "output": "答え"}\n{"text": "問い2", "output": \n', "bad.jsonl:2: invalid JSON"),
        ('{"text": "問い", "output": "答え"}\n{"text": "問い2"}\n', "bad.jsonl:2: field 'output': missing"),
        ('[{"text": "問い", "output": 3}]', "bad.jsonl:1: field 'output': expected a string"),
        ("", "no records"),
    ],
)
def test_bad_legacy_input_exits_2_naming_file_line_and_field(tmp_path, tokenizer_dir, content, message):
    (tmp_path / "bad.jsonl").write_text(content, encoding="utf-8")
    result = run_script([PYTHON, "prepare_data.py", "--from_json", str(tmp_path / "bad.jsonl"), "--tokenizer",
                         str(tokenizer_dir), "--max_tokens", "64", "--out_dir", str(tmp_path / "out")], timeout=120)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_tokenizer_and_max_tokens_default_to_sft_config_yaml(tmp_path, tokenizer_dir, fmt):
    """Against a copy of the scripts, so the test does not depend on the repository's own config."""
    shutil.copy(REPO / "prepare_data.py", tmp_path)
    shutil.copytree(REPO / "cthulhu_sft", tmp_path / "cthulhu_sft", ignore=shutil.ignore_patterns("__pycache__"))
    source = write_legacy(tmp_path / "old.json", LEGACY, as_array=True)
    command = [PYTHON, "prepare_data.py", "--from_json", str(source), "--out_dir", str(tmp_path / "out")]

    missing = run_script(command, cwd=tmp_path, timeout=120)
    assert missing.returncode == 2 and "sft_config.yaml: not found" in missing.stderr

    (tmp_path / "sft_config.yaml").write_text(f"model_name_or_path: {tokenizer_dir}\n", encoding="utf-8")
    no_key = run_script(command, cwd=tmp_path, timeout=120)
    assert no_key.returncode == 2 and "no top-level key 'max_length'" in no_key.stderr

    (tmp_path / "sft_config.yaml").write_text(f"model_name_or_path: {tokenizer_dir}\nmax_length: 48\n", encoding="utf-8")
    result = run_script(command, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "(limit 48)" in result.stdout and str(tokenizer_dir) in (tmp_path / "out/README.md").read_text(encoding="utf-8")
    records = read_jsonl(tmp_path / "out/train.jsonl") + read_jsonl(tmp_path / "out/eval.jsonl")
    assert max(length(fmt, r["instruction"], r["response"]) for r in records) <= 48


@pytest.mark.slow
def test_no_eval_split_writes_no_empty_eval_file_and_says_how_to_train(tmp_path, tokenizer_dir):
    source = write_legacy(tmp_path / "old.jsonl", LEGACY, as_array=False)
    (tmp_path / "out").mkdir()
    (tmp_path / "out/eval.jsonl").write_text('{"instruction": "stale", "response": "stale"}\n', encoding="utf-8")
    result = run_script([PYTHON, "prepare_data.py", "--from_json", str(source), "--tokenizer", str(tokenizer_dir),
                         "--max_tokens", "64", "--out_dir", str(tmp_path / "out"), "--eval_ratio", "0"], timeout=120)
    assert result.returncode == 0, result.stderr
    assert read_jsonl(tmp_path / "out/train.jsonl")
    assert not (tmp_path / "out/eval.jsonl").exists()
    assert "--eval_file '' --eval_strategy no" in result.stderr


@pytest.mark.slow
def test_a_single_article_with_a_high_eval_ratio_is_all_train_with_correct_advice(tmp_path, tokenizer_dir):
    with MediaWikiServer(cthulhu_wiki()) as server:
        result = prepare(server, tmp_path, tokenizer_dir, "--category", "", "--titles", "ルルイエ", "--eval_ratio", "0.9")
    assert result.returncode == 0, result.stderr
    assert {r["title"] for r in read_jsonl(tmp_path / "out/train.jsonl")} == {"ルルイエ"}
    assert not (tmp_path / "out/eval.jsonl").exists() and not (tmp_path / "out/source_texts.jsonl").exists()
    assert "no eval split" in result.stderr and "--eval_file '' --eval_strategy no" in result.stderr
    assert "no train split" not in result.stderr


INTERRUPTED = """
import os, sys
import prepare_data
real_fsync, calls = os.fsync, []
def fsync(fd):  # Ctrl-C while the second output file is being written
    calls.append(fd)
    if len(calls) == 2:
        raise KeyboardInterrupt
    real_fsync(fd)
os.fsync = fsync
sys.exit(prepare_data.main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_outputs_are_replaced_as_a_set_and_stale_ones_of_an_earlier_run_removed(tmp_path, tokenizer_dir):
    out = tmp_path / "out"
    with MediaWikiServer(cthulhu_wiki()) as server:
        first = prepare(server, tmp_path, tokenizer_dir, "--eval_ratio", "0.3")
        assert first.returncode == 0, first.stderr
        before = {path.name: path.read_bytes() for path in out.iterdir()}
        assert set(before) == {"train.jsonl", "eval.jsonl", "source_texts.jsonl", "README.md"}

        arguments = prepare_args(server, tmp_path, tokenizer_dir, "--eval_ratio", "0")
        interrupted = run_script([PYTHON, "-c", INTERRUPTED, *arguments], timeout=120)
        assert interrupted.returncode != 0 and "KeyboardInterrupt" in interrupted.stderr
        assert {path.name: path.read_bytes() for path in out.iterdir()} == before  # the first run's set, whole

        second = prepare(server, tmp_path, tokenizer_dir, "--eval_ratio", "0")
    assert second.returncode == 0, second.stderr
    assert sorted(path.name for path in out.iterdir()) == ["README.md", "train.jsonl"]  # no stale eval, no temp file
    assert (out / "train.jsonl").read_bytes() != before["train.jsonl"]
