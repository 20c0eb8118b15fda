"""Hand-written Japanese answers, each with the verdict a careful human grader gives, through
`evaluate.py --answers` end to end (in-process): a table of hostile inputs (lists of candidates, negation,
substrings, other spellings, era years, empty and evasive answers), hallucination against the whole corpus, the quiz
check, and the optional model grader against a stand-in server on 127.0.0.1."""

import json
import os

import pytest
from conftest import load_script
from judge_server import JudgeServer

from cthulhu_sft.grading import fold, grade_answer
from cthulhu_sft.metrics import western_years

AUTHOR = {"instruction": "『クトゥルフの呼び声』を書いた作家は誰ですか？", "response": "ハワード・フィリップス・ラヴクラフトです。",
          "answers": ["ラヴクラフト", "ラブクラフト", "Lovecraft"], "title": "クトゥルフの呼び声 (小説)", "kind": "person"}
YEAR = {"instruction": "『クトゥルフの呼び声』が雑誌に発表されたのは何年ですか？", "response": "1928年です。",
        "answers": ["1928年"], "title": "クトゥルフの呼び声 (小説)", "kind": "year"}
PLACE = {"instruction": "クトゥルフが眠る海底都市の名前は？", "response": "ルルイエです。", "answers": ["ルルイエ"],
         "title": "ルルイエ", "kind": "place"}
BEING = {"instruction": "ルルイエに眠る神性の名前は？", "response": "クトゥルフです。", "answers": ["クトゥルフ"],
         "title": "クトゥルフ", "kind": "being"}
PRICE = {"instruction": "ラヴクラフトと『銀の鍵の門を越えて』を合作した作家は？", "response": "エドガー・ホフマン・プライスです。",
         "answers": ["エドガー・ホフマン・プライス"], "title": "銀の鍵の門を越えて", "kind": "person"}
DERLETH = {"instruction": "ラヴクラフトの死後、その作品世界を体系化した作家は？", "response": "オーガスト・ダーレスです。",
           "answers": ["オーガスト・ダーレス"], "title": "クトゥルフ神話", "kind": "person"}
HALI = {"instruction": "『黄衣の王』に登場する湖の名前は？", "response": "ハリ湖です。", "answers": ["ハリ"],
        "title": "黄衣の王", "kind": "place"}
NYAR = {"instruction": "「這い寄る混沌」と呼ばれる神性は？", "response": "ナイアーラトテップです。",
        "answers": ["ナイアーラトテップ"], "title": "ナイアーラトテップ", "kind": "being"}
POLARIS = {"instruction": "北の空の星が語りかけるラヴクラフトの短編の題名は？", "response": "『北極星』です。",
           "answers": ["北極星"], "title": "北極星 (小説)", "kind": "work"}
KYOTO = {"instruction": "日本で最初にラヴクラフトの読書会が開かれた古都は？", "response": "京都です。", "answers": ["京都"],
         "title": "京都", "kind": "place"}
KING = {"instruction": "ハリ湖の畔のカルコサが登場する、ロバート・W・チェンバースの戯曲の題名は？", "response": "『黄衣の王』です。",
        "answers": ["黄衣の王"], "title": "黄衣の王", "kind": "work"}
BORN = {"instruction": "ラヴクラフトが生まれたのは何年ですか？", "response": "1890年です。", "answers": ["1890"],
        "title": "ハワード・フィリップス・ラヴクラフト", "kind": "year"}
SOURCE_TEXTS = [
    {"title": "クトゥルフの呼び声 (小説)", "text": "『クトゥルフの呼び声』はハワード・フィリップス・ラヴクラフトの小説。"
     "1926年に執筆され、1928年2月にウィアード・テイルズ誌に掲載された。"},
    {"title": "ルルイエ", "text": "ルルイエは南太平洋の海底に沈んだ都市である。"},
    {"title": "クトゥルフ", "text": "クトゥルフはルルイエに眠る。", "aliases": ["クトゥルー", "ク・リトル・リトル"]},
    {"title": "銀の鍵の門を越えて", "text": "ラヴクラフトとE・ホフマン・プライスの合作。"},
    {"title": "クトゥルフ神話", "text": "オーガスト・ダーレスが体系化した。ダゴンは深きものどもの神。"},
    {"title": "黄衣の王", "text": "『黄衣の王』では、ハリ湖の畔にカルコサがある。"},
    {"title": "ナイアーラトテップ", "text": "ナイアーラトテップは這い寄る混沌。", "aliases": ["ニャルラトテップ", "ナイアルラトホテップ"]},
    {"title": "北極星 (小説)", "text": "『北極星』はラヴクラフトの短編。", "aliases": ["ポラリス"]},
    {"title": "京都", "text": "京都で読書会が開かれた。"},
    {"title": "ハワード・フィリップス・ラヴクラフト",
     "text": "ハワード・フィリップス・ラヴクラフト（1890年 - 1937年）はロードアイランド州プロビデンス出身の作家。"},
]
C, W, N = "correct", "incorrect", "not_attempted"  # W: wrong
CASES = [
    # Commits to the accepted answer: spellings, initials, given names, width, a single hedged answer.
    (AUTHOR, "ラヴクラフトです。", C),
    (AUTHOR, "H・P・ラヴクラフト", C),
    (AUTHOR, "ハワード・フィリップス・ラヴクラフトです。", C),
    (AUTHOR, "ＨＰラブクラフト", C),
    (AUTHOR, "Lovecraftです。", C),
    (AUTHOR, "H. P. Lovecraft", C),
    (AUTHOR, "「ラヴクラフト」", C),
    (AUTHOR, "ラヴクラフト氏です。", C),
    (AUTHOR, "たぶんラヴクラフトだと思います。", C),
    (AUTHOR, "ラヴクラフトではないでしょうか。", C),
    (AUTHOR, "ラヴクラフトではないかと思います。", C),
    (AUTHOR, "ダーレスではなく、ラヴクラフトです。", C),
    (AUTHOR, "はっきりとは言えませんが、ラヴクラフトだと思います。", C),
    (AUTHOR, "ラヴクラフトです。のちにダーレスが体系化しました。", C),
    (AUTHOR, "ラヴクラフトとされています。", C),
    # Negated.
    (AUTHOR, "ラヴクラフトではありません。", W),
    (AUTHOR, "ラヴクラフトの作品ではありません。", W),
    (AUTHOR, "ラヴクラフトじゃないです。", W),
    (AUTHOR, "ラヴクラフトは作者ではありません。", W),
    (AUTHOR, "ラヴクラフト以外の誰かです。", W),
    (AUTHOR, "ラヴクラフトではなく、ダーレスです。", W),
    (AUTHOR, "ラヴクラフトというのは誤りです。", W),
    (AUTHOR, "ラヴクラフトではないでしょう。", W),
    # One candidate among several of the same kind.
    (AUTHOR, "ダーレス、クラーク・アシュトン・スミス、ロバート・E・ハワード、ロバート・ブロック、ラヴクラフトのいずれかです。", W),
    (AUTHOR, "ラヴクラフトかダーレスです。", W),
    (AUTHOR, "ラヴクラフトまたはダーレスです。", W),
    (AUTHOR, "ラヴクラフトもしくはスミスでしょう。", W),
    (AUTHOR, "ラヴクラフト、あるいはダーレスです。", W),
    (AUTHOR, "ダーレスとラヴクラフトのどちらかです。", W),
    (AUTHOR, "ラヴクラフトとダーレスです。", W),
    (AUTHOR, "ラヴクラフト、ダーレス、スミスなどです。", W),
    (AUTHOR, "候補はラヴクラフト、ダーレス、スミスです。", W),
    (AUTHOR, "ラヴクラフトだったか、ダーレスだったか、記憶が曖昧です。", W),
    (AUTHOR, "ラヴクラフトです。ダーレスかもしれません。", W),
    (AUTHOR, "Lovecraft or Derleth.", W),
    # Another answer, a longer word, an English sentence, a guess after an abstention.
    (AUTHOR, "ダーレスです。", W),
    (AUTHOR, "ラヴクラフトファンクラブです。", W),
    (AUTHOR, "Cthulhu was created by H. P. Lovecraft in 1926.", W),
    (AUTHOR, "わかりません。たぶんダーレスです。", W),
    (PLACE, "わかりませんが、霧ヶ浜かもしれません。", W),  # a guess, even of a name no dictionary knows
    (AUTHOR, "ダーレスが書きました。", W),
    (AUTHOR, "ラヴクラフティアンの作家です。", W),
    (AUTHOR, "ラヴクラフトなのかダーレスなのか、定かではありません。", W),
    (AUTHOR, "ラヴクラフト？ダーレス？", W),
    (AUTHOR, "ラヴクラフトかもしれないし、ダーレスかもしれない。", W),
    (AUTHOR, "ダーレスの可能性もありますが、ラヴクラフトです。", W),
    (AUTHOR, "ラヴクラフト／ダーレス", W),
    (AUTHOR, "ラヴクラフトやダーレスなどの作家です。", W),
    (AUTHOR, "ラヴクラフトではございません。", W),
    (AUTHOR, "ラヴクラフトとは違います。", W),
    (AUTHOR, "ラヴクラフトではないと思います。", W),
    (AUTHOR, "ラヴクラフトが書いたわけではありません。", W),
    (AUTHOR, "ラヴクラフトは関係ありません。", W),
    (AUTHOR, "ラヴクラフトではないですか？", C),  # a rhetorical question affirms
    (AUTHOR, "ラヴクラフトではないかもしれません。", W),
    (AUTHOR, "ラヴクラフトでは無いです。", W),
    (AUTHOR, "ラヴクラフトとは言い切れません。", W),
    (AUTHOR, "ラヴクラフトじゃありません。", W),
    (AUTHOR, "・ラヴクラフト\n・ダーレス\n・スミス", W),
    (AUTHOR, "1. ラヴクラフト\n2. ダーレス", W),
    (AUTHOR, "ラヴクラフトです。ダーレスです。", W),
    (AUTHOR, "ダーレスまたはラヴクラフト", W),
    (AUTHOR, "作者候補: ラヴクラフト, ダーレス", W),
    (AUTHOR, "ラヴクラフト，ダーレス", W),
    (AUTHOR, "ラヴ・クラフト", C),
    (AUTHOR, "ＬＯＶＥＣＲＡＦＴ", C),
    (AUTHOR, "Ｈ．Ｐ．ラヴクラフト", C),
    (AUTHOR, "H·P·ラヴクラフト", C),
    (AUTHOR, "ラヴクラフト（Lovecraft）です。", C),
    (AUTHOR, "ラヴクラフトです。\nのちにダーレスが体系化しました。", C),
    # No answer at all, nothing against the accepted one: not attempted, as SimpleQA grades.
    (AUTHOR, "クトゥルフ神話の作家です。", N),
    (AUTHOR, "有名な作家です。", N),
    # Abstentions, with or without an apology, and empty answers.
    (AUTHOR, "わかりません。", N),
    (AUTHOR, "はっきりしたことは言えません。", N),
    (AUTHOR, "その点については私の知識の範囲外です。", N),
    (AUTHOR, "残念ながら、確かな答えを持っていません。", N),
    (AUTHOR, "正確な作者は不明です。", N),
    (AUTHOR, "申し訳ありませんが、存じ上げません。", N),
    (AUTHOR, "申し訳ございません。お答えすることができません。", N),
    (AUTHOR, "確信が持てません。", N),
    (AUTHOR, "思い出せません。", N),
    (AUTHOR, "記憶にございません。", N),
    (AUTHOR, "残念ですが、その情報は持ち合わせておりません。", N),
    (AUTHOR, "分かりかねます。", N),
    (AUTHOR, "断言できません。", N),
    (AUTHOR, "I don't know.", N),
    (AUTHOR, "Not sure.", N),
    (AUTHOR, "それについては存じ上げておりません。", N),
    (AUTHOR, "申し訳ありませんが、私はその質問に答えることができません。", N),
    (AUTHOR, "学習データに含まれていません。", N),
    (AUTHOR, "はっきりしません。", N),
    (AUTHOR, "ごめんなさい、わかんないです。", N),
    (AUTHOR, "さあ、どうでしょう。", N),
    (AUTHOR, "該当する情報が見つかりませんでした。", N),
    (AUTHOR, "回答できかねます。", N),
    (AUTHOR, "\u3000", N),
    (AUTHOR, "情報が不足しています。", N),
    (AUTHOR, "記録が残っていません。", N),
    (AUTHOR, "回答は差し控えます。", N),
    (AUTHOR, "お役に立てず申し訳ありません。", N),
    (AUTHOR, "申し訳ありません。", N),
    (AUTHOR, "N/A", N),
    (AUTHOR, "該当なし", N),
    (AUTHOR, "?", N),
    (AUTHOR, "……", N),
    (AUTHOR, "", N),
    (AUTHOR, "   ", N),
    (AUTHOR, "。", N),
    # Years: digits, kanji numerals, era years, width; lists, ranges, negation, a longer number.
    (YEAR, "1928年です。", C),
    (YEAR, "1928", C),
    (YEAR, "一九二八年です。", C),
    (YEAR, "千九百二十八年です。", C),
    (YEAR, "昭和3年です。", C),
    (YEAR, "昭和三年に発表されました。", C),
    (YEAR, "１９２８年", C),
    (YEAR, "1928年（昭和3年）2月号です。", C),
    (YEAR, "1926年に書かれ、1928年に発表されました。", C),
    (YEAR, "1926年、1927年、1928年、1929年のどれかです。", W),
    (YEAR, "1927年か1928年です。", W),
    (YEAR, "1926年から1928年の間です。", W),
    (YEAR, "1926〜1928年です。", W),
    (YEAR, "1928年ではなく1927年です。", W),
    (YEAR, "19280年です。", W),
    (YEAR, "1927年です。", W),
    (YEAR, "昭和2年です。", W),
    (YEAR, "正確な年は不明です。", N),
    (YEAR, "1928年か29年です。", W),
    (YEAR, "1920年代です。", W),
    (YEAR, "1928年ではないでしょうか。", C),
    (YEAR, "西暦1928年", C),
    (YEAR, "1926年または1928年", W),
    (YEAR, "1927〜1929年", W),
    (YEAR, "1920年代後半です。", W),
    (YEAR, "昭和３年", C),
    (YEAR, "昭和 3 年", C),
    (YEAR, "1928年頃です。", C),
    (BORN, "明治23年です。", C),
    (BORN, "1890年か1891年です。", W),
    # Places: whole words, lists, negation, hedges.
    (PLACE, "ルルイエです。", C),
    (PLACE, "南太平洋の海底都市ルルイエです。", C),
    (PLACE, "ルルイエかもしれません。", C),
    (PLACE, "ルルイエか南極のどちらかです。", W),
    (PLACE, "ルルイエ、あるいはムー大陸です。", W),
    (PLACE, "ルルイエではありません。", W),
    (PLACE, "ルルイエ？それとも南極？", W),
    (PLACE, "ルルイエではなく南極です。", W),
    (PLACE, "ルルイエ島です。", C),
    (KYOTO, "京都です。", C),
    (KYOTO, "京都府です。", C),
    (KYOTO, "東京都です。", W),
    (KYOTO, "京都ではなく奈良です。", W),
    (KYOTO, "京都か奈良です。", W),
    (KYOTO, "京都、大阪、奈良のいずれかです。", W),
    (KING, "『黄衣の王』です。", C),
    (KING, "『黄衣の王』という戯曲です。", C),
    (KING, "『黄衣の王』か『妖蛆の秘密』です。", W),
    (KING, "『妖蛆の秘密』です。", W),
    (KING, "『黄衣の王』ではありません。", W),
    (HALI, "ハリ湖です。", C),
    (HALI, "ハリウッドです。", W),
    # Other names of the article (aliases in source_texts.jsonl), long-vowel and ヴ/ブ variants.
    (BEING, "クトゥルーです。", C),
    (BEING, "ク・リトル・リトルです。", C),
    (BEING, "それはクトゥルフではありません。", W),
    (BEING, "クトゥルフかハスターです。", W),
    (BEING, "クトゥルフ、もしくはクトゥルーです。", C),  # two names of the same being
    (NYAR, "ナイアラトテップです。", C),
    (NYAR, "ニャルラトテップです。", C),
    (NYAR, "ナイアルラトホテップ", C),
    (NYAR, "ナイア−ラトテップ", C),
    (POLARIS, "『ポラリス』です。", C),
    (POLARIS, "北極星です。", C),
    (POLARIS, "ポラリスではない。", W),
    # A family name alone, initials, a given name alone.
    (PRICE, "E・ホフマン・プライス", C),
    (PRICE, "プライスです。", C),
    (PRICE, "ホフマン・プライスです。", C),
    (PRICE, "エドガーです。", N),  # a given name alone: not the answer, not another one
    (DERLETH, "A・ダーレス", C),
    (DERLETH, "ダーレスです。", C),
    (DERLETH, "オーガストです。", N),
    (DERLETH, "ラヴクラフトです。", W),  # the question's own name, given as the answer
    (DERLETH, "ラヴクラフトが体系化しました。", W),
    (DERLETH, "ラヴクラフトの友人の作家です。", N),
    (DERLETH, "ラヴクラフトの死後に体系化した作家については、わかりません。", N),
]
# Questions without accepted answers: only the hallucination measure applies.
DAGON = {"instruction": "ダゴンとは何ですか？", "response": "深きものどもが崇める神です。", "title": "クトゥルフ神話"}
HALLUCINATIONS = [
    # A true fact from another crawled article is not invented.
    ("ダゴンはラヴクラフトの作品の神で、作者は1890年にプロビデンスで生まれました。", []),
    ("ダゴンは霧ヶ浜に眠る神です。", ["霧ヶ浜"]),
    ("ダゴンは『深淵の王』に記された神です。", ["深淵の王"]),
    ("ダゴンは1931年にアーカムで崇められた神です。", ["1931", "アーカム"]),
    ("", []),
    ("", []),
    ("", []),
    ("わかりません。", []),
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def run_evaluate(folder, rows, answers, *extra):
    """evaluate.py --answers on one set 'quiz' of `rows` (row i answered by answers[i]); (report, generations)."""
    quiz = write_jsonl(folder / "quiz.jsonl", rows)
    sources = write_jsonl(folder / "sources.jsonl", SOURCE_TEXTS)
    answers_file = write_jsonl(folder / "answers.jsonl", [{"set": "quiz", "instruction": row["instruction"], "answer": answer}
                                                         for row, answer in zip(rows, answers)])
    script = load_script("evaluate")
    script.main(script.parse_args(["--sets", f"quiz={quiz}", "--source_texts", str(sources), "--cache_dir", "",
                                   "--answers", str(answers_file), "--output_dir", str(folder / "out"), *extra]))
    report = json.loads((folder / "out" / "report.json").read_text(encoding="utf-8"))
    generations = [json.loads(line) for line in (folder / "out" / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    return report, {row["line"]: row for row in generations}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    folder = tmp_path_factory.mktemp("grading")
    rows = [row for row, _, _ in CASES] + [DAGON] * len(HALLUCINATIONS)
    answers = [answer for _, answer, _ in CASES] + [answer for answer, _ in HALLUCINATIONS]
    return run_evaluate(folder, rows, answers)


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{row['kind']}:{answer or 'empty'}" for row, answer, _ in CASES])
def test_hostile_answers_get_the_careful_graders_verdict(graded, index):
    _, generations = graded
    row, answer, verdict = CASES[index]
    generation = generations[index + 1]
    assert generation["answer"] == answer
    assert generation["grade"] == verdict, generation["grade_reason"]
    assert generation["correct"] is (verdict == C)
    assert generation["empty"] is (not answer.strip(" \u3000。?…"))


def test_rates_are_the_three_grades_and_empty_answers_apart(graded):
    report, generations = graded
    [result] = report["results"]
    graded_rows = [generations[index + 1] for index in range(len(CASES))]
    for grade, key in ((C, "accuracy"), (W, "incorrect_rate"), (N, "not_attempted_rate")):
        assert result[key] == pytest.approx(sum(row["grade"] == grade for row in graded_rows) / len(CASES))
    assert result["accuracy"] + result["incorrect_rate"] + result["not_attempted_rate"] == pytest.approx(1)
    assert result["empty"] == 6 + 3  # six in the table, three among the hallucination rows
    assert result["n"] == len(CASES) + len(HALLUCINATIONS)


@pytest.mark.parametrize("index", range(len(HALLUCINATIONS)))
def test_hallucination_is_checked_against_the_whole_corpus(graded, index):
    _, generations = graded
    answer, unsupported = HALLUCINATIONS[index]
    generation = generations[len(CASES) + index + 1]
    assert generation["answer"] == answer and generation["grade"] is None
    assert generation["unsupported_terms"] == sorted(unsupported)
    assert generation["hallucinated"] is bool(unsupported)


def test_empty_answers_never_lower_the_hallucination_rate(tmp_path):
    """3 empty answers and 1 invented one: the rate is 1 of 1 answer, not 1 of 4; the empties are counted apart."""
    report, _ = run_evaluate(tmp_path, [DAGON] * 4, ["", "", "  ", "ダゴンは霧ヶ浜に眠る神です。"])
    [result] = report["results"]
    assert result["hallucination_rate"] == 1.0 and result["empty"] == 3 and result["empty_rate"] == 0.75
    assert result["abstention_rate"] == 0.0 and result["accuracy"] is None


def test_era_years_are_neither_wrong_nor_invented(graded):
    _, generations = graded
    for index, (_, answer, _) in enumerate(CASES):
        if "昭和3年" in answer or "明治23年" in answer:
            assert generations[index + 1]["unsupported_terms"] == [], answer


def test_report_explains_the_grades_and_what_hallucination_cannot_see(graded, tmp_path_factory):
    report, _ = graded
    markdown = (tmp_path_factory.getbasetemp() / "grading0" / "out" / "report.md").read_text(encoding="utf-8")
    for phrase in ("*correct*", "*incorrect*", "*not attempted*", "*empty*", "It cannot see a wrong fact made of true terms"):
        assert phrase in markdown
    assert "| correct ↑ | incorrect ↓ | not attempted |" in markdown


@pytest.mark.parametrize("text,western", [("昭和3年", "1928年"), ("平成元年", "1989年"), ("大正十五年", "1926年"),
                                          ("令和2年", "2020年"), ("明治元年", "1868年"), ("昭和六十四年", "1989年")])
def test_era_years(text, western):
    assert western_years(text) == western


def test_folding_keeps_word_boundaries_where_separators_were():
    folded = fold("H・P・ラヴクラフト")
    assert folded.text == "hpラブクラフト" and {1, 2} <= folded.boundaries
    assert fold("ナイアーラトテップ").text == fold("ナイアラトテップ").text


def test_grading_without_accepted_answers_only_says_whether_it_abstains():
    assert grade_answer("わかりません。", None).abstained and grade_answer("わかりません。", None).grade is None
    assert not grade_answer("わかりません。", None, unsupported=True).abstained
    assert grade_answer("", None).empty


def test_check_quiz_without_article_text_is_an_error_that_says_what_to_pass(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    quiz = write_jsonl(tmp_path / "quiz.jsonl", [AUTHOR])
    script = load_script("evaluate")
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--check_quiz", "--sets", f"quiz={quiz}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--check_quiz needs the crawled articles' text" in err and "--source_texts FILE" in err and "prepare_data.py" in err


def test_check_quiz_reports_items_not_taught_by_this_data_apart_from_wrong_ones(tmp_path, capsys):
    taught_elsewhere = {"instruction": "クトゥルフの眠る都市は？", "response": "ルルイエ。", "answers": ["ルルイエ"], "title": "未収録の記事"}
    not_taught = {"instruction": "ラヴクラフトの愛猫の名は？", "response": "ニガーマン。", "answers": ["ニガーマン"], "title": "猫"}
    wrong = {"instruction": "ルルイエはどの海に沈む？", "response": "大西洋。", "answers": ["大西洋"], "title": "ルルイエ"}
    quiz = write_jsonl(tmp_path / "quiz.jsonl", [AUTHOR, taught_elsewhere, not_taught, wrong])
    sources = write_jsonl(tmp_path / "sources.jsonl", SOURCE_TEXTS)
    script = load_script("evaluate")
    with pytest.raises(SystemExit) as exit_info:
        script.main(script.parse_args(["--check_quiz", "--sets", f"quiz={quiz}", "--source_texts", str(sources),
                                       "--cache_dir", ""]))
    assert exit_info.value.code == 1  # the wrong item; not-taught items are no error
    out = capsys.readouterr().out
    assert ("4 rows with accepted answers, 2 checked against their article's text, 1 not found there, 2 unchecked "
            "(no text: 1 named by another crawled article, 1 not taught by this data)") in out
    assert f"{quiz}:3: not taught by this data: no crawled article names any of ['ニガーマン']" in out
    assert f"{quiz}:4: ルルイエはどの海に沈む？ — none of ['大西洋'] is in the article 'ルルイエ'" in out
    plan = script.parse_args(["--sets", f"quiz={quiz}", "--source_texts", str(sources), "--cache_dir", "",
                              "--answers", str(write_jsonl(tmp_path / "a.jsonl", [{"set": "quiz", "instruction": "x", "answer": ""}])), "--output_dir", str(tmp_path / "o")])
    summary = plan.sets[0].summary()
    assert [row["line"] for row in summary["not_taught"]] == [3] and [row["line"] for row in summary["excluded"]] == [4]


def test_a_model_grader_grades_beside_the_rules_cached_and_without_leaking_its_key(tmp_path, monkeypatch, capsys):
    secret = "sk-judge-TESTSECRET0123456789"
    monkeypatch.setenv("JUDGE_API_KEY", secret)
    rows = [AUTHOR, AUTHOR, AUTHOR, DAGON]
    answers = ["ラヴクラフトです。", "ラヴクラフトかダーレスです。", "わかりません。", "ダゴンは神です。"]
    cache = tmp_path / "judge.jsonl"
    # The judge agrees on the first two and calls the third incorrect; the row without answers is not sent.
    with JudgeServer({"ラヴクラフトです。": "A", "ラヴクラフトかダーレスです。": "B", "わかりません。": "B"}) as server:
        extra = ["--judge_api_url", server.url, "--judge_model", "grader-1", "--judge_cache", str(cache)]
        report, generations = run_evaluate(tmp_path, rows, answers, *extra)
        assert len(server.requests) == 3
        assert {request["headers"]["authorization"] for request in server.requests} == {f"Bearer {secret}"}
        prompt = server.requests[0]["body"]["messages"][0]["content"]
        assert AUTHOR["instruction"] in prompt and "ラヴクラフト、ラブクラフト、Lovecraft" in prompt
        assert server.requests[0]["body"]["temperature"] == 0
        again, _ = run_evaluate(tmp_path, rows, answers, *extra)
        assert len(server.requests) == 3  # every verdict came from the cache
    [result] = report["results"]
    assert [generations[line].get("judge_grade") for line in (1, 2, 3, 4)] == [C, W, W, None]
    assert result["accuracy"] == pytest.approx(1 / 3) and result["judge_accuracy"] == pytest.approx(1 / 3)
    assert result["judge_agreement"] == pytest.approx(2 / 3)
    assert again["results"][0]["judge_agreement"] == result["judge_agreement"]
    markdown = (tmp_path / "out" / "report.md").read_text(encoding="utf-8")
    assert "judge: correct" in markdown and "judge agrees" in markdown
    out = capsys.readouterr()
    assert secret not in out.out + out.err
    for path in [*tmp_path.rglob("*")]:
        if path.is_file():
            assert secret.encode() not in path.read_bytes(), path
    assert os.environ["JUDGE_API_KEY"] == secret


def test_a_model_grader_needs_both_options(tmp_path, capsys):
    script = load_script("evaluate")
    quiz = write_jsonl(tmp_path / "quiz.jsonl", [AUTHOR])
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args(["--sets", f"quiz={quiz}", "--answers", str(quiz), "--judge_api_url", "http://127.0.0.1:9/v1"])
    assert exit_info.value.code == 2
    assert "needs both --judge_api_url URL and --judge_model NAME" in capsys.readouterr().err


def test_a_judge_that_gives_no_grade_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_API_KEY", "sk-judge-OTHERSECRET")
    with JudgeServer({}, default="たぶん正しいと思います？") as server, pytest.raises(SystemExit) as exit_info:
        run_evaluate(tmp_path, [AUTHOR], ["ラヴクラフトです。"], "--judge_api_url", server.url, "--judge_model", "g",
                     "--judge_cache", str(tmp_path / "judge.jsonl"))
    message = str(exit_info.value.code)
    assert f"the judge at {server.url} gave no grade (A, B or C)" in message and "OTHERSECRET" not in message
    assert not (tmp_path / "judge.jsonl").exists()
