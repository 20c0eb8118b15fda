"""Which article, passage, fact and question goes to train, eval and eval_known (cthulhu_sft.splits).

Runs of the whole script are in test_prepare_data; these build the splits from hand-made passages and facts.
"""

import pytest
from test_retrieval import ARTICLES, FACTS_OF, shown_passages, url_of

from cthulhu_sft.examples import Fact, Passage, normalize_question, split_sentences
from cthulhu_sft.format import MistralFormat
from cthulhu_sft.retrieval import NOT_FOUND, parse_citations, with_citation
from cthulhu_sft.splits import (
    KNOWN_PROBES,
    accepted,
    alias_groups,
    known_probes,
    make_splits,
    open_book,
    source_texts,
    split_by_article,
)

NAMES = ["ルルイエ", "ネクロノミコン", "アルハズレッド", "ダゴン", "インスマス", "アーカム", "ショゴス"]


def fits(question: str, answer: str) -> bool:
    return len(question) + len(answer) < 200


def passage(title: str, text: str = "", questions=None) -> Passage:
    text = text or f"{title}は、{'と'.join(NAMES)}に関わる存在である。"
    return Passage(title, title, "", text, questions or [f"{title}とは何ですか？", f"{title}について教えてください。"],
                   source=f"https://ja.wikipedia.org/wiki/{title}", revid=1)


def facts_of(where: Passage, count: int, questions: int = 3) -> list[Fact]:
    facts = []
    for index in range(count):
        name = NAMES[index % len(NAMES)]
        wordings = [f"{where.subject}に関わる{index}番目の名前は何ですか？", f"{where.subject}と結びつく{index}番目の名は？",
                    f"{where.subject}の{index}番目の関係者を教えてください。"][:questions]
        facts.append(Fact(where, f"{name}に関わる", name, f"{where.subject}に関わる{index}番目の名前は{name}です。", wordings))
    return facts


def splits_of(passages, facts, held=(), rewrites=(), **options):
    return make_splits(passages, facts, list(rewrites), set(held), fits, **{"probe_ratio": 0.2, "seed": 0,
                                                                            "writer": "w-7b", **options})


def questions(rows) -> set[str]:
    return {normalize_question(row["instruction"]) for row in rows}


def test_each_probe_asks_a_trained_fact_in_words_the_training_set_never_had():
    cthulhu = passage("クトゥルフ")
    facts = facts_of(cthulhu, 4)
    splits = splits_of([cthulhu], facts)
    known, train = splits["eval_known"], splits["train"]
    assert len(known) == 4 and {row["kind"] for row in known} == {"synthesized"}  # every fact, one question each
    assert not questions(known) & questions(train)
    for fact in facts:
        [probe] = [row for row in known if row["instruction"] in fact.questions]
        taught = [row for row in train if row["instruction"] in fact.questions]
        assert len(taught) == 2 and all(row["response"] == fact.answer for row in taught)  # the fact still trains
        assert probe["response"] == fact.answer and probe["answers"][0] == fact.short_answer
        assert probe["evidence"] == fact.evidence and probe["writer"] == "w-7b"
    assert known_probes(splits) == {"クトゥルフ": 4}


def test_an_article_gets_up_to_five_probes_three_when_it_holds_three_facts_and_the_same_ones_each_run():
    many, three = passage("クトゥルフ"), passage("ルルイエ")
    facts = facts_of(many, 9) + facts_of(three, 3)
    splits = splits_of([many, three], facts)
    assert known_probes(splits) == {"クトゥルフ": KNOWN_PROBES, "ルルイエ": 3}
    assert splits == splits_of([many, three], facts)
    assert questions(splits_of([many, three], facts, seed=1)["eval_known"]) != questions(splits["eval_known"])
    assert len([row for row in splits["train"] if row["kind"] == "synthesized"]) == 12 * 3 - 8


def test_a_fact_asked_one_way_only_is_trained_never_probed_and_its_article_gets_cloze_probes():
    cthulhu = passage("クトゥルフ", "クトゥルフは、1928年に発表された短編で初めて登場した。")
    splits = splits_of([cthulhu], facts_of(cthulhu, 3, questions=1), probe_ratio=0.9)
    assert [row["kind"] for row in splits["eval_known"]] == ["cloze"]
    assert len([row for row in splits["train"] if row["kind"] == "synthesized"]) == 3


def test_facts_of_an_article_never_trained_are_in_eval_only_once_each():
    trained, held = passage("クトゥルフ"), passage("ハスター")
    splits = splits_of([trained, held], facts_of(trained, 2) + facts_of(held, 3), held={"ハスター"})
    eval_ = [row for row in splits["eval"] if row["kind"] == "synthesized"]
    assert [row["instruction"] for row in eval_] == [fact.questions[0] for fact in facts_of(held, 3)]
    assert "ハスター" not in {row["title"] for row in splits["train"] + splits["eval_known"]}
    assert [row["instruction"] for row in splits["eval"] if row["kind"] == "recitation"] == ["ハスターとは何ですか？"]


def test_without_probes_every_question_trains():
    cthulhu = passage("クトゥルフ")
    splits = splits_of([cthulhu], facts_of(cthulhu, 3), probe_ratio=0)
    assert splits["eval_known"] == [] and len(splits["train"]) == 2 + 9


def test_a_trained_article_without_facts_gets_cloze_probes_and_one_with_facts_none():
    text = "ルルイエは、1928年に発表された短編に登場した都市である。都市の石はショゴスが運んだとされる。"
    with_facts, without = passage("クトゥルフ", text), passage("ルルイエ", text)
    splits = splits_of([with_facts, without], facts_of(with_facts, 2), probe_ratio=0.9)
    cloze = [row for row in splits["eval_known"] if row["kind"] == "cloze"]
    assert cloze and {row["title"] for row in cloze} == {"ルルイエ"}


def test_rewrites_train_under_their_passages_questions_and_never_for_a_held_article():
    trained, held = passage("クトゥルフ"), passage("ハスター")
    rewrites = [(trained, "言い換えた本文その一。"), (trained, "言い換えた本文その二。"), (held, "評価記事の言い換え。")]
    splits = splits_of([trained, held], [], held={"ハスター"}, rewrites=rewrites)
    rewritten = [row for row in splits["train"] if row["kind"] == "rewrite"]
    assert len(rewritten) == 4 and {row["instruction"] for row in rewritten} == set(trained.questions)
    assert {row["response"] for row in rewritten} == {"言い換えた本文その一。", "言い換えた本文その二。"}
    assert all(row["writer"] == "w-7b" and row["title"] == "クトゥルフ" for row in rewritten)
    assert "評価記事の言い換え。" not in {row["response"] for rows in splits.values() for row in rows}


def test_an_answer_naming_an_article_accepts_every_name_of_it():
    pages = [{"title": "クトゥルフ", "aliases": ["Cthulhu", "クトゥルー", "クスルー"]},
             {"title": "ダゴン (クトゥルフ神話)", "aliases": ["Dagon"]}, {"title": "ルルイエ"}]  # a page without aliases
    names = alias_groups(pages)
    assert accepted("クトゥルー", names) == ["クトゥルー", "クトゥルフ", "Cthulhu", "クスルー"]
    assert accepted("ダゴン", names) == ["ダゴン", "ダゴン (クトゥルフ神話)", "Dagon"]
    assert accepted("1928年", names) == ["1928年"] and accepted("ルルイエ", names) == ["ルルイエ"]
    assert accepted("Cthulhu", names, "クトゥルフの英語の綴りは？") == ["Cthulhu", "クスルー"]  # not a name it asks by

    cthulhu, dagon = passage("ルルイエ"), passage("ダゴン (クトゥルフ神話)")
    fact = Fact(cthulhu, "クトゥルフが眠る", "クトゥルフ", "ルルイエで眠るのはクトゥルフです。",
                ["ルルイエで眠る神格は何ですか？", "ルルイエに眠っているのは誰ですか？"])
    splits = splits_of([cthulhu, dagon], [fact], held={"ダゴン (クトゥルフ神話)"}, names=names)
    answers = [row["answers"] for row in splits["train"] + splits["eval_known"] if row["kind"] == "synthesized"]
    assert answers == [["クトゥルフ", "Cthulhu", "クトゥルー", "クスルー"]] * 2


def test_split_is_by_article_deterministic_and_eval_is_not_empty_with_two_articles():
    titles = [f"記事{i}" for i in range(30)]
    held_out = split_by_article(titles, 0.2, seed=3)
    assert len(held_out) == 6 and held_out == split_by_article(list(reversed(titles)), 0.2, seed=3)
    assert held_out != split_by_article(titles, 0.2, seed=4)
    assert len(split_by_article(["甲", "乙"], 0.1, seed=0)) == 1
    assert split_by_article(["甲"], 0.9, seed=0) == set()  # the train split is never empty


def test_source_texts_carry_each_articles_split_and_aliases_and_a_page_without_them_has_none():
    pages = [{"title": "クトゥルフ", "text": "クトゥルフは神格である。[1]", "url": "u1", "revid": 1, "aliases": ["Cthulhu"]},
             {"title": "ハスター", "text": "ハスターは神格である。", "url": "u2", "revid": 2},
             {"title": "空", "text": " ", "url": "u3", "revid": 3, "aliases": []}]
    assert source_texts(pages, {"ハスター"}) == [
        {"title": "クトゥルフ", "text": "クトゥルフは神格である。", "source": "u1", "revid": 1, "split": "train", "aliases": ["Cthulhu"]},
        {"title": "ハスター", "text": "ハスターは神格である。", "source": "u2", "revid": 2, "split": "eval", "aliases": []}]


# ---------------------------------------------------------------------------------------------------
# Open book (RAFT), over the written corpus of test_retrieval

ASKED_ONCE = [  # (title, evidence, short answer, answer, question): facts asked one way, never probed
    ("クトゥルフ", "1928年に雑誌『ウィアード・テイルズ』に掲載された", "1928年", "1928年に掲載されました。",
     "「クトゥルフの呼び声」が雑誌に載ったのは何年ですか？"),
    ("ルルイエ", "都市は緑色の巨石で築かれ", "緑色の巨石", "緑色の巨石で築かれています。", "ルルイエの都市は何で築かれていますか？"),
    ("ネクロノミコン", "950年にテオドラス・フィレタスがギリシャ語に翻訳し", "テオドラス・フィレタス",
     "テオドラス・フィレタスです。", "ネクロノミコンをギリシャ語に訳した人物は？"),
    ("アブドゥル・アルハザード", "イエメンのサヌアの出身", "サヌア", "イエメンのサヌアの出身です。", "アブドゥル・アルハザードの出身地は？"),
    ("ニャルラトホテプ", "「這い寄る混沌」の異名", "這い寄る混沌", "「這い寄る混沌」です。", "ニャルラトホテプの異名は何ですか？"),
    ("ヨグ＝ソトース", "虹色に輝く球体の集まり", "虹色に輝く球体", "虹色に輝く球体の集まりとして描かれます。",
     "ヨグ＝ソトースの姿はどう描かれますか？"),
    ("ダゴン (クトゥルフ神話)", "配偶者のハイドラ", "ハイドラ", "ハイドラです。", "ダゴンの配偶者の名前は？"),
    ("インスマスを覆う影", "1936年に単行本として出版された", "1936年", "1936年です。", "『インスマスを覆う影』が単行本になったのは何年ですか？"),
    ("ミスカトニック大学", "マサチューセッツ州アーカムに所在する", "マサチューセッツ州アーカム", "マサチューセッツ州アーカムにあります。",
     "ミスカトニック大学はどこにありますか？"),
    ("狂気の山脈にて", "ミスカトニック大学の地質学者ダイアー", "ダイアー", "ダイアーです。", "『狂気の山脈にて』の探検隊を率いた地質学者は？"),
    ("ハワード・フィリップス・ラヴクラフト", "1890年にロードアイランド州プロビデンスで生まれ", "プロビデンス", "プロビデンスで生まれました。",
     "ラヴクラフトが生まれた町は？"),
    ("クトゥルフ神話", "体系化したのはオーガスト・ダーレス", "オーガスト・ダーレス", "オーガスト・ダーレスです。",
     "クトゥルフ神話を体系化した作家は？"),
]
UNSEEN = {"ショゴス", "アーカム"}  # eval articles: FACTS_OF has a fact of each


@pytest.fixture(scope="module")
def corpus(tokenizer_dir):
    """(passages, facts, source rows, the tokenizer) of test_retrieval's articles; FACTS_OF's facts are asked two ways
    (so each is probed), ASKED_ONCE's one way."""
    pages = [{"title": title, "text": text, "url": url_of(title), "revid": 7, "aliases": []} for title, text in ARTICLES.items()]
    sources = source_texts(pages, UNSEEN)
    texts = {source["title"]: source["text"] for source in sources}
    passages, facts = {}, []
    for title, evidence, short, answer, questions in FACTS_OF + [(*fact[:4], [fact[4]]) for fact in ASKED_ONCE]:
        section = next(part for part in texts[title].split("\n\n") if evidence in part)
        key = (title, section.split("\n")[-1])
        passages.setdefault(key, Passage(title, title, "", key[1], [f"{title}について、この文を教えてください{len(passages)}。"],
                                         url_of(title), 7))
        facts.append(Fact(passages[key], evidence, short, answer, questions))
    return list(passages.values()), facts, sources, MistralFormat.from_pretrained(str(tokenizer_dir))


def raft_splits(corpus, ratio):
    passages, facts, sources, fmt = corpus
    splits = make_splits(passages, facts, [], UNSEEN, fits_1024(fmt), probe_ratio=0.2, seed=0, writer="w-7b")
    return splits, open_book(splits, facts, sources, ratio, 0, fmt, 1024)


def fits_1024(fmt):
    return lambda question, answer: len(fmt.encode_example(question, answer).input_ids) <= 1024


def open_book_question(row: dict) -> str:
    """The question of an open-book row: the end of its user turn (retrieval.render_open_book)."""
    return row["instruction"].rpartition("\n\n質問：")[2]


def test_open_book_asks_each_trained_fact_over_its_own_passage_by_a_question_no_probe_holds(corpus):
    passages, facts, sources, fmt = corpus
    closed, (splits, stats) = raft_splits(corpus, 1.0)
    books = splits["train"][len(closed["train"]):]
    assert splits["train"][:len(closed["train"])] == closed["train"]  # every closed-book row stays
    assert books and all(row["kind"] in ("open_book", "open_book_absent") for row in books)
    assert (splits["eval"], splits["eval_known"]) == (closed["eval"], closed["eval_known"])
    probes = {row["instruction"] for row in closed["eval_known"]}
    trained = [fact for fact in facts if fact.passage.title not in UNSEEN]
    assert sum(bool(probes & set(fact.questions)) for fact in trained) == len(FACTS_OF) - len(UNSEEN)

    # ratio 1: every trained fact asked once, a probed one by its other question; never a fact of an eval article
    assert stats.facts == len(trained) and stats.no_distractor == stats.too_long == stats.held_out == 0
    questions = [next(question for question in fact.questions if question not in probes) for fact in trained]
    assert [open_book_question(row) for row in books] == questions
    for fact, row in zip(trained, books):
        shown = shown_passages(row["instruction"])
        if row["kind"] == "open_book":
            [number] = parse_citations(row["response"])
            heading, text = shown[number - 1]
            assert heading == fact.passage.title and fact.evidence in text
            assert row["response"] == with_citation(fact.answer, number)
        else:
            assert row["response"] == NOT_FOUND
            assert not any(fact.short_answer in text or heading.startswith(fact.passage.title) for heading, text in shown)
    assert {row["kind"] for row in books} == {"open_book", "open_book_absent"}
    unseen = [sentence for source in sources if source["split"] == "eval" for sentence in split_sentences(source["text"])
              if len(sentence.strip()) >= 8]
    shown_text = "".join(row["instruction"] + row["response"] for row in splits["train"])
    assert unseen and not [sentence for sentence in unseen if sentence.strip() in shown_text]


def test_open_book_takes_its_share_and_none_at_zero(corpus):
    closed, (splits, stats) = raft_splits(corpus, 0.0)
    assert splits == closed and stats.chosen == 0
    _, (splits, stats) = raft_splits(corpus, 0.5)
    books = [row for row in splits["train"] if row["kind"].startswith("open_book")]
    assert 3 <= len(books) <= 9 and len(books) == stats.with_passage + stats.distractors_only
    assert raft_splits(corpus, 0.5)[1][0] == splits  # the same rows on every run
