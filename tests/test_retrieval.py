"""The retriever (recall of the right article on held-out questions), its cache, the CLI, the open-book prompt's ids
against mistral-common, citations, and the RAFT examples' rules."""

import importlib.util
import json
import re
from pathlib import Path

import pytest
from conftest import PYTHON, REPO, mistral_common_ids, run_script
from mediawiki_server import LONG_TITLE, MediaWikiServer, cthulhu_wiki

from cthulhu_sft import retrieval
from cthulhu_sft.examples import Fact, Passage, clean_text
from cthulhu_sft.format import MistralFormat
from cthulhu_sft.metrics import is_abstention
from cthulhu_sft.retrieval import (
    NOT_FOUND,
    Article,
    Hit,
    Retriever,
    citation_is_correct,
    open_book_prompt,
    open_retriever,
    parse_citations,
    raft_examples,
    recall_at_k,
)

# A small Japanese corpus written for this test (in the project's own words), with the cross-references real
# articles have (クトゥルフ names ルルイエ, アーカム names ミスカトニック大学 ...), and held-out questions that no text
# repeats: many name their subject, some only describe it, two use another spelling (ナイアーラトテップ, クトゥルー).
ARTICLES = {
    "クトゥルフ": (
        "クトゥルフは、ハワード・フィリップス・ラヴクラフトが創造した架空の神格で、クトゥルフ神話の中心的な存在である。"
        "南太平洋の海底に沈んだ都市ルルイエの館で、死に似た眠りについているとされる。\n\n"
        "== 外見 ==\n蛸に似た頭部、顔の周りに生えた無数の触腕、鱗に覆われたゴム状の体、背中の細い翼を持つ巨人として描かれる。"
        "その姿を刻んだ像は、見る者に強い嫌悪を抱かせるという。\n\n"
        "== 信仰 ==\n世界各地の辺境には、クトゥルフの復活を待つ教団が存在するとされる。信者たちは「ふんぐるい むぐるうなふ」で始まる祈りの言葉を唱える。"
        "深きものどももクトゥルフを崇めている。\n\n"
        "== 登場作品 ==\n=== 小説 ===\n初めて登場したのは短編「クトゥルフの呼び声」で、1928年に雑誌『ウィアード・テイルズ』に掲載された。"
        "その後、オーガスト・ダーレスらが多くの作品に取り入れた。\n\n== 脚注 ==\n^ 注記。"
    ),
    "ルルイエ": (
        "ルルイエは、クトゥルフ神話に登場する架空の海底都市である。南太平洋の南緯47度9分、西経126度43分付近に沈んでいると設定されている。\n\n"
        "== 特徴 ==\n都市は緑色の巨石で築かれ、その幾何学は非ユークリッド的で、角度が正しく見えないという。"
        "星辰が正しい位置に戻ると海上に浮上し、眠れる神が目覚めると語られる。\n\n"
        "== 作品での扱い ==\n「クトゥルフの呼び声」では、嵐に遭った船の乗組員が偶然浮上した島に上陸し、恐ろしい体験をする。"
    ),
    "ネクロノミコン": (
        "ネクロノミコンは、ラヴクラフトの作品に登場する架空の魔道書である。禁断の知識を記した書物として、多くの作家が作中で言及した。\n\n"
        "== 来歴 ==\n作中の設定では、730年頃にダマスカスでアブドゥル・アルハザードが著した。アラビア語の原題は『アル・アジフ』で、夜に虫が鳴く音を意味するという。"
        "950年にテオドラス・フィレタスがギリシャ語に翻訳し、ネクロノミコンの題を与えた。\n\n"
        "== 所蔵 ==\nミスカトニック大学の附属図書館には、ラテン語版が厳重に保管されているとされる。大英博物館やパリ国立図書館にも写本があるという。"
    ),
    "アブドゥル・アルハザード": (
        "アブドゥル・アルハザードは、クトゥルフ神話に登場する架空の人物で、「狂えるアラブ人」と呼ばれる詩人である。"
        "イエメンのサヌアの出身とされる。\n\n"
        "== 生涯 ==\n若い頃にバビロンの廃墟やメンフィスの地下を巡り、無人の砂漠ルブアルハリで10年を過ごしたという。"
        "晩年はダマスカスに住み、魔道書を書き上げた。738年に白昼の街頭で目に見えない怪物に貪り食われたと伝えられる。"
    ),
    "ニャルラトホテプ": (
        "ニャルラトホテプは、クトゥルフ神話に登場する神格で、外なる神の一柱である。「這い寄る混沌」の異名で知られる。\n\n"
        "== 特徴 ==\n他の神々と違って人間の前に好んで姿を現し、千の化身を持つとされる。"
        "古代エジプトのファラオのような浅黒い男の姿で現れることが多い。主であるアザトースの使者として振る舞う。\n\n"
        "== 初出 ==\n1920年に発表された散文詩「ナイアーラトテップ」で初めて登場した。"
    ),
    "ヨグ＝ソトース": (
        "ヨグ＝ソトースは、クトゥルフ神話に登場する外なる神で、時間と空間のあらゆる場所に同時に存在するとされる。"
        "「門にして鍵」「全にして一、一にして全」と呼ばれる。\n\n"
        "== 外見 ==\n虹色に輝く球体の集まりとして描かれることが多い。\n\n"
        "== 登場作品 ==\n「ダンウィッチの怪」では、ウィルバー・ウェイトリーとその双子の兄弟の父親とされる。"
    ),
    "アザトース": (
        "アザトースは、クトゥルフ神話に登場する外なる神の総帥である。宇宙の中心にある混沌の玉座で、盲目にして白痴のまま泡立ち続けているとされる。\n\n"
        "== 特徴 ==\n周囲では下位の神々が太鼓とフルートの単調な音楽を奏で、アザトースを眠らせ続けているという。"
        "目覚めれば宇宙が終わるとも語られる。ニャルラトホテプはその意志を伝える使者である。"
    ),
    "ダゴン (クトゥルフ神話)": (
        "ダゴンは、クトゥルフ神話に登場する海の神格で、深きものどもに崇拝される存在である。配偶者のハイドラとともに、深きものどもを統べる父なる存在とされる。\n\n"
        "== 由来 ==\n名前は古代ペリシテ人が祀った神に由来する。\n\n"
        "== 作品 ==\n1919年に書かれた短編「ダゴン」では、漂流した男が海底から隆起した陸地で巨大な生き物を目撃する。"
    ),
    "インスマスを覆う影": (
        "インスマスを覆う影は、ラヴクラフトが1931年に書いた中編小説である。1936年に単行本として出版された。\n\n"
        "== あらすじ ==\nマサチューセッツ州の寂れた港町インスマスを訪れた青年が、住民と海に棲む深きものどもとの混血の秘密を知る。"
        "町ではダゴン秘密教団が力を持っている。青年は町から逃げ出すが、やがて自分の血筋に関わる真実に気づく。"
    ),
    "ミスカトニック大学": (
        "ミスカトニック大学は、ラヴクラフトの作品に登場する架空の大学である。マサチューセッツ州アーカムに所在する。\n\n"
        "== 附属図書館 ==\n図書館は禁断の書物の収蔵で知られ、ネクロノミコンのラテン語版を所蔵している。\n\n"
        "== 探検 ==\n大学の地質学部は南極に探検隊を送り、その記録は「狂気の山脈にて」で語られる。"
    ),
    "アーカム": (
        "アーカムは、ラヴクラフトが創造した架空の町で、マサチューセッツ州のミスカトニック川のほとりにあるとされる。\n\n"
        "== 概要 ==\n古い切妻屋根の家並みが残る町として描かれ、魔女の伝承が伝わっている。町にはミスカトニック大学がある。"
        "作家オーガスト・ダーレスとドナルド・ワンドレイは、この町の名を取って出版社アーカム・ハウスを設立した。"
    ),
    "ショゴス": (
        "ショゴスは、クトゥルフ神話に登場する不定形の生物である。太古の地球で古のものが奉仕のために造り出したとされる。\n\n"
        "== 特徴 ==\n玉虫色に光る原形質の塊で、体の形を自在に変え、無数の目を浮かべる。"
        "やがて知能を持って主人に反乱を起こした。「テケリ・リ」と鳴くという。"
    ),
    "狂気の山脈にて": (
        "狂気の山脈にては、ラヴクラフトの長編小説である。1936年に雑誌『アスタウンディング・ストーリーズ』に分載された。\n\n"
        "== あらすじ ==\nミスカトニック大学の地質学者ダイアーが率いる探検隊は、南極大陸の奥地でヒマラヤを越える高さの山脈を発見する。"
        "その向こうには、古のものが築いた巨大な石の都市が広がっていた。"
    ),
    "ハスター": (
        "ハスターは、クトゥルフ神話に登場する旧支配者の一柱である。「名状しがたきもの」と呼ばれ、風の力に結び付けられる。\n\n"
        "== 背景 ==\n名前はアンブローズ・ビアスの短編に由来し、ロバート・W・チェンバースの『黄衣の王』で用いられた。"
        "オーガスト・ダーレスはハスターをクトゥルフと敵対する存在に位置づけた。牡牛座のアルデバラン付近に棲むとされる。"
    ),
    "ハワード・フィリップス・ラヴクラフト": (
        "ハワード・フィリップス・ラヴクラフトは、アメリカ合衆国の小説家である。1890年にロードアイランド州プロビデンスで生まれ、1937年に同地で死去した。\n\n"
        "== 作風 ==\n宇宙的恐怖と呼ばれる作風で知られ、人類が無力な存在に過ぎないことを描いた。"
        "生前に刊行された著書はわずかで、作品の多くはパルプ雑誌『ウィアード・テイルズ』に掲載された。\n\n"
        "== 没後 ==\n死後、オーガスト・ダーレスらが作品を刊行し、その作品世界はクトゥルフ神話として広まった。"
    ),
    "クトゥルフ神話": (
        "クトゥルフ神話は、ラヴクラフトと彼の友人の作家たちが作り上げた架空の神話体系である。\n\n"
        "== 成立 ==\nラヴクラフトは作家仲間と設定を共有し、互いの作品に神々や書物を登場させた。"
        "体系化したのはオーガスト・ダーレスで、神々を四大元素に分類した。\n\n"
        "== 日本での受容 ==\n1970年代から翻訳が進み、テーブルトークRPG『クトゥルフ神話TRPG』の人気もあって広く知られるようになった。"
    ),
}

QUESTIONS = [
    ("クトゥルフはどこで眠っているとされますか？", "クトゥルフ"),
    ("タコのような頭と翼を持つ巨人として描かれる神格の名前は？", "クトゥルフ"),
    ("「ふんぐるい むぐるうなふ」という祈りを唱える教団が崇める神は？", "クトゥルフ"),
    ("星辰が正しい位置に戻ると浮上する海底都市は何ですか？", "ルルイエ"),
    ("ルルイエの建物の幾何学にはどんな特徴がありますか？", "ルルイエ"),
    ("ネクロノミコンのアラビア語での原題は何ですか？", "ネクロノミコン"),
    ("ネクロノミコンをギリシャ語に訳したのは誰ですか？", "ネクロノミコン"),
    ("「狂えるアラブ人」と呼ばれた詩人は誰ですか？", "アブドゥル・アルハザード"),
    ("アルハザードはどのような最期を迎えたとされますか？", "アブドゥル・アルハザード"),
    ("這い寄る混沌という異名を持つ神は？", "ニャルラトホテプ"),
    ("ナイアーラトテップが初めて登場した作品は何年に発表されましたか？", "ニャルラトホテプ"),
    ("門にして鍵と呼ばれる外なる神は何ですか？", "ヨグ＝ソトース"),
    ("ヨグソトースはどんな姿で描かれますか？", "ヨグ＝ソトース"),
    ("宇宙の中心で盲目白痴のまま泡立つ神の名前は？", "アザトース"),
    ("アザトースの周りで音楽を奏でているのは何ですか？", "アザトース"),
    ("深きものどもに崇拝される海の神は？", "ダゴン (クトゥルフ神話)"),
    ("ダゴンの配偶者の名前は何ですか？", "ダゴン (クトゥルフ神話)"),
    ("港町インスマスを舞台にしたラヴクラフトの中編小説の題名は？", "インスマスを覆う影"),
    ("「インスマスを覆う影」はいつ出版されましたか？", "インスマスを覆う影"),
    ("アーカムにある架空の大学の名前は？", "ミスカトニック大学"),
    ("ミスカトニック大学の図書館が所蔵している禁断の書物は？", "ミスカトニック大学"),
    ("ミスカトニック大学があるとされる架空の町はどこですか？", "アーカム"),
    ("アーカム・ハウスという出版社の名前の由来になった町は？", "アーカム"),
    ("古のものが奉仕のために造り出した不定形の生物は？", "ショゴス"),
    ("「テケリ・リ」と鳴く生き物は何ですか？", "ショゴス"),
    ("南極の山脈の向こうで古代の石の都市を見つける長編小説は？", "狂気の山脈にて"),
    ("「狂気の山脈にて」はどの雑誌に分載されましたか？", "狂気の山脈にて"),
    ("名状しがたきものと呼ばれる旧支配者は？", "ハスター"),
    ("ハスターという名前は誰の短編に由来しますか？", "ハスター"),
    ("ラヴクラフトが生まれた町はどこですか？", "ハワード・フィリップス・ラヴクラフト"),
    ("ラヴクラフトは何年に亡くなりましたか？", "ハワード・フィリップス・ラヴクラフト"),
    ("宇宙的恐怖と呼ばれる作風で知られるアメリカの作家は？", "ハワード・フィリップス・ラヴクラフト"),
    ("神々を四大元素に分類して神話を体系化した作家は？", "クトゥルフ神話"),
    ("クトゥルフ神話が日本で広く知られるようになったのはいつ頃からですか？", "クトゥルフ神話"),
    ("クトゥルーが初めて登場した短編は何年に雑誌に載りましたか？", "クトゥルフ"),
]

# Questions about the test wiki (tests/mediawiki_server.py), whose articles are a sentence or three: most reuse
# a phrase of their article, none names it (but ネクロノミコン's second).
WIKI_QUESTIONS = [
    ("千の姿を持つとされる神格は？", "ニャルラトホテプ"),
    ("深きものどもに崇拝される存在は何ですか？", "ダゴン (クトゥルフ神話)"),
    ("風に関係づけられることが多い神格は？", "ハスター"),
    ("寂れた港町を舞台にした中編小説は？", "インスマスを覆う影"),
    ("南極探検を描いた長編小説は何ですか？", "狂気の山脈にて"),
    ("時間と空間に関わる神格は？", "ヨグ＝ソトース"),
    ("緑色の石で築かれた都市は？", "ルルイエ"),
    ("狂える詩人が著したとされる魔道書は？", "ネクロノミコン"),
    ("蛸に似た頭部を持つ存在は？", "クトゥルフ"),
    ("ゲームの資料に登場する書物と神格をまとめた一覧は？", LONG_TITLE),
    ("原題がアラビア語で書かれたとされる書物は？", "ネクロノミコン"),
    ("顔のない怪物の姿で描かれる神格は？", "ニャルラトホテプ"),
]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path


def url_of(title):
    return "https://ja.wikipedia.org/wiki/" + title.replace(" ", "_")


def source_rows(articles: dict[str, str]) -> list[dict]:
    """Rows as prepare_data.py writes data/source_texts.jsonl."""
    return [{"title": title, "text": clean_text(text), "source": url_of(title), "revid": 1000 + number, "split": "train"}
            for number, (title, text) in enumerate(articles.items())]


@pytest.fixture(scope="module")
def corpus_retriever():
    return Retriever.build([Article(row["title"], row["text"], row["source"], row["revid"]) for row in source_rows(ARTICLES)])


@pytest.fixture(scope="module")
def mistral_format(tokenizer_dir):
    return MistralFormat.from_pretrained(str(tokenizer_dir))


# ---------------------------------------------------------------------------------------------------
# Recall


def test_written_corpus_recall_at_3_is_1(corpus_retriever):
    """recall@3 = 1.0 on 35 held-out questions over 16 articles; recall@1 at least 0.9 (32 of 35 today: the
    questions that name another article, アーカム's for ミスカトニック大学 and back, put that one first)."""
    recall = recall_at_k(corpus_retriever, QUESTIONS)
    assert recall[3] == 1.0
    assert recall[1] >= 0.9


def test_crawled_wiki_recall_at_3_is_1(tmp_path):
    """The test wiki's articles as the crawler reads them (TextExtracts' text, revision, URL): recall@3 = 1.0 on
    12 held-out questions."""
    wiki = cthulhu_wiki()
    rows = [{"title": page.title, "text": clean_text(page.extract), "source": url_of(page.title), "revid": page.revid,
             "split": "train"} for page in wiki.pages.values() if page.ns == 0 and page.extract and not page.redirect]
    retriever = open_retriever(write_jsonl(tmp_path / "source_texts.jsonl", rows))
    assert recall_at_k(retriever, WIKI_QUESTIONS)[3] == 1.0
    [hit] = retriever.search("ハスターは何と呼ばれる？", top_k=1)
    assert (hit.title, hit.revid) == ("ハスター", wiki.pages["ハスター"].revid)


def test_crawled_by_prepare_data_recall_at_3_is_1(tmp_path, tokenizer_dir, capsys):
    """The real crawl (prepare_data.py against the loopback MediaWiki) writes data/source_texts.jsonl; the CLI's
    --recall over it: recall@3 = 1.0 on the 12 held-out questions, and a hit names its revision."""
    import prepare_data

    with MediaWikiServer(cthulhu_wiki()) as wiki:
        assert prepare_data.main(["--api_url", wiki.url, "--tokenizer", str(tokenizer_dir), "--max_tokens", "256",
                                  "--cache_dir", str(tmp_path / "cache"), "--out_dir", str(tmp_path / "data"),
                                  "--request_interval", "0", "--backoff_factor", "0", "--depth", "2",
                                  "--titles", "ヨグ＝ソトース"]) == 0
    capsys.readouterr()
    source_texts = tmp_path / "data/source_texts.jsonl"
    questions = write_jsonl(tmp_path / "questions.jsonl", [{"instruction": q, "title": t} for q, t in WIKI_QUESTIONS])
    assert retrieval.main(["--source_texts", str(source_texts), "--recall", str(questions)]) == 0
    assert "recall@3: 1.000" in capsys.readouterr().out
    assert retrieval.main(["--source_texts", str(source_texts), "--json", "--top_k", "1", "門にして鍵とも呼ばれる神格"]) == 0
    [hit] = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    revid = cthulhu_wiki().pages["ヨグ＝ソトース"].revid
    assert hit["title"] == "ヨグ＝ソトース" and hit["revid"] == revid and hit["revision_url"].endswith(f"&oldid={revid}")


def sample_source_texts(folder: Path) -> Path:
    """The shipped sample's training answers as the articles' texts (the sample ships no crawled text)."""
    texts = {}
    for line in (REPO / "data/sample/train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts.setdefault(row["title"], []).append(row["response"])
    return write_jsonl(folder / "source_texts.jsonl", source_rows({t: "\n".join(v) for t, v in texts.items()}))


def test_shipped_sample_recall_at_3_is_1(tmp_path, capsys):
    """data/sample/eval_known.jsonl (19 held-out questions about 10 of the 11 trained topics): recall@3 = 1.0,
    through the CLI's --recall."""
    source_texts = sample_source_texts(tmp_path)
    assert retrieval.main(["--source_texts", str(source_texts), "--recall", str(REPO / "data/sample/eval_known.jsonl")]) == 0
    out = capsys.readouterr().out
    assert "recall@3: 1.000" in out and "recall@1:" in out and "recall@5: 1.000" in out
    assert "(19 questions, 11 articles" in out


def test_a_question_naming_a_subject_finds_its_article_first(corpus_retriever):
    for question, title in [("ショゴスについて教えてください。", "ショゴス"), ("ダゴンとは何ですか？", "ダゴン (クトゥルフ神話)"),
                            ("クトゥルフ神話とは？", "クトゥルフ神話"), ("ヨグ・ソトースの別名は？", "ヨグ＝ソトース"),
                            ("クトゥルフはどこで眠っているとされますか？", "クトゥルフ")]:  # its topic, though 眠り ≠ 眠る
        assert corpus_retriever.search(question)[0].title == title, question


def test_a_surname_or_another_spelling_names_the_article(corpus_retriever):
    named = corpus_retriever.named_articles
    titles = [article.title for article in corpus_retriever.articles]
    [(number, weight)] = named("ラヴクラフトが生まれた町は？").items()  # his surname, held by most articles
    assert titles[number] == "ハワード・フィリップス・ラヴクラフト" and 0 < weight < retrieval.PART_NAME_WEIGHT / 2
    assert {titles[n] for n in named("クトゥルーの姿は？")} == {"クトゥルフ"}  # fuzzy: most bigrams shared
    weights = {titles[n]: w for n, w in named("クトゥルフ神話の成立は？").items()}
    assert weights == {"クトゥルフ神話": 1.0, "クトゥルフ": retrieval.CONTAINED_NAME_WEIGHT}
    assert named("ショゴスとは？ショゴスの") == {titles.index("ショゴス"): retrieval.TOPIC_WEIGHT}  # the topic
    assert named("アルハザードの最期は？") == {titles.index("アブドゥル・アルハザード"): pytest.approx(0.5 * 0.77, abs=0.01)}
    assert named("ダオンの配偶者は？") == {}  # too far from ダゴン
    assert corpus_retriever.search("クトゥルーの背中には何がある？")[0].title == "クトゥルフ"


def test_a_name_in_parts_is_found_written_as_one_word(corpus_retriever):
    """Sudachi keeps テオドラスフィレタス whole; the passage's テオドラス・フィレタス also gives that word."""
    assert retrieval.analyze("テオドラスフィレタスは何をした？", passage=False)[0] == "テオドラスフイレタス"
    assert corpus_retriever.search("テオドラスフィレタスは何をした？")[0].title == "ネクロノミコン"
    assert retrieval.analyze("ツァトゥグァ") == retrieval.analyze("ツァトゥグア") == ["ツアトウグア"]  # small ァ as ア


def test_at_most_two_passages_of_one_article(corpus_retriever):
    hits = corpus_retriever.search("クトゥルフの外見と信仰と登場作品について", top_k=5)
    titles = [hit.title for hit in hits]
    assert len(hits) == 5 and max(titles.count(title) for title in titles) == 2


def test_passages_are_bounded_and_follow_sections(corpus_retriever):
    passages = [hit for hit in corpus_retriever.passages if hit.title == "クトゥルフ"]
    assert [hit.section for hit in passages] == ["", "外見", "信仰", "登場作品のうち小説"]  # notes dropped
    assert max(len(hit.text) for hit in corpus_retriever.passages) <= retrieval.MAX_PASSAGE_CHARS
    long = "これは長い文である。" * 60
    parts = retrieval.cut_section(long)
    assert "".join(parts) == long and all(len(part) <= retrieval.MAX_PASSAGE_CHARS and part.endswith("。") for part in parts)
    assert [len(part) for part in retrieval.cut_section("あ" * 500)] == [240, 240, 20]


def test_analysis_folds_spellings_and_drops_particles():
    terms = retrieval.analyze("ＮＥＣＲＯＮＯＭＩＣＯＮについて、ヴーアミタドレスの海底都市は？")
    assert "necronomicon" in terms and "海底" in terms and "都市" in terms
    assert "ブアミタドレス" in terms  # ヴ as ブ, ー dropped
    assert not {"は", "の", "、", "？", "について", "つく"} & set(terms)


# ---------------------------------------------------------------------------------------------------
# Cache and CLI


def test_index_is_cached_then_rebuilt_when_the_corpus_changes(tmp_path):
    source_texts = write_jsonl(tmp_path / "source_texts.jsonl", source_rows(dict(list(ARTICLES.items())[:3])))
    first = open_retriever(source_texts)
    folder = retrieval.cache_folder(source_texts)
    assert folder.parent == tmp_path / ".retrieval" and (folder / "articles.json").is_file()
    stamp = (folder / "articles.json").stat().st_mtime_ns
    second = open_retriever(source_texts)
    assert (folder / "articles.json").stat().st_mtime_ns == stamp  # loaded, not rebuilt
    assert [hit.text for hit in second.passages] == [hit.text for hit in first.passages]
    assert second.search("ルルイエの幾何学", top_k=1)[0].as_json() == first.search("ルルイエの幾何学", top_k=1)[0].as_json()

    write_jsonl(source_texts, source_rows(ARTICLES))
    third = open_retriever(source_texts)
    assert retrieval.cache_folder(source_texts) != folder and not folder.exists()  # the old index is removed
    assert third.search("テケリ・リと鳴く生き物", top_k=1)[0].title == "ショゴス"
    assert [path.name for path in (tmp_path / ".retrieval").iterdir()] == [retrieval.cache_folder(source_texts).name]


def test_an_unreadable_cache_is_rebuilt(tmp_path):
    source_texts = write_jsonl(tmp_path / "source_texts.jsonl", source_rows(dict(list(ARTICLES.items())[:3])))
    open_retriever(source_texts)
    (retrieval.cache_folder(source_texts) / "passages.jsonl").write_text("{broken", encoding="utf-8")
    assert open_retriever(source_texts).search("ルルイエ", top_k=1)[0].title == "ルルイエ"


def test_a_folder_that_cannot_hold_the_cache_still_serves(tmp_path, caplog):
    source_texts = write_jsonl(tmp_path / "source_texts.jsonl", source_rows(dict(list(ARTICLES.items())[:3])))
    (tmp_path / ".retrieval").write_text("a file where the cache folder would be")
    assert open_retriever(source_texts).search("ネクロノミコン", top_k=1)[0].title == "ネクロノミコン"
    assert "not cached" in caplog.text


def test_cli_prints_title_section_revision_and_url(tmp_path):
    source_texts = write_jsonl(tmp_path / "source_texts.jsonl", source_rows(ARTICLES))
    result = run_script([PYTHON, "-m", "cthulhu_sft.retrieval", "--source_texts", str(source_texts),
                         "ネクロノミコンのアラビア語の原題は？"])
    assert result.returncode == 0, result.stderr
    first = result.stdout.split("\n\n")[0]
    revid = 1000 + list(ARTICLES).index("ネクロノミコン")
    assert first.startswith("[1] ネクロノミコン > 来歴")
    assert f"revision {revid}" in first and f"oldid={revid}" in first and "アル・アジフ" in first
    assert result.stdout.count("\n[") == 2  # three hits by default


def test_cli_json_has_one_object_per_hit(tmp_path, capsys):
    source_texts = write_jsonl(tmp_path / "source_texts.jsonl", source_rows(ARTICLES))
    assert retrieval.main(["--source_texts", str(source_texts), "--json", "--top_k", "4", "門にして鍵と呼ばれる神"]) == 0
    hits = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(hits) == 4
    assert {"title", "section", "revid", "url", "score", "text"} <= set(hits[0])
    assert hits[0]["title"] == "ヨグ＝ソトース" and hits[0]["url"] == url_of("ヨグ＝ソトース")
    assert hits[0]["score"] >= hits[1]["score"] >= hits[3]["score"] > 0


@pytest.mark.parametrize("rows,expected", [
    (None, "MISSING.jsonl: file not found"),
    ([{"title": "a", "text": "本文。"}, {"text": "題のない行"}], "source_texts.jsonl:2: field 'title'"),
    ([{"title": "a", "text": "本文。", "revid": "12"}], "source_texts.jsonl:1: field 'revid'"),
    ([{"title": "a", "text": "本文。", "aliases": "b"}], "source_texts.jsonl:1: field 'aliases'"),
    ("not json\n", "source_texts.jsonl:1: invalid JSON"),
])
def test_bad_source_texts_is_one_message_and_exit_2(tmp_path, capsys, rows, expected):
    path = tmp_path / ("MISSING.jsonl" if rows is None else "source_texts.jsonl")
    if isinstance(rows, str):
        path.write_text(rows, encoding="utf-8")
    elif rows is not None:
        write_jsonl(path, rows)
    assert retrieval.main(["--source_texts", str(path), "質問"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err and "Traceback" not in err
    assert not (tmp_path / ".retrieval").exists() or not any((tmp_path / ".retrieval").iterdir())


def test_bad_recall_file_names_its_line(tmp_path, capsys):
    source_texts = write_jsonl(tmp_path / "source_texts.jsonl", source_rows(ARTICLES))
    bad = write_jsonl(tmp_path / "set.jsonl", [{"instruction": "q", "title": "ショゴス"}, {"instruction": "q"}])
    assert retrieval.main(["--source_texts", str(source_texts), "--recall", str(bad)]) == 2
    assert f"{bad}:2: field 'title'" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------------
# Open-book prompt


def test_open_book_prompt_ids_are_mistral_commons(corpus_retriever, mistral_format, serving_reference_tokenizer,
                                                  reference_tokenizer):
    question = "ネクロノミコンをギリシャ語に訳したのは誰ですか？"
    prompt, shown = open_book_prompt(question, corpus_retriever.search(question), mistral_format)
    assert len(shown) == 3 and prompt.startswith("資料：\n[1] ネクロノミコン") and prompt.endswith(f"質問：{question}")
    assert "[2] " in prompt and "[3] " in prompt and NOT_FOUND in prompt
    messages = [{"role": "user", "content": prompt}]
    assert mistral_format.encode_prompt(messages) == mistral_common_ids(serving_reference_tokenizer, messages)
    answer = [*messages, {"role": "assistant", "content": "テオドラス・フィレタスです[1]。"}]
    example = mistral_format.encode_example(prompt, answer[-1]["content"])
    assert example.input_ids == mistral_common_ids(reference_tokenizer, answer)


def test_open_book_prompt_keeps_to_its_token_budget(corpus_retriever, mistral_format):
    question = "クトゥルフの外見は？"
    hits = corpus_retriever.search(question)
    full, _ = open_book_prompt(question, hits, mistral_format)
    budget = len(mistral_format.encode_user(full)) - 30
    prompt, shown = open_book_prompt(question, hits, mistral_format, max_tokens=budget)
    assert len(mistral_format.encode_user(prompt)) <= budget
    assert [hit.text for hit in shown[:2]] == [hit.text for hit in hits[:2]]
    assert len(shown) == 2 or (shown[2].text != hits[2].text and hits[2].text.startswith(shown[2].text))
    assert open_book_prompt(question, hits, mistral_format, top_k=1)[1] == hits[:1]


# ---------------------------------------------------------------------------------------------------
# Citations

CITATIONS = [
    ("ルルイエです[1]。", [1]),
    ("ルルイエです[1][2]。", [1, 2]),
    ("ルルイエです［1］。", [1]),
    ("ルルイエです［２］。", [2]),
    ("ルルイエです[1, 3]。", [1, 3]),
    ("ルルイエです[2、1]。", [2, 1]),
    ("【3】によればルルイエです。", [3]),
    ("ルルイエです[1]。資料[1]にもあります。", [1]),
    ("ルルイエです。", []),
    ("[要出典] ルルイエ", []),
    ("1928年[a]です", []),
    ("資料2によれば、ルルイエです。", [2]),
    ("資料１と資料[3]にあります。", [1, 3]),
    ("資料1928年版", []),
]


@pytest.mark.parametrize("answer,expected", CITATIONS)
def test_citations_are_parsed(answer, expected):
    assert parse_citations(answer) == expected


def test_citation_is_correct_only_when_every_cited_passage_holds_an_accepted_answer():
    shown = [Hit("ネクロノミコン", "来歴", "原題は『アル・アジフ』である。", 1, ""),
             Hit("ルルイエ", "", "ルルイエは南太平洋に沈んでいる。", 2, "")]
    accepted = ["アル・アジフ", "Al Azif"]
    assert citation_is_correct("アルアジフです[1]。", shown, accepted)
    assert not citation_is_correct("アル・アジフです[2][1]。", shown, accepted)  # citing every passage games it
    assert not citation_is_correct("アル・アジフです[2]。", shown, accepted)  # the wrong passage
    assert not citation_is_correct("アル・アジフです。", shown, accepted)  # no citation
    assert not citation_is_correct("アル・アジフです[3]。", shown, accepted)  # not shown
    assert not citation_is_correct("アル・アジフです[0]。", shown, accepted)


def test_the_not_found_answer_is_an_abstention():
    assert is_abstention(NOT_FOUND)


# ---------------------------------------------------------------------------------------------------
# RAFT examples

FACTS_OF = [  # (title, evidence, short answer, answer, questions)
    ("ネクロノミコン", "アラビア語の原題は『アル・アジフ』", "アル・アジフ", "原題は『アル・アジフ』です。",
     ["ネクロノミコンの元の題名は何ですか？", "ネクロノミコンの原題を教えてください。"]),
    ("ショゴス", "古のものが奉仕のために造り出した", "古のもの", "古のものが造り出しました。",
     ["ショゴスを造ったのは誰ですか？", "ショゴスの作り手は？"]),
    ("ハスター", "アンブローズ・ビアスの短編に由来", "アンブローズ・ビアス", "アンブローズ・ビアスの短編に由来します。",
     ["ハスターという名の由来は？", "ハスターの名前はどこから来ましたか？"]),
    ("アザトース", "太鼓とフルートの単調な音楽", "フルート", "太鼓とフルートの単調な音楽です。",
     ["アザトースの周りで奏でられる楽器は？", "アザトースを眠らせる音楽は？"]),
    ("アーカム", "出版社アーカム・ハウスを設立した", "アーカム・ハウス", "アーカム・ハウスです。",
     ["ダーレスとワンドレイが設立した出版社は？", "アーカムの名を取った出版社は？"]),
    ("ルルイエ", "南緯47度9分、西経126度43分付近", "南緯47度9分", "南緯47度9分、西経126度43分付近です。",
     ["ルルイエの位置は？", "ルルイエはどこに沈んでいますか？"]),
]


def make_facts() -> list[Fact]:
    facts = []
    for title, evidence, short, answer, questions in FACTS_OF:
        text = clean_text(ARTICLES[title])
        section = next(part for part in text.split("\n\n") if evidence in part)
        passage = Passage(title, title, "", section.split("\n")[-1], questions[:1], url_of(title), 7)
        facts.append(Fact(passage, evidence, short, answer, questions))
    return facts * 4  # 24 facts: enough for the shares to show


def shown_passages(instruction: str) -> list[tuple[str, str]]:
    """(heading, text) of each numbered passage of an open-book user turn, in order."""
    body = instruction.removeprefix("資料：\n").split("\n\n" + retrieval.OPEN_BOOK_INSTRUCTION[:10])[0]
    blocks = re.split(r"(?:^|\n\n)\[(\d+)\] ", body)[1:]
    assert [int(number) for number in blocks[::2]] == list(range(1, len(blocks) // 2 + 1))
    return [tuple(block.split("\n", 1)) for block in blocks[1::2]]


def test_raft_examples_follow_the_rules(corpus_retriever, mistral_format, reference_tokenizer):
    facts = make_facts()
    rows, stats = raft_examples(facts, corpus_retriever, ratio=1.0, seed=3, held_out_questions=[],
                                fmt=mistral_format, max_tokens=1024)
    assert stats.chosen == len(facts) == len(rows) and stats.held_out == stats.too_long == 0
    kinds = [row["kind"] for row in rows]
    assert 0 < kinds.count("open_book_absent") < kinds.count("open_book")
    positions = set()
    for fact, row in zip(facts, rows):
        assert len(mistral_format.encode_example(row["instruction"], row["response"]).input_ids) <= 1024
        assert row["instruction"].endswith(f"質問：{fact.questions[0]}")
        shown = shown_passages(row["instruction"])
        if row["kind"] == "open_book":
            [number] = parse_citations(row["response"])
            positions.add(number)
            heading, text = shown[number - 1]
            assert fact.evidence in text and heading.startswith(fact.passage.title)
            assert row["response"].startswith(fact.answer.removesuffix("。"))
            assert sum(fact.short_answer in text for _, text in shown) == 1  # no distractor holds the answer
        else:
            assert row["response"] == NOT_FOUND
            assert not any(fact.evidence in text or fact.short_answer in text for _, text in shown)
            assert not any(heading.startswith(fact.passage.title) for heading, _ in shown)  # nothing of its article
        assert (row["title"], row["source"], row["revid"]) == (fact.passage.title, fact.passage.source, 7)
    assert len(positions) >= 2  # the fact's passage is not always first
    again, _ = raft_examples(facts, corpus_retriever, 1.0, 3, [], mistral_format, 1024)
    assert again == rows
    other, _ = raft_examples(facts, corpus_retriever, 1.0, 4, [], mistral_format, 1024)
    assert other != rows


def test_raft_takes_a_share_and_skips_held_out_probes(corpus_retriever, mistral_format):
    facts = make_facts()
    rows, stats = raft_examples(facts, corpus_retriever, 0.5, 0, [], mistral_format, 1024)
    assert 6 <= len(rows) <= 18 and stats.chosen == len(rows)
    held = ["ネクロノミコンの原題を教えてください。", "ショゴスの作り手は？"]  # second wordings of two facts
    rows, stats = raft_examples(facts, corpus_retriever, 1.0, 0, held, mistral_format, 1024)
    assert stats.held_out == 8 and len(rows) == 16
    assert not any("ネクロノミコン" in row["instruction"].rsplit("質問：", 1)[1] for row in rows)
    assert not any(row["title"] in ("ネクロノミコン", "ショゴス") for row in rows)


def test_the_oracle_is_the_part_that_holds_the_evidence():
    text = "".join(f"第{n}の文はここにある。" for n in range(40)) + "ルルイエは太平洋にある。" + "後の文。" * 80
    passage = Passage("ルルイエ", "ルルイエ", "", text, ["q"], "url", 1)
    part = retrieval.oracle_passage(Fact(passage, "ルルイエは太平洋にある", "太平洋", "太平洋です。", ["q"])).text
    assert "ルルイエは太平洋にある。" in part and len(part) <= retrieval.MAX_PASSAGE_CHARS
    crossing = "第39の文はここにある。ルルイエは"  # spans the cut between two parts
    part = retrieval.oracle_passage(Fact(passage, crossing, "39", "第39です。", ["q"])).text
    assert part.startswith("第39の文はここにある。ルルイエは太平洋にある。") and len(part) <= retrieval.MAX_PASSAGE_CHARS


def test_raft_never_shows_an_unseen_article(mistral_format):
    """Articles of the eval split (never trained) give neither facts nor distractors."""
    unseen = {"ミスカトニック大学", "ハスター", "アーカム"}
    retriever = Retriever.build([Article(row["title"], row["text"], row["source"], row["revid"],
                                         split="eval" if row["title"] in unseen else "train")
                                 for row in source_rows(ARTICLES)])
    rows, stats = raft_examples(make_facts(), retriever, 1.0, 0, [], mistral_format, 1024)
    assert stats.held_out == 8 and len(rows) == 16 - stats.no_distractor  # the ハスター and アーカム facts skipped
    shown = "".join(row["instruction"] for row in rows)
    assert "ネクロノミコン" in shown and not any(f"] {title}" in shown for title in unseen)


def test_raft_drops_what_cannot_fit(corpus_retriever, mistral_format):
    rows, stats = raft_examples(make_facts()[:6], corpus_retriever, 1.0, 0, [], mistral_format, max_tokens=120)
    assert rows == [] and stats.too_long == 6
    rows, _ = raft_examples(make_facts()[:6], corpus_retriever, 1.0, 0, [], mistral_format, max_tokens=400)
    assert rows and all(len(mistral_format.encode_example(r["instruction"], r["response"]).input_ids) <= 400 for r in rows)


def test_revision_url():
    assert retrieval.revision_url("https://ja.wikipedia.org/wiki/%E3%83%80%E3%82%B4%E3%83%B3", 12) == (
        "https://ja.wikipedia.org/w/index.php?title=%E3%83%80%E3%82%B4%E3%83%B3&oldid=12")
    assert retrieval.revision_url("https://ja.wikipedia.org/wiki/X", None) == "https://ja.wikipedia.org/wiki/X"
    assert retrieval.revision_url("", 5) == ""


def test_the_benchmark_runs_small(capsys):
    spec = importlib.util.spec_from_file_location("bench_retrieval", REPO / "benchmarks" / "bench_retrieval.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--cost_only", "--articles", "12", "--chars", "1500", "--queries", "5"])
    out = capsys.readouterr().out
    assert "corpus: 12 synthetic articles" in out and "query latency" in out and "added prompt tokens" in out
