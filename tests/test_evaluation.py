"""Sets, one answer's scores, aggregation and intervals, source texts and the quiz self-check, in-process
(hand-worked examples; see cthulhu_sft/evaluation.py for the definitions)."""

import json

import pytest

from cthulhu_sft.data import DataError
from cthulhu_sft.evaluation import (
    aggregate,
    cached_source_texts,
    default_max_new_tokens,
    match_answers,
    quiz_problems,
    read_answers,
    read_set,
    read_source_texts,
    score_item,
    score_open_book,
    wilson_interval,
)
from cthulhu_sft.format import MistralFormat
from cthulhu_sft.report import add_gaps
from cthulhu_sft.retrieval import NOT_FOUND, Hit
from cthulhu_sft.sets import Corpus
from cthulhu_sft.wiki import Cache

REPORT_FIELDS = {
    "n", "accuracy", "accuracy_ci", "incorrect_rate", "not_attempted_rate", "accuracy_given_attempted", "empty",
    "empty_rate", "rouge_l_f1", "fact_recall", "hallucination_rate", "unsupported_term_rate", "abstention_rate",
    "non_japanese_rate", "eos_stop_rate", "truncated_rate", "judge_accuracy", "judge_agreement",
    "citation_accuracy", "citation_rate", "passages_hold_answer_rate", "abstention_when_absent",
    "abstention_when_present", "closed_share_of_open",
}
CTHULHU = {
    "instruction": "クトゥルフはどこで眠っていますか？",
    "response": "クトゥルフは南太平洋の海底に沈んだ都市ルルイエで眠っています。",
    "answers": ["ルルイエ"],
    "title": "クトゥルフ",
    "kind": "place",
}
SOURCE = "クトゥルフはルルイエに眠る。ルルイエは南太平洋に沈んだ都市で、1925年の『クトゥルフの呼び声』に登場する。"
HALLUCINATION = "クトゥルフは南極の氷の下の都市で眠っています。"
CORPUS = Corpus({"クトゥルフ": SOURCE})


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize(
    "successes,n,low,high",
    [
        # p = 0.8, z = 1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71675, half-width 0.22657 (hand-worked).
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),  # not empty at 0 successes, as the normal approximation would be
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
    ],
)
def test_wilson_interval(successes, n, low, high):
    assert wilson_interval(successes, n) == pytest.approx((low, high), abs=1e-4)


def test_wilson_interval_edges():
    assert wilson_interval(0, 0) == (0.0, 1.0)  # nothing observed: anything is possible
    narrower = wilson_interval(8, 10, z=1.0)
    assert narrower[0] > 0.4902 and narrower[1] < 0.9433
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_score_of_a_correct_short_answer():
    scores = score_item(CTHULHU, "ルルイエです。", stopped=True, corpus=CORPUS)
    assert scores == {
        "grade": "correct", "grade_reason": "names an accepted answer", "empty": False,
        "correct": True, "abstained": False, "japanese": True, "unsupported_terms": [], "hallucinated": False,
        "stopped": True, "truncated": False,
        "rouge_l_f1": pytest.approx(2 * 7 / (7 + 31)),  # ルルイエです。 is a subsequence of the 31 characters
        "fact_recall": pytest.approx(1 / 3),  # reference terms: クトゥルフ, 太平洋, ルルイエ
        "reference_terms": 3, "recalled_terms": 1, "claimed_terms": 1,
    }


def test_made_up_kanji_fact_is_a_hallucination():
    """Review case 1: 南極 where the source says 太平洋 is an unsupported term, so the answer hallucinates."""
    scores = score_item(CTHULHU, HALLUCINATION, stopped=False, corpus=CORPUS)
    assert scores["unsupported_terms"] == ["南極"] and scores["hallucinated"]
    assert scores["correct"] is False and not scores["abstained"] and scores["truncated"]
    summary = aggregate([scores])
    assert summary["hallucination_rate"] == 1.0 and summary["unsupported_term_rate"] == 0.5  # 南極 of クトゥルフ, 南極


def test_correct_answer_in_english_is_neither_hallucinated_nor_correct():
    """Review case 2: English grammar words ('entity', 'sleeping') are not invented facts; the answer is not in
    Japanese, so it is counted as such and not as correct, even though it names the accepted Cthulhu."""
    row = {**CTHULHU, "answers": ["ルルイエ", "R'lyeh"]}
    answer = "Cthulhu is a fictional cosmic entity created by H. P. Lovecraft, sleeping in R'lyeh."
    scores = score_item(row, answer, stopped=True, corpus=CORPUS)
    assert scores["unsupported_terms"] == [] and not scores["hallucinated"]
    assert scores["japanese"] is False and scores["correct"] is False
    summary = aggregate([scores])
    assert summary["non_japanese_rate"] == 1.0 and summary["hallucination_rate"] == 0.0 and summary["accuracy"] == 0.0
    assert summary["unsupported_term_rate"] is None  # it claims no term at all


def test_abstention_is_reported_not_silently_dropped():
    """Review case 3: 「わかりません。」 has no key terms and used to drop out of the rate. It is now an abstention:
    counted in abstention_rate, not correct, and not in the hallucination rate's denominator."""
    abstaining = score_item(CTHULHU, "わかりません。", stopped=True, corpus=CORPUS)
    assert abstaining["abstained"] and abstaining["correct"] is False and not abstaining["hallucinated"]
    hallucinating = score_item(CTHULHU, HALLUCINATION, stopped=True, corpus=CORPUS)
    summary = aggregate([hallucinating, abstaining])
    assert summary["abstention_rate"] == 0.5
    assert summary["hallucination_rate"] == 1.0  # 1 of the 1 answer that did not abstain
    assert summary["accuracy"] == 0.0
    # An answer that avoids names without abstaining is an answer: it counts, as a clean one.
    vague = score_item(CTHULHU, "深い海の底で眠っています。", stopped=True, corpus=CORPUS)
    assert not vague["abstained"]
    assert aggregate([hallucinating, vague])["hallucination_rate"] == 0.5


def test_a_hedge_that_guesses_is_an_answer():
    hedge = "申し訳ありませんが、わかりません。たぶん南極です。"
    assert score_item(CTHULHU, hedge, stopped=True, corpus=CORPUS)["abstained"] is False  # states 南極
    right = "わかりませんが、ルルイエだと思います。"
    scores = score_item(CTHULHU, right, stopped=True, corpus=CORPUS)
    assert scores["abstained"] is False and scores["correct"] is True


def test_the_question_supports_the_terms_it_names():
    row = {"instruction": "『インスマウスの影』の作者は？", "response": "ラヴクラフトです。", "answers": ["ラヴクラフト"]}
    scores = score_item(row, "『インスマウスの影』はラヴクラフトの作品です。", stopped=True)
    assert scores["unsupported_terms"] == [] and scores["correct"] is True


def test_aggregate_pools_hand_worked():
    no_answers = {key: value for key, value in CTHULHU.items() if key != "answers"}
    items = [
        score_item(CTHULHU, "ルルイエです。", stopped=True, corpus=CORPUS),  # correct, 1 term, recalls 1 of 3
        score_item(CTHULHU, HALLUCINATION, stopped=False, corpus=CORPUS),  # wrong, 南極 of 2 terms, recalls 1
        score_item(no_answers, "わかりません。", stopped=True),  # no answers: correct None; abstains
    ]
    assert [item["correct"] for item in items] == [True, False, None]
    summary = aggregate(items)
    assert set(summary) == REPORT_FIELDS
    assert summary["n"] == 3
    assert summary["accuracy"] == 0.5 and summary["accuracy_ci"] == pytest.approx(list(wilson_interval(1, 2)))
    assert summary["rouge_l_f1"] == pytest.approx(sum(item["rouge_l_f1"] for item in items) / 3)
    assert summary["fact_recall"] == pytest.approx((1 + 1 + 0) / (3 + 3 + 3))
    assert summary["hallucination_rate"] == 0.5  # 1 of the 2 answers that did not abstain
    assert summary["unsupported_term_rate"] == pytest.approx(1 / 3)  # 南極 of ルルイエ + クトゥルフ, 南極
    assert summary["abstention_rate"] == pytest.approx(1 / 3)
    assert summary["non_japanese_rate"] == 0.0
    assert summary["eos_stop_rate"] == pytest.approx(2 / 3) and summary["truncated_rate"] == pytest.approx(1 / 3)


def test_aggregate_marks_what_does_not_apply():
    row = {"instruction": "ダゴンとは？", "response": "深きものどもが崇める存在。"}
    summary = aggregate([score_item(row, "深きものどもの神。", stopped=None)])  # answers made elsewhere
    assert summary["accuracy"] is None and summary["accuracy_ci"] is None
    assert summary["fact_recall"] is None  # the reference has no key terms
    assert summary["eos_stop_rate"] is None and summary["truncated_rate"] is None
    assert summary["hallucination_rate"] == 0.0 and summary["unsupported_term_rate"] is None
    empty = aggregate([])
    assert empty["n"] == 0 and empty["empty"] == 0 and all(empty[key] is None for key in REPORT_FIELDS - {"n", "empty"})


def open_item(row, answer, shown):
    return score_open_book(row, answer, True, shown, CORPUS)


def test_open_book_citations_and_abstention_hand_worked():
    """Citation accuracy counts correct answers whose cited, shown passage holds the answer; abstention is split by
    whether the shown passages hold the answer."""
    holds = Hit("クトゥルフ", "", "クトゥルフはルルイエに眠る。", 1, "")
    other = Hit("ダゴン", "", "ダゴンは深きものどもの神。", 2, "")
    items = [
        open_item(CTHULHU, "ルルイエです[2]。", [other, holds]),  # correct, cites the passage that holds it
        open_item(CTHULHU, "ルルイエです[1]。", [other, holds]),  # correct, cites the wrong passage
        open_item(CTHULHU, "ルルイエです。", [holds]),  # correct, cites nothing
        open_item(CTHULHU, "ルルイエです[3]。", [holds]),  # correct, cites a passage that was not shown
        open_item(CTHULHU, NOT_FOUND, [other]),  # abstains where the passages lack the answer: right
        open_item(CTHULHU, NOT_FOUND, [holds]),  # abstains where the answer was shown: a miss
        open_item(CTHULHU, "ダゴンです[1]。", [other]),  # incorrect: no citation verdict
        open_item(CTHULHU, "ルルイエです[1][2]。", [other, holds]),  # correct, but cites every passage
    ]
    assert [item["citation_correct"] for item in items] == [True, False, False, False, None, None, None, False]
    assert [item["cites"] for item in items] == [True, True, False, False, False, False, True, True]
    assert items[0]["sources"] == [{"title": "ダゴン", "section": "", "revid": 2},
                                   {"title": "クトゥルフ", "section": "", "revid": 1}]
    assert items[3]["cited"] == [3] and items[4]["cited"] == []
    assert items[7]["grade"] == "correct" and items[7]["unsupported_terms"] == []  # [1][2]: no numbers, no list
    summary = aggregate(items)
    assert summary["accuracy"] == pytest.approx(5 / 8)
    assert summary["citation_accuracy"] == pytest.approx(1 / 5)
    assert summary["citation_rate"] == pytest.approx(4 / 6)  # of the 6 answers that do not abstain
    assert summary["passages_hold_answer_rate"] == pytest.approx(6 / 8)
    assert summary["abstention_when_absent"] == pytest.approx(1 / 2)  # NOT_FOUND and ダゴン over [other]
    assert summary["abstention_when_present"] == pytest.approx(1 / 6)
    closed = aggregate([score_item(CTHULHU, "ルルイエです。", stopped=True, corpus=CORPUS),
                        score_item(CTHULHU, "わかりません。", stopped=True, corpus=CORPUS)])
    assert closed["citation_accuracy"] is None and closed["passages_hold_answer_rate"] is None
    results = [{"set": "s", "model": "m", "book": "closed", "temperature": 0.0, **closed},
               {"set": "s", "model": "m", "book": "open", "temperature": 0.0, **summary}]
    add_gaps(results)
    assert results[1]["closed_share_of_open"] == pytest.approx(0.5 / (5 / 8))
    assert results[0]["closed_share_of_open"] is None


YEAR = {"instruction": "『クトゥルフの呼び声』が発表されたのは何年？", "response": "1928年です。", "answers": ["1928年"],
        "title": "クトゥルフの呼び声"}
YEAR_CORPUS = Corpus({"クトゥルフの呼び声": "ラヴクラフトが1926年に書き、1928年に発表した。"})


@pytest.mark.parametrize("answer,grade", [
    ("1928年です[2]。", "correct"),  # the citation is not a second number
    ("1928年です。[1][3]", "correct"),  # nor two citations a list of candidates
    ("1928年です【2】。", "correct"),
    ("資料2によると1928年です。", "correct"),
    ("1926年です[1]。", "incorrect"),
    ("[1]", "not_attempted"),  # nothing but a citation: empty
])
def test_an_open_book_answer_is_graded_without_its_citation_marks(answer, grade):
    shown = [Hit("クトゥルフの呼び声", "", "ラヴクラフトが1926年に書き、1928年に発表した。", 1, "")] * 3
    scores = score_open_book(YEAR, answer, True, shown, YEAR_CORPUS)
    assert scores["grade"] == grade and scores["unsupported_terms"] == [], scores
    assert scores["empty"] is (answer == "[1]")


def test_read_set_validates_the_optional_fields(tmp_path):
    good = write_jsonl(tmp_path / "good.jsonl", [CTHULHU, {"instruction": " q ", "response": "a", "extra": 1}])
    rows = read_set(good)
    assert rows[0]["answers"] == ["ルルイエ"] and rows[1]["instruction"] == "q" and rows[1]["extra"] == 1
    assert [row["line"] for row in rows] == [1, 2]
    bad = write_jsonl(tmp_path / "bad.jsonl", [
        CTHULHU,
        {**CTHULHU, "answers": "ルルイエ"},
        {**CTHULHU, "answers": []},
        {**CTHULHU, "answers": ["ルルイエ", " "]},
        {**CTHULHU, "title": 3},
        {**CTHULHU, "kind": ["place"]},
    ])
    with pytest.raises(DataError) as error:
        read_set(bad)
    assert str(error.value).splitlines() == [
        f"{bad}:2: field 'answers': expected a non-empty list of non-empty strings",
        f"{bad}:3: field 'answers': expected a non-empty list of non-empty strings",
        f"{bad}:4: field 'answers': expected a non-empty list of non-empty strings",
        f"{bad}:5: field 'title': expected a string, got int",
        f"{bad}:6: field 'kind': expected a string, got list",
    ]
    missing = write_jsonl(tmp_path / "missing.jsonl", [CTHULHU, {"instruction": "q"}])
    with pytest.raises(DataError, match=f"{missing}:2: field 'response': missing"):
        read_set(missing)


def test_read_source_texts(tmp_path):
    path = write_jsonl(tmp_path / "source_texts.jsonl", [
        {"title": "ルルイエ", "text": "前半。", "split": "train"},
        {"title": "ダゴン", "text": None},
        {"title": "ルルイエ", "text": "後半。"},
    ])
    assert read_source_texts(path) == {"ルルイエ": "前半。\n後半。"}
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"title": "x", "text": "y"}, {"text": "no title"}])
    with pytest.raises(DataError, match=f"{bad}:2: field 'title': missing or not a string"):
        read_source_texts(bad)


def test_cached_source_texts_reads_the_crawlers_cache(tmp_path):
    cache = Cache(tmp_path / "wiki", "https://ja.wikipedia.org/w/api.php")
    cache.save("pages", "ルルイエ", {"title": "ルルイエ", "text": "== 概要 ==\nルルイエは南太平洋の都市。", "revid": 1})
    cache.save("pages", "ク・リトル・リトル", {"redirect": "ルルイエ"})  # another name of the same page
    cache.save("pages", "空のページ", {"title": "空のページ", "text": None})
    cache.save("categories", "Category:クトゥルフ神話", {"members": [], "complete": True})
    (cache.path("pages", "壊れた").parent / "broken.json").write_text("{not json", encoding="utf-8")
    other_site = Cache(tmp_path / "wiki", "http://127.0.0.1:8000/w/api.php")
    other_site.save("pages", "ダゴン", {"title": "ダゴン", "text": "ダゴンは神。"})
    assert cached_source_texts(tmp_path / "wiki") == {
        "ルルイエ": "== 概要 ==\nルルイエは南太平洋の都市。",
        "ク・リトル・リトル": "== 概要 ==\nルルイエは南太平洋の都市。",
        "ダゴン": "ダゴンは神。",
    }
    assert cached_source_texts(tmp_path / "nothing") == {}


def test_quiz_problems_are_rows_whose_answers_are_not_in_their_article():
    texts = {"ルルイエ": "ルルイエは南太平洋に沈んだ都市。千九百二十五年に書かれた。", "ダゴン": "ダゴンは深きものどもの神。"}
    rows = [
        {"instruction": "ルルイエはどの海に？", "response": "太平洋。", "answers": ["太平洋"], "title": "ルルイエ"},
        {"instruction": "書かれた年は？", "response": "1925年。", "answers": ["1925"], "title": "ルルイエ"},
        {"instruction": "ルルイエはどの海に？", "response": "大西洋。", "answers": ["大西洋"], "title": "ルルイエ"},
        {"instruction": "ダゴンの父は？", "response": "不明。", "answers": ["オールド・ワン"], "title": "ダゴン"},
        {"instruction": "ハスターとは？", "response": "神。", "answers": ["風"], "title": "ハスター"},  # unchecked
        {"instruction": "ダゴンとは？", "response": "神。", "title": "ダゴン"},  # no accepted answers
    ]
    problems = quiz_problems(rows, Corpus(texts))
    assert problems == [rows[2], rows[3]]
    assert problems[0] is rows[2]  # the rows themselves, to leave out
    assert quiz_problems(rows, Corpus()) == []


def test_answers_are_matched_to_their_sets_rows_by_question(tmp_path):
    sets = {
        "quiz": [{"instruction": "ルルイエとは？"}, {"instruction": "ダゴンとは？"}, {"instruction": "ルルイエとは？"}],
        "unseen": [{"instruction": "ハスターとは？"}],
    }
    path = write_jsonl(tmp_path / "answers.jsonl", [
        {"set": "quiz", "instruction": "ルルイエとは？", "answer": "一つ目"},
        {"set": "quiz", "instruction": " ルルイエとは ? ", "answer": "二つ目"},  # width and spaces do not matter
        {"set": "unseen", "instruction": "ハスターとは？", "answer": ""},
        {"set": "known", "instruction": "何か？", "answer": "x"},
    ])
    matched, ignored, unmatched = match_answers(path, read_answers(path), sets)
    assert matched == {"quiz": {0: "一つ目", 2: "二つ目"}, "unseen": {0: ""}}
    assert ignored == {"known": 1} and unmatched == []


def test_answers_that_match_nothing_are_left_out_and_named(tmp_path):
    """One stray line must not stop a whole file from being scored."""
    sets = {"quiz": [{"instruction": "ルルイエとは？"}]}
    path = write_jsonl(tmp_path / "answers.jsonl", [
        {"set": "quiz", "instruction": "ルルイエとは？", "answer": "a"},
        {"set": "quiz", "instruction": "ルルイエとは？", "answer": "b"},
        {"set": "quiz", "instruction": "ハスターとは？", "answer": "c"},
    ])
    matched, _, unmatched = match_answers(path, read_answers(path), sets)
    assert matched == {"quiz": {0: "a"}}
    assert unmatched == [
        f"{path}:2: field 'instruction': one answer too many to this question of set 'quiz'",
        f"{path}:3: field 'instruction': not a question of set 'quiz'",
    ]
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"set": "quiz", "instruction": "q"}, {"instruction": "q", "answer": "a"}])
    with pytest.raises(DataError) as error:
        read_answers(bad)
    assert str(error.value).splitlines() == [
        f"{bad}:1: field 'answer': missing or not a string",
        f"{bad}:2: field 'set': missing, empty or not a string",
    ]


def test_default_max_new_tokens_follows_the_longest_reference(tokenizer_dir):
    fmt = MistralFormat.from_pretrained(str(tokenizer_dir))
    rows = [{"response": "ルルイエです。"}, {"response": "クトゥルフは南太平洋の海底に沈んだ都市ルルイエで眠っています。" * 20}]
    longest = len(fmt.encode_text(rows[1]["response"]))
    assert longest > 200
    assert default_max_new_tokens(rows, fmt) == int(longest * 1.25) + 16
    assert default_max_new_tokens(rows[:1], fmt) == int(len(fmt.encode_text("ルルイエです。")) * 1.25) + 16


def test_a_latin_accepted_form_inside_a_japanese_answer_is_correct():
    row = {"instruction": "プリンが著した魔道書は？", "response": "『妖蛆の秘密』です。", "answers": ["De Vermis Mysteriis", "妖蛆の秘密"]}
    assert score_item(row, "De Vermis Mysteriisです。", True)["correct"] is True
    assert score_item(row, "De Vermis Mysteriis", True)["correct"] is True
    assert score_item(row, "It is De Vermis Mysteriis, written by Ludvig Prinn.", True)["correct"] is False


def test_report_figure_is_readable_on_its_own():
    """The legend beside the bars, not over them; "n/a" for what does not apply, one label per bar; a 0 drawn."""
    from cthulhu_sft.report import MEASURES, report_figure

    results = [{"set": "quiz", "model": model, "temperature": 0.0, "n": 2, "empty": 0,
                **{key: 0.0 for key, _, _ in MEASURES}, "accuracy": 0.5, "accuracy_ci": [0.1, 0.9], "eos_stop_rate": None}
               for model in ("base", "adapter", "another")]
    figure = report_figure({"sets": {"quiz": {"scored": 2}}, "results": results})
    figure.canvas.draw()
    [axis] = figure.axes
    renderer = figure.canvas.get_renderer()
    legend, panel = axis.get_legend().get_window_extent(renderer), axis.get_window_extent(renderer)
    assert legend.x0 >= panel.x1  # beside the panel
    texts = [text.get_text() for text in axis.texts]
    assert len(texts) == 3 * len(MEASURES) and texts.count("n/a") == 3
    na = [text for text in axis.texts if text.get_text() == "n/a"]
    assert all(text.get_rotation() == 90 for text in na)  # upright labels do not run into each other
    zero_bars = 3 * (len(MEASURES) - 2)
    assert len(axis.lines) >= zero_bars  # a visible stub for each 0 (the error bars add their own lines)
    import matplotlib.pyplot as plt

    plt.close(figure)


def test_accepted_answers_take_every_name_of_their_article(tmp_path):
    """An accepted answer that is an article's title (without its qualifier) or alias accepts all its names: the
    aliases of source_texts.jsonl and of the crawl cache's pages, and the titles that redirect to it."""
    from cthulhu_sft.sets import article_corpus

    cache = Cache(tmp_path / "cache" / "wiki", "https://ja.wikipedia.org/w/api.php")
    cache.save("pages", "クトゥルフ", {"title": "クトゥルフ", "text": "クトゥルフは眠る。", "aliases": ["Cthulhu"]})
    cache.save("pages", "ク・リトル・リトル", {"redirect": "クトゥルフ"})
    sources = write_jsonl(tmp_path / "sources.jsonl", [
        {"title": "クトゥルフ", "text": "クトゥルフは眠る。", "aliases": ["クトゥルー"]},
        {"title": "北極星 (小説)", "text": "『北極星』。", "aliases": ["ポラリス"]},
    ])
    corpus = article_corpus(str(sources), str(tmp_path / "cache"))
    assert set(corpus.accepted(["クトゥルフ"])) == {"クトゥルフ", "Cthulhu", "ク・リトル・リトル", "クトゥルー"}
    assert set(corpus.accepted(["ポラリス"])) == {"ポラリス", "北極星"}
    assert corpus.accepted(["ダゴン"]) == ["ダゴン"]
    row = {"instruction": "ルルイエに眠るのは？", "response": "クトゥルフ。", "answers": ["クトゥルフ"], "title": "クトゥルフ"}
    assert score_item(row, "ク・リトル・リトルです。", True, corpus)["grade"] == "correct"
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"title": "x", "text": "y", "aliases": "z"}])
    with pytest.raises(DataError, match=f"{bad}:1: field 'aliases': expected a list of strings"):
        read_source_texts(bad)


def test_batches_are_sized_to_the_free_gpu_memory():
    """Mistral-7B's shape: 32 layers, 8 key/value heads of 128 dims, 16-bit cache: 128 KiB per token."""
    from types import SimpleNamespace

    from cthulhu_sft.evaluation import fitting_batch_size

    mistral = SimpleNamespace(num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                              hidden_size=4096, vocab_size=32000)
    per_sequence = 300 * 128 * 1024 + 4 * 32000
    assert fitting_batch_size(40 * 2**30, mistral, 300) == 64  # an A100 after training: the cap
    assert fitting_batch_size(2**30, mistral, 300) == int(0.4 * 2**30 // per_sequence) // 8 * 8 == 8
    assert fitting_batch_size(2**27, mistral, 300) == 1  # never 0


def test_the_cards_reproduce_command_asks_open_book_only_when_the_check_did():
    from cthulhu_sft.run_record import knowledge_view

    result = aggregate([score_item(CTHULHU, "ルルイエです。", stopped=True, corpus=CORPUS)])
    opened = aggregate([open_item(CTHULHU, "ルルイエです[1]。", [Hit("クトゥルフ", "", SOURCE, 1, "")])])
    closed_only = {"status": "done", "repetition_penalty": 1.0, "batch_size": 8, "source_texts": "s.jsonl",
                   "articles_with_text": 1, "open_book": None, "open_book_skipped": None,
                   "sets": [{"name": "quiz", "path": "q.jsonl", "results": {"base": result, "adapter": result}}]}
    view = knowledge_view(closed_only, {"model_name_or_path": "base-model"})
    assert "--open_book" not in view["reproduce"] and not view["sets"][0]["open_rows"]
    assert [(row["model"], row["book"]) for row in view["sets"][0]["rows"]] == [("base", "closed"), ("adapter", "closed")]
    skipped = knowledge_view({**closed_only, "open_book_skipped": "no data/source_texts.jsonl to retrieve from"})
    assert "Not asked open-book: no data/source_texts.jsonl to retrieve from." in skipped["notes"]
    both = {**closed_only, "open_book": {"top_k": 2},
            "sets": [{**closed_only["sets"][0], "open_book_results": {"base": opened, "adapter": opened},
                      "retrieval": {"questions": 1, "recall@1": 1.0, "recall@3": 1.0, "recall@5": 1.0}}]}
    view = knowledge_view(both, {"model_name_or_path": "base-model"})
    assert view["reproduce"].endswith("--open_book --top_k 2 --sets quiz=q.jsonl")
    assert [(row["model"], row["book"]) for row in view["sets"][0]["rows"]] == [
        ("base", "closed"), ("base", "open"), ("adapter", "closed"), ("adapter", "open")]
    assert view["sets"][0]["open_rows"][0]["citation_accuracy"] == "100.0 %"
    assert view["sets"][0]["retrieval"].startswith("recall@1 1.000, recall@3 1.000")


@pytest.mark.slow
def test_the_knowledge_check_asks_open_book_when_asked_and_the_corpus_has_text(tmp_path, monkeypatch, tiny_adapter_dir):
    from cthulhu_sft.inference import load_model
    from cthulhu_sft.run_record import knowledge_check

    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "source_texts.jsonl", [{"title": "クトゥルフ", "text": ""}])
    quiz = write_jsonl(tmp_path / "quiz.jsonl", [CTHULHU])
    model = load_model(None, str(tiny_adapter_dir))
    fmt = MistralFormat.from_pretrained(str(tiny_adapter_dir))
    record = knowledge_check(model, fmt, [str(quiz)], 1, 1.0, str(tmp_path), open_book=True)
    assert record["open_book"] is None and "no article has text to retrieve from" in record["open_book_skipped"]
    [entry] = record["sets"]
    assert entry["results"]["adapter"]["n"] == 1 and "open_book_results" not in entry
    # with text, knowledge_check_open_book false asks closed book only, and says nothing of open book
    write_jsonl(tmp_path / "data" / "source_texts.jsonl", [{"title": "クトゥルフ", "text": SOURCE}])
    record = knowledge_check(model, fmt, [str(quiz)], 1, 1.0, str(tmp_path), open_book=False)
    assert record["open_book"] is None and "open_book_skipped" not in record
    assert "open_book_results" not in record["sets"][0] and "retrieval" not in record["sets"][0]
    record = knowledge_check(model, fmt, [str(quiz)], 1, 1.0, str(tmp_path), open_book=True)
    assert record["open_book"] == {"top_k": 3} and record["sets"][0]["open_book_results"]["adapter"]["n"] == 1
