"""From article text to passages a user can ask about: cleaning, sections, questions, parts, cloze probes."""

import random

import pytest
from mediawiki_server import cthulhu_wiki

from cthulhu_sft.examples import (
    MAX_PHRASINGS,
    BuildStats,
    build_passages,
    clean_text,
    cloze,
    cloze_probes,
    example_length,
    fit_passages,
    kind_of,
    named_terms,
    normalize_question,
    pack,
    parse_sections,
    split_sentences,
    subjects_of,
)
from cthulhu_sft.format import MistralFormat
from cthulhu_sft.splits import alias_groups


@pytest.fixture(scope="session")
def fmt(tokenizer_dir) -> MistralFormat:
    return MistralFormat.from_pretrained(str(tokenizer_dir))


def article(*sections: tuple[str, str], lead: str = "") -> str:
    return lead + "".join(f"\n\n\n{'=' * (heading.count('>') + 2)} {heading.split('>')[-1].strip()} "
                          f"{'=' * (heading.count('>') + 2)}\n{text}" for heading, text in sections)


# ---------------------------------------------------------------------------------------------------
# Text


def test_reference_marks_footnotes_and_note_sections_are_removed():
    text = cthulhu_wiki().pages["クトゥルフ"].extract
    sections, dropped = parse_sections(clean_text(text))
    assert [section.path for section in sections] == [(), ("概要",), ("登場作品", "小説")]  # the empty 登場作品 adds none
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


def test_table_rows_left_in_plain_text_are_removed():
    text = clean_text("本文の文である。\n| 名前 || クトゥルフ\n! 見出し\n名前\t種族\t初出\n次の文である。")
    assert text == "本文の文である。\n次の文である。"


def test_sentences_split_at_japanese_ends_closing_brackets_and_line_breaks():
    text = "彼は「いあ！　いあ！」と叫んだ。本当か？！」\n一覧の行\n\n最後の文"
    units = split_sentences(text)
    assert "".join(units) == text
    assert units == ["彼は「いあ！　いあ！」と叫んだ。", "本当か？！」", "\n", "一覧の行\n\n", "最後の文"]


def test_names_are_kept_whole_and_years_carry_their_counter():
    text = "ハワード・フィリップス・ラヴクラフトは1928年に、全3巻の『The Call of Cthulhu』を書いた。"
    assert named_terms(text) == ["ハワード・フィリップス・ラヴクラフト", "1928年", "Call", "Cthulhu"]


# ---------------------------------------------------------------------------------------------------
# Questions a user can ask


def questions_of(passages) -> list[str]:
    return [question for passage in passages for question in passage.questions]


def test_lead_and_overview_section_never_share_a_question(fmt):
    text = article(("概要", "ダゴンは海に住む巨大な存在として描かれる。"), lead="ダゴンは、深きものどもに崇拝される存在である。")
    for seed in range(20):
        passages, _ = build_passages("ダゴン (クトゥルフ神話)", text, fmt, 256, phrasings=4, seed=seed)
        lead, overview = passages
        assert not {normalize_question(q) for q in lead.questions} & {normalize_question(q) for q in overview.questions}
        assert all("概要" in question for question in overview.questions)


def test_an_overview_section_without_a_lead_is_asked_as_the_overview(fmt):
    passages, _ = build_passages("ハスター", article(("概要", "ハスターは風に関係づけられる神格である。")), fmt, 256, 2, seed=0)
    assert passages[0].section == "" and "概要" not in "".join(passages[0].questions)


def test_questions_name_the_subject_without_disambiguation_and_rows_keep_the_title(fmt):
    passages, _ = build_passages("ダゴン (クトゥルフ神話)", "ダゴンは、深きものどもに崇拝される存在である。", fmt, 256, 2, seed=0)
    assert passages[0].title == "ダゴン (クトゥルフ神話)"
    for question in passages[0].questions:
        assert question.startswith("ダゴン") and "クトゥルフ神話" not in question and "（" not in question


def test_two_titles_with_the_same_subject_keep_their_disambiguation():
    subjects = subjects_of(["ダゴン (クトゥルフ神話)", "ダゴン (小説)", "ルルイエ (架空の都市)"])
    assert subjects == {"ダゴン (クトゥルフ神話)": "ダゴン（クトゥルフ神話）", "ダゴン (小説)": "ダゴン（小説）",
                        "ルルイエ (架空の都市)": "ルルイエ"}


def test_a_title_that_is_a_phrase_is_quoted_in_questions(fmt):
    passages, _ = build_passages("銀の鍵の門を越えて", "銀の鍵の門を越えてには、門の向こうが描かれるとされる。", fmt, 256, 2, seed=0)
    assert all(question.startswith("「銀の鍵の門を越えて」") for question in passages[0].questions)


# What an article's lead says it is about, and how a user asks about it.
KINDS = [
    ("オーガスト・ダーレス（August Derleth、1909年2月24日 - 1971年7月4日）は、アメリカ合衆国の小説家、編集者。", "person"),
    ("ラヴクラフトは、アメリカの怪奇小説作家である。", "person"),
    ("ロバート・ブロックは、1917年にシカゴで生まれた。", "person"),
    ("狂気の山脈にては、南極探検を描いた長編小説である。", "work"),
    ("ダゴンは、1919年に執筆された短編。", "work"),
    ("クトゥルフの呼び声は、1928年にウィアード・テイルズ誌で発表された。", "work"),
    ("クトゥルフ（Cthulhu）は、怪奇作家が創作した架空の神格である。", "thing"),  # 作家 is not what it is
    ("ネクロノミコンは、1923年に発表された短編に登場する架空の魔道書である。", "thing"),
    ("ウィアード・テイルズ（Weird Tales、1923年 - 1954年）は、アメリカのパルプ雑誌。", "thing"),  # years, not a life
    ("ツァトゥグァは、アザトースの系譜から生まれたとされる神格である。", "thing"),  # born, but no year: a god's origin
    ("ハーバート・ウェストは、ラヴクラフトの作品に登場する架空の人物。", "person"),
]


@pytest.mark.parametrize("lead, kind", KINDS)
def test_a_lead_says_whether_its_subject_is_a_person_a_work_or_a_thing(lead, kind):
    assert kind_of(lead) == kind


def test_people_are_asked_as_people_works_as_works_and_headings_are_never_quoted(fmt):
    person = "オーガスト・ダーレス（August Derleth、1909年2月24日 - 1971年7月4日）は、アメリカ合衆国の小説家、編集者。"
    asked = set()
    for seed in range(10):
        passages, _ = build_passages("オーガスト・ダーレス", person, fmt, 256, phrasings=MAX_PHRASINGS, seed=seed)
        asked.update(passages[0].questions)
    assert "オーガスト・ダーレスは誰ですか？" in asked and "オーガスト・ダーレスはどのような人物ですか？" in asked
    assert not any("どのようなもの" in question or "とは何" in question for question in asked)

    work = article(("あらすじ", "語り手は寂れた港町を訪れ、町の秘密を知ることになる。"),
                   lead="インスマウスを覆う影は、H・P・ラヴクラフトの中編小説である。")
    asked = set()
    for seed in range(10):
        lead, plot = build_passages("インスマウスを覆う影", work, fmt, 256, phrasings=MAX_PHRASINGS, seed=seed)[0]
        assert lead.about == plot.about == "work"
        asked.update(lead.questions + plot.questions)
    assert "『インスマウスを覆う影』はどのような作品ですか？" in asked
    assert "『インスマウスを覆う影』のあらすじを教えてください。" in asked
    assert not any("「あらすじ」" in question or "「インスマウス" in question for question in asked)


def test_an_answer_never_opens_by_pointing_at_text_the_user_never_saw(fmt):
    text = article(("生涯", "彼は1909年に生まれた。幼い頃から怪奇小説を好んだ。"),
                   ("作品", "また、多くの短編をアーカム・ハウスから出版した。"),
                   ("交友", "彼らが出会ったのは1926年である。ダーレスはラヴクラフトと文通した。"),
                   ("邸宅", "この都市の館でダーレスは暮らした。"),
                   lead="オーガスト・ダーレスは、アメリカ合衆国の小説家である。")
    passages, stats = build_passages("オーガスト・ダーレス", text, fmt, 256, 2, seed=0)
    answers = {passage.section: passage.text for passage in passages}
    assert answers["生涯"] == "オーガスト・ダーレスは1909年に生まれた。幼い頃から怪奇小説を好んだ。"
    assert answers["作品"] == "多くの短編をアーカム・ハウスから出版した。"
    assert answers["交友"] == "ダーレスはラヴクラフトと文通した。"
    assert "邸宅" not in answers and stats.dropped_sentences == 2
    work = article(("評価", "本作は高く評価された。"), lead="ダゴンは、1919年に執筆された短編。")
    assert build_passages("ダゴン (小説)", work, fmt, 256, 1, seed=0)[0][1].text == "『ダゴン』は高く評価された。"


def test_nested_headings_read_as_a_sentence_says_them(fmt):
    text = article(("作品", "多くの作品がある。"), ("作品 > 短編「ダゴン」", "漂流した語り手が巨大な生き物を目撃する物語である。"),
                   lead="ダゴンは神格である。")
    passages, _ = build_passages("ダゴン (クトゥルフ神話)", text, fmt, 256, 4, seed=0)
    nested = passages[-1]
    assert nested.section == "作品のうち短編「ダゴン」"
    assert any(question == "ダゴンの作品のうち短編「ダゴン」について教えてください。" for question in nested.questions)
    assert not any("の「" in question.replace("短編「", "") or "」の「" in question for question in nested.questions)


def test_each_passage_gets_k_distinct_wordings_fixed_by_the_seed(fmt):
    text = cthulhu_wiki().pages["クトゥルフ"].extract
    first, _ = build_passages("クトゥルフ", text, fmt, 1024, phrasings=3, seed=1)
    again, _ = build_passages("クトゥルフ", text, fmt, 1024, phrasings=3, seed=1)
    assert first == again
    for passage in first:
        assert len(passage.questions) == 3 == len({normalize_question(q) for q in passage.questions})
        assert all(question.startswith("クトゥルフ") for question in passage.questions)
    assert len(set(questions_of(first))) == 9  # no question of the article twice
    wordings = {build_passages("クトゥルフ", text, fmt, 1024, 1, seed)[0][0].questions[0] for seed in range(12)}
    assert len(wordings) >= 3


# ---------------------------------------------------------------------------------------------------
# Long sections


NAMES = ["ネクロノミコン", "アルハズレッド", "ウィアード・テイルズ", "ミスカトニック", "インスマス", "ダンウィッチ",
         "アーカム", "ショゴス", "イハ＝ントレイ", "ナイアーラトテップ", "ヴーアミタドレス", "ツァトゥグァ"]


def long_section() -> str:
    sentences = []
    for index, name in enumerate(NAMES):
        sentences.append(f"{name}は、深海の神殿で{'古い儀式が' * (index % 3 + 1)}繰り返されたという記録に現れる。")
        if index % 3 == 1:
            sentences.append("彼らはその記録を秘密にした。")
        if index % 4 == 2:
            sentences.append("また、星辰の位置も記されている。")
    return "".join(sentences)


def test_a_long_section_becomes_parts_that_fit_each_asked_by_its_own_names(fmt):
    text = article(("歴史", long_section()), lead="ルルイエは架空の都市である。")
    passages, stats = build_passages("ルルイエ", text, fmt, 128, phrasings=2, seed=0)
    parts = [passage for passage in passages if passage.section == "歴史"]
    assert len(parts) > 3 and stats.split_sections == 1 and stats.dropped_sentences == 0
    for passage in parts:
        assert "その" not in "".join(passage.questions).replace("その記録", "")  # no （その2）
        for question in passage.questions:
            assert question.startswith("ルルイエの歴史") and example_length(fmt, question, passage.text) <= 128
    for passage in parts[1:]:
        names = [name for name in NAMES if name in passage.text]
        assert any(name in question for name in names for question in passage.questions), passage
        assert all(not any(name in question for name in NAMES if name not in passage.text) for question in passage.questions)
    rebuilt = "".join(passage.text for passage in parts)
    for name in NAMES:  # nothing lost but connectives
        assert name in rebuilt


def test_a_part_never_opens_by_pointing_back_at_text_it_does_not_hold(fmt):
    parts, dropped = pack(fmt, "ルルイエの歴史のうち、アブドゥル・アルハズレッドやネクロノミコンに関わる話を教えてください。",
                          long_section(), 128)
    assert len(parts) > 3 and dropped == 0
    for part in parts[1:]:
        assert not part.startswith(("彼ら", "また", "この", "その")), part
    assert sum("彼らはその記録を秘密にした。" in part for part in parts) == long_section().count("彼らは")


def test_a_quotation_too_long_to_keep_whole_is_split_at_its_own_sentence_ends(fmt):
    quote = "「" + "".join(f"第{i}の呪文を唱えよ。" for i in range(30)) + "」と書かれていた。"
    parts, dropped = pack(fmt, "質問です。", quote, 64)
    assert dropped == 0 and len(parts) > 2
    assert "".join(parts) == quote
    assert all(part.endswith(("。", "。」")) for part in parts)  # cut at its sentence ends only


def test_a_sentence_longer_than_the_budget_is_dropped_not_cut(fmt):
    giant = "これは" + "とても" * 80 + "長い文である。"
    parts, dropped = pack(fmt, "質問です。", f"短い文である。{giant}次の短い文である。", 64)
    assert dropped == 1 and parts == ["短い文である。次の短い文である。"]


def test_a_long_converted_answer_keeps_its_question_for_the_first_part(fmt):
    stats = BuildStats()
    answer = "".join(f"{name}の{index}番目の特徴が語られる。" for index, name in enumerate(NAMES))
    passages = fit_passages(fmt, 96, "ルルイエ", "ルルイエ", "", answer, ["ルルイエとは何ですか？"], "ルルイエ", True, 1,
                            "key", set(), stats)
    assert len(passages) > 2 and passages[0].questions == ["ルルイエとは何ですか？"]
    for passage in passages[1:]:
        [question] = passage.questions
        assert question.startswith("ルルイエ") and any(name in question and name in passage.text for name in NAMES)


# ---------------------------------------------------------------------------------------------------
# Cloze probes


def test_a_cloze_probe_blanks_a_year_and_is_answered_by_it():
    probe = cloze("クトゥルフ", "最初に登場したのは1928年に発表された短編である。", random.Random(0))
    assert probe == {"instruction": "クトゥルフについて、次の文の空欄に入る語を答えてください：『最初に登場したのは＿＿年に発表された短編である。』",
                     "response": "1928", "answers": ["1928"]}


def test_a_cloze_probe_never_blanks_the_subject_and_skips_sentences_without_a_term_or_pointing_back():
    rng = random.Random(0)
    probe = cloze("ルルイエ", "ルルイエは、南太平洋の海底に沈んだネクロノミコンの都市である。", rng)
    assert probe["response"] != "ルルイエ" and "ルルイエ" in probe["instruction"]
    assert cloze("ルルイエ", "この都市は1928年に浮上したとされている。", rng) is None
    assert cloze("ルルイエ", "都市は緑色の石で築かれているとされる。", rng) is None


def test_names_are_found_where_normalisation_changes_the_length():
    """NFKC turns "…" into "..." and ㈱ into (株): the names after them must still be found where they are written."""
    assert named_terms("「ふんぐるい…」とルルイエの信者は唱える。") == ["ルルイエ"]
    assert named_terms("㈱アーカム社が1928年に出した。") == ["アーカム", "1928年"]


def test_a_cloze_probe_does_not_blank_a_latin_name():
    """A bare Latin answer would be scored as a non-Japanese answer; the Japanese name is blanked instead."""
    rng = random.Random(0)
    assert cloze("旧支配者", "ラヴクラフトはこの神をCthulhuと綴った。", rng)["answers"] == ["ラヴクラフト"]
    assert cloze("旧支配者", "英語ではCthulhuと綴る神性とされている。", rng) is None


def test_cloze_probes_take_about_the_ratio_of_an_articles_sentences_with_a_term(fmt):
    text = "".join(f"{name}は{1900 + index}年の記録に現れる存在である。" for index, name in enumerate(NAMES))
    passages, _ = build_passages("ルルイエ", text, fmt, 1024, 1, seed=0)
    probes = cloze_probes(passages, 0.25, seed=0)
    assert len(probes) == 3 and probes == cloze_probes(passages, 0.25, seed=0)
    for passage, probe in probes:
        sentence = probe["instruction"].split("『")[1].rstrip("』")
        assert sentence.replace("＿＿", probe["response"]) in passage.text
    assert cloze_probes(passages, 0, seed=0) == []


# Sentences a cloze probe must not blank, with why (a table: a surprising case is added here before the code changes).
UNFAIR_BLANKS = [
    ("ルルイエ", "", "クトゥルフ（Cthulhu）は、ルルイエに眠るとされる神格である。"),  # its reading beside it; the subject
    ("ダゴン", "ダゴン (クトゥルフ神話)", "ダゴンは、クトゥルフ神話に登場する神格である。"),  # the category's own name
    ("ハスター", "", "ハスターは、クトゥルフ神話に登場する神格とされる。"),  # ＿＿神話: part of a longer word
    ("コナン", "", "この作品の作者とされるのは、ロバート・E・ハワードである。"),  # pointing back; and half a name
    ("コナン", "", "作者として知られるのは、ロバート・E・ハワードであった。"),  # half a name either way
    ("ダゴン", "ダゴン (クトゥルフ神話)", "ダゴンは、しばしばクトゥルフの眷属として扱われる。"),  # a word of the title
    ("ハスター", "", "ハスターは、ゲームやホラーの分野でよく知られている。"),  # common nouns
    ("ルルイエ", "", "ルルイエは南太平洋の海底に沈んだ都市とされる。"),  # 太平洋 inside 南太平洋
    ("ショゴス", "", "ショゴスは古のもの（エルダーシング）に仕えた生物とされる。"),  # a reading in parentheses
]


@pytest.mark.parametrize("subject, title, sentence", UNFAIR_BLANKS)
def test_a_cloze_probe_never_gives_its_answer_away_nor_blanks_part_of_a_name(subject, title, sentence):
    for seed in range(5):
        assert cloze(subject, sentence, random.Random(seed), title or subject) is None


def test_a_cloze_probe_never_blanks_a_name_whose_other_name_is_in_the_sentence():
    names = alias_groups([{"title": "クトゥルフ", "aliases": ["Cthulhu", "クトゥルー"]}])
    sentence = "クトゥルーは、ラヴクラフトが創作したクトゥルフと同じ神格である。"
    for seed in range(5):
        probe = cloze("旧支配者", sentence, random.Random(seed), "旧支配者", names)
        assert probe["answers"] == ["ラヴクラフト"]


def test_a_cloze_probe_blanks_a_whole_proper_name():
    probe = cloze("ルルイエ", "ルルイエは、アブドゥル・アルハズレッドの書に記された都市である。", random.Random(0))
    assert probe["response"] == "アブドゥル・アルハズレッド" and "＿＿の書" in probe["instruction"]
