"""The per-answer measures on hand-worked Japanese examples (see cthulhu_sft/metrics.py for the definitions)."""

import random
import time

import pytest

from cthulhu_sft.metrics import (
    answer_is_correct,
    claimed_terms,
    fact_recall,
    is_abstention,
    is_japanese,
    key_terms,
    lcs_length,
    normalize,
    rouge_l_f1,
    unsupported_terms,
)

REFERENCE = "クトゥルフは、H・P・ラヴクラフトが1926年に発表した『クトゥルフの呼び声』に登場する神性である。"
ENGLISH_ANSWER = "Cthulhu is a fictional cosmic entity created by H. P. Lovecraft, sleeping in R'lyeh."


def test_normalize():
    assert normalize("ＣＴＨＵＬＨＵ ｸﾄｩﾙﾌ R’lyeh") == "cthulhu クトゥルフ r'lyeh"


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
        # Latin: apostrophes inside words, a possessive 's, initials and function words dropped.
        ("R’lyeh と The Call of Cthulhu（H. P. Lovecraft's）", {"r'lyeh", "call", "cthulhu", "lovecraft"}),
        # Numbers: thousands commas removed, decimals kept, a list of years split.
        ("1,000人、3.5倍、1926,1927年", {"1000", "3.5", "1926", "1927"}),
        ("①と第3巻", {"1", "3"}),
        # Numbers in kanji, as digits: counted (千九百二十八, 一九二八) or positional, centuries, ten-thousands.
        ("千九百二十八年に発表された", {"1928"}),
        ("一九二八年", {"1928"}),
        ("十九世紀の作家", {"19"}),
        ("三万部が売れた", {"30000"}),
        # A one-kanji numeral is mostly an everyday phrase; 一般 and 唯一 are words, not numbers.
        ("代表作の一つで、三部作の一般的な唯一の例", set()),
        # Kanji proper nouns (SudachiPy): places and people, a person's family and given name as one term.
        ("南極の氷の下の都市で眠っている", {"南極"}),
        ("荒俣宏と大瀧啓裕が翻訳した", {"荒俣宏", "大瀧啓裕"}),
        # Sudachi cuts 太平洋 alone into 太平 + 洋 (suffix); the place name takes its suffix back.
        ("太平洋の底", {"太平洋"}),
        ("南太平洋の底", {"太平洋"}),
        # A katakana proper noun with one kanji (州) adds nothing to its katakana term.
        ("マサチューセッツ州アーカム", {"マサチューセッツ", "アーカム"}),
        # Kanji and hiragana common words are not key terms.
        ("深きものどもが崇める存在。", set()),
        ("架空の神性を描いた小説の作家", set()),
        ("", set()),
    ],
)
def test_key_terms(text, terms):
    assert key_terms(text) == terms


def test_key_terms_of_a_text_longer_than_sudachis_limit():
    """Sudachi refuses more than 49,149 bytes at once; a long article is read in pieces, to its end."""
    text = "クトゥルフは深い海の底で眠っている。\n" * 5000 + "最後に南極が出てくる。"
    assert len(text.encode("utf-8")) > 49_149
    assert key_terms(text) == {"クトゥルフ", "南極"}
    long_line = "海の底で眠っている。" * 6000 + "荒俣宏"  # no line break to cut at
    assert key_terms(long_line) == {"荒俣宏"}


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
    # The year written in kanji is the same number.
    assert fact_recall("ラヴクラフトが千九百二十六年に書いたクトゥルフ", REFERENCE) == 1.0


def test_fact_recall_identical_empty_and_undefined():
    assert fact_recall(REFERENCE, REFERENCE) == 1.0
    assert fact_recall("", REFERENCE) == 0.0
    assert fact_recall("クトゥルフ", "深きものどもが崇める存在。") is None  # the reference has no key terms


def test_unsupported_terms_hand_worked():
    answer = "クトゥルフは1928年にダーレスが創造した。"  # terms: クトゥルフ, 1928, ダーレス
    assert unsupported_terms(answer, REFERENCE) == {"1928", "ダーレス"}
    # A second support text (the source article) names オーガスト・ダーレス, so only the year is made up.
    source = "オーガスト・ダーレスはクトゥルフ神話を体系化した。"
    assert unsupported_terms(answer, REFERENCE, source) == {"1928"}
    assert unsupported_terms(answer) == {"クトゥルフ", "1928", "ダーレス"}  # nothing supports anything


def test_made_up_kanji_place_is_unsupported():
    """The review's first case: 南極 where the source says 太平洋 used to score an unsupported-term rate of 0."""
    source = "クトゥルフは南太平洋の海底に沈んだ都市ルルイエで眠っている。"
    assert unsupported_terms("クトゥルフは南極の氷の下の都市で眠っている。", source) == {"南極"}
    # The true place, however Sudachi segments it in either text, is supported.
    assert unsupported_terms("クトゥルフは太平洋の底で眠っている。", source) == set()
    assert unsupported_terms("南太平洋に沈んだ都市", "太平洋に沈んだ都市") == set()


def test_support_by_the_texts_literal_content():
    # Name separators and spelling variants of one katakana name do not make a term unsupported.
    assert unsupported_terms("ヨグソトースの門", "ヨグ＝ソトースは門である") == set()
    assert unsupported_terms("ラブクラフトの作品", "ラヴクラフトの小説") == set()
    assert unsupported_terms("ナイアラトテップ", "ナイアーラトテップ") == set()
    # A family name alone is supported by the full name, and the full name by the name written with a space.
    assert unsupported_terms("荒俣の翻訳", "荒俣宏が翻訳した") == set()
    assert unsupported_terms("荒俣宏の翻訳", "荒俣 宏が翻訳した") == set()


def test_numbers_compare_as_whole_numbers():
    assert unsupported_terms("19世紀の作家", "1926年に書かれた") == {"19"}
    assert unsupported_terms("1926年", "19261年") == {"1926"}
    # A year in digits is supported by the same year in kanji, and the other way round.
    assert unsupported_terms("1928年に発表", "千九百二十八年の作品") == set()
    assert unsupported_terms("一九二八年に発表", "1928年の作品") == set()
    assert unsupported_terms("十九世紀", "1926年") == {"19"}


def test_english_answers_latin_words_are_not_claims():
    """The review's second case: a correct answer in English scored 0.875 on the words of its grammar."""
    assert not is_japanese(ENGLISH_ANSWER)
    assert {"entity", "created", "sleeping"} <= key_terms(ENGLISH_ANSWER)  # still its key terms ...
    assert claimed_terms(ENGLISH_ANSWER) == set()  # ... but not claims of invented facts
    assert claimed_terms("Cthulhu sleeps since 1928.") == {"1928"}  # numbers and names in kana still count
    assert claimed_terms("クトゥルフは1928年にcosmic horrorとして書かれた。") == {"クトゥルフ", "1928", "cosmic", "horror"}


@pytest.mark.parametrize(
    "answer,accepted,correct",
    [
        ("H・P・ラヴクラフトが書きました。", ["ラヴクラフト"], True),
        ("ラブクラフトです。", ["ラヴクラフト"], True),  # ヴ / ブ
        ("ＷＥＩＲＤ　ＴＡＬＥＳ誌です", ["Weird Tales"], True),  # NFKC, case, spaces
        ("『ウィアードテイルズ』誌", ["ウィアード・テイルズ"], True),  # separators and brackets
        ("ヨグ・ソトースです", ["ヨグ＝ソトース"], True),
        ("Yog-Sothoth", ["yog sothoth"], True),
        ("ナイアラトテップ", ["ナイアーラトテップ"], True),  # long-vowel mark
        ("千九百二十八年に発表された", ["1928"], True),  # kanji numerals
        ("1928年です", ["千九百二十八"], True),
        ("1926年", ["19"], False),  # a number does not match the start of a longer one
        ("19260", ["1926"], False),
        ("第1926号", ["1926"], True),
        ("クトゥルフです", ["ダゴン", "ハイドラ"], False),
        ("", ["ダゴン"], False),
        ("ダゴンです", ["", "ダゴン"], True),  # an empty form matches nothing, the next one is tried
    ],
)
def test_answer_is_correct(answer, accepted, correct):
    assert answer_is_correct(answer, accepted) is correct


@pytest.mark.parametrize(
    "answer,abstains",
    [
        ("わかりません。", True),
        ("分かりません", True),
        ("存じません。", True),
        ("申し訳ありませんが、その作品についての情報がありません。", True),
        ("申し訳ありません。私はその作品について情報を持っていません。", True),  # apology first
        ("その質問にはお答えできません。", True),
        ("存じ上げません。", True),
        ("そのご質問にはお答えいたしかねます。", True),
        ("該当する情報はございません。", True),
        ("I don't know.", True),
        ("I'm sorry, I do not have information about that.", True),
        ("知らないです。", True),
        ("よく知らないんです。", True),
        ("なんとも言えません。", True),
        ("一概には言えません。", True),
        ("断定はできません。", True),
        ("答えようがありません。", True),
        ("わからんです。", True),
        ("私には答えられない質問です。", True),
        ("覚えていません。", True),
        ("ダゴンは人間の知らない太古の神です。", False),  # not knowing ascribed to others is a statement
        ("クトゥルフはルルイエで眠っています。", False),
        ("ルルイエは太平洋にあります。その正確な位置を人間は知りません。", False),  # not in the first sentence
        ("", False),
    ],
)
def test_is_abstention(answer, abstains):
    assert is_abstention(answer) is abstains


@pytest.mark.parametrize(
    "answer,japanese",
    [
        ("クトゥルフはルルイエで眠っている。", True),
        ("ラヴクラフト", True),
        ("1926年", True),
        ("1926", True),  # no letters: nothing in another language
        ("", True),
        ("ラヴクラフトの『The Call of Cthulhu』は1926年に書かれた。", True),  # a Japanese sentence quoting a title
        (ENGLISH_ANSWER, False),
        ("Cthulhu (クトゥルフ) was created by Lovecraft.", False),
        ("克苏鲁是洛夫克拉夫特创造的宇宙神祇之一", False),  # Chinese: kanji-like, no kana
        ("Weird Tales", False),
    ],
)
def test_is_japanese(answer, japanese):
    assert is_japanese(answer) is japanese


def test_thousands_of_answers_against_a_large_support_text_in_seconds():
    """The chat page checks each answer against all articles at once; an evaluation scores thousands of answers."""
    generator = random.Random(0)
    names = ["クトゥルフ", "ダゴン", "荒俣宏", "南極", "太平洋", "千九百二十八年", "アーカム"]
    support = "".join(f"{generator.choice(names)}は{i}年の記事に出てくる。\n" for i in range(40_000))  # about 1 MB
    answers = [f"{generator.choice(names)}と{generator.choice(names)}の話、その{i}。" for i in range(2000)]
    start = time.perf_counter()
    for answer in answers:
        unsupported_terms(answer, support)
    assert time.perf_counter() - start < 60  # a few seconds on a shared CPU; tokenizing the corpus per call is hours
    assert unsupported_terms("南極と火星", support) == {"火星"}


@pytest.mark.parametrize(
    "text,terms",
    [
        ("霧ヶ浜に眠る神です。", {"霧ヶ浜"}),  # a made-up place that no dictionary knows
        ("『深淵の王』に記されている。", {"深淵の王"}),
        ("「ネクロノミコン写本」と呼ばれる。", {"ネクロノミコン写本"}),
        ("「わかりません」と言った。", set()),  # a quoted phrase in hiragana is no title
        ("星の智慧派教団の本部。", {"智慧派教団"}),
        ("沢山の人が確信が持てないと言った。", set()),  # everyday words with a place-like kanji are not names
    ],
)
def test_named_terms_catch_titles_and_kanji_place_names(text, terms):
    from cthulhu_sft.metrics import named_terms

    assert named_terms(text) == terms


def test_a_support_index_supports_what_any_of_its_texts_states():
    from cthulhu_sft.metrics import SupportIndex, unsupported

    index = SupportIndex(["ラヴクラフトは1890年に生まれた。", "『クトゥルフの呼び声』は昭和3年に発表された。"])
    assert index.supports("ラブクラフト") and index.supports("1890") and index.supports("1928")  # 昭和3年 = 1928
    assert not index.supports("1927") and not index.supports("霧ヶ浜")
    assert unsupported({"1890", "霧ヶ浜", "ダゴン"}, "ダゴンは神。", index=index) == {"霧ヶ浜"}
