"""The answer measures on hand-worked Japanese examples (see cthulhu_sft/metrics.py for the definitions)."""

import random

import pytest

from cthulhu_sft.metrics import (
    eos_stop_rate,
    fact_recall,
    key_terms,
    lcs_length,
    rouge_l_f1,
    score,
    summarize,
    unsupported_term_rate,
    unsupported_terms,
)

REFERENCE = "クトゥルフは、H・P・ラヴクラフトが1926年に発表した『クトゥルフの呼び声』に登場する神性である。"


@pytest.mark.parametrize(
    "text,terms",
    [
        (REFERENCE, {"クトゥルフ", "ラヴクラフト", "1926"}),
        # Full-width Latin and digits, half-width katakana: NFKC makes them one spelling; Latin is lower-cased.
        ("ＣＴＨＵＬＨＵと１９２６年のｸﾄｩﾙﾌ", {"cthulhu", "1926", "クトゥルフ"}),
        # Name separators end a katakana run, so both spellings of a name give the same parts.
        ("ヨグ＝ソトース", {"ヨグ", "ソトース"}),
        ("ヨグ・ソトース", {"ヨグ", "ソトース"}),
        ("ハワード・フィリップス・ラヴクラフト", {"ハワード", "フィリップス", "ラヴクラフト"}),
        # The long-vowel mark belongs to the name, but cannot start one; one katakana letter is no term.
        ("ナイアーラトテップ", {"ナイアーラトテップ"}),
        ("ーーア、イ", set()),
        # Latin: apostrophes inside words, initials and function words dropped.
        ("R’lyeh と The Call of Cthulhu（H. P. Lovecraft）", {"r'lyeh", "call", "cthulhu", "lovecraft"}),
        # Numbers: thousands commas removed, decimals kept, a list of years split.
        ("1,000人、3.5倍、1926,1927年", {"1000", "3.5", "1926", "1927"}),
        ("①と第3巻", {"1", "3"}),
        # Kanji and hiragana words are not key terms.
        ("深きものどもが崇める存在。", set()),
        ("", set()),
    ],
)
def test_key_terms(text, terms):
    assert key_terms(text) == terms


def test_rouge_l_identical_and_empty():
    assert rouge_l_f1(REFERENCE, REFERENCE) == 1.0
    assert rouge_l_f1("", REFERENCE) == 0.0
    assert rouge_l_f1(REFERENCE, "") == 0.0
    assert rouge_l_f1("", "") == 1.0
    assert rouge_l_f1("   \n", "") == 1.0  # only whitespace is empty


def test_rouge_l_hand_worked():
    # "クトゥルフ神話" (7 characters) in "クトゥルフの神話" (8): LCS 7, F1 = 2·7 / (7 + 8).
    assert rouge_l_f1("クトゥルフ神話", "クトゥルフの神話") == pytest.approx(14 / 15)
    # "ダゴンは神" (5) in "ダゴンは深きものの神" (10): LCS 5, F1 = 10 / 15.
    assert rouge_l_f1("ダゴンは神", "ダゴンは深きものの神") == pytest.approx(2 / 3)
    # Nothing in common.
    assert rouge_l_f1("あいう", "かきく") == 0.0


def test_rouge_l_ignores_whitespace_width_and_case():
    assert rouge_l_f1("クトゥルフ 神話\n", "クトゥルフ神話") == 1.0
    assert rouge_l_f1("ＡＢＣ１２３", "abc123") == 1.0
    assert rouge_l_f1("ｸﾄｩﾙﾌ", "クトゥルフ") == 1.0


def naive_lcs(a: str, b: str) -> int:
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def test_lcs_length_equals_dynamic_programming():
    assert lcs_length("abcbdab", "bdcaba") == 4  # the textbook example
    generator = random.Random(0)
    alphabet = "クトゥルフの神話ab。"
    for _ in range(300):
        a = "".join(generator.choices(alphabet, k=generator.randint(0, 70)))
        b = "".join(generator.choices(alphabet, k=generator.randint(0, 70)))
        assert lcs_length(a, b) == naive_lcs(a, b) == lcs_length(b, a)


def test_fact_recall_hand_worked():
    # Reference terms: クトゥルフ, ラヴクラフト, 1926. The answer has クトゥルフ and a wrong year 1928: 1 of 3.
    assert fact_recall("クトゥルフは1928年に作られた。", REFERENCE) == pytest.approx(1 / 3)
    assert fact_recall("ラヴクラフトによるクトゥルフ、1926年。", REFERENCE) == 1.0


def test_fact_recall_identical_empty_and_undefined():
    assert fact_recall(REFERENCE, REFERENCE) == 1.0
    assert fact_recall("", REFERENCE) == 0.0
    assert fact_recall("クトゥルフ", "深きものどもが崇める存在。") is None  # the reference has no key terms


def test_unsupported_terms_hand_worked():
    answer = "クトゥルフは1928年にダーレスが創造した。"  # terms: クトゥルフ, 1928, ダーレス
    # Against the reference alone, 1928 and ダーレス are unsupported: 2 of 3.
    assert unsupported_terms(answer, REFERENCE) == {"1928", "ダーレス"}
    assert unsupported_term_rate(answer, REFERENCE) == pytest.approx(2 / 3)
    # The source article names オーガスト・ダーレス, so only the year is made up: 1 of 3.
    source = "オーガスト・ダーレスはクトゥルフ神話を体系化した。"
    assert unsupported_terms(answer, REFERENCE, source) == {"1928"}
    assert unsupported_term_rate(answer, REFERENCE, source) == pytest.approx(1 / 3)


def test_unsupported_identical_and_empty():
    assert unsupported_term_rate(REFERENCE, REFERENCE) == 0.0
    assert unsupported_term_rate("", REFERENCE) is None  # nothing claimed: undefined, not 0
    assert unsupported_term_rate("深きものの神。", REFERENCE) is None


def test_eos_stop_rate():
    assert eos_stop_rate([True, False, True, True]) == 0.75
    assert eos_stop_rate([False, False]) == 0.0
    assert eos_stop_rate([]) is None


def test_score_and_pooled_summary():
    source = "オーガスト・ダーレスはクトゥルフ神話を体系化した。"
    first = score("クトゥルフは1928年にダーレスが創造した。", REFERENCE, source)
    assert first == {
        "rouge_l_f1": pytest.approx(rouge_l_f1("クトゥルフは1928年にダーレスが創造した。", REFERENCE)),
        "fact_recall": pytest.approx(1 / 3),
        "unsupported_term_rate": pytest.approx(1 / 3),
        "reference_terms": 3,
        "recalled_terms": 1,
        "answer_terms": 3,
        "unsupported_terms": ["1928"],
    }
    second = score("", "ルルイエ。")  # empty answer: recall 0 of 1, no answer terms
    assert second["fact_recall"] == 0.0 and second["unsupported_term_rate"] is None and second["rouge_l_f1"] == 0.0
    third = score("ルルイエ", "ルルイエ")
    summary = summarize([first, second, third], [True, False, True])
    # Pooled: recalled 1 + 0 + 1 of 3 + 1 + 1 reference terms; unsupported 1 + 0 + 0 of 3 + 0 + 1 answer terms.
    assert summary["fact_recall"] == pytest.approx(2 / 5)
    assert summary["unsupported_term_rate"] == pytest.approx(1 / 4)
    assert summary["rouge_l_f1"] == pytest.approx((first["rouge_l_f1"] + 0.0 + 1.0) / 3)
    assert summary["eos_stop_rate"] == pytest.approx(2 / 3)
    assert summary["answers"] == 3


def test_summary_of_term_free_run_is_undefined_not_zero():
    summary = summarize([score("", "深きもの。")], [False])
    assert summary["fact_recall"] is None and summary["unsupported_term_rate"] is None
    assert summary["rouge_l_f1"] == 0.0 and summary["eos_stop_rate"] == 0.0
