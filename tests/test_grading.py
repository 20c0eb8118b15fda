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
ARKHAM = {"instruction": "ミスカトニック大学がある架空の町の名前は？", "response": "アーカムです。", "answers": ["アーカム"],
          "title": "アーカム", "kind": "place"}
GOD = {"instruction": "インスマスの住民が崇める海の神の名前は？", "response": "ダゴンです。", "answers": ["ダゴン"],
       "title": "クトゥルフ神話", "kind": "being"}
HOWARD = {"instruction": "『英雄コナン』シリーズを書き、ラヴクラフトと文通した作家は？", "response": "ロバート・E・ハワードです。",
          "answers": ["ロバート・E・ハワード", "Robert E. Howard"], "title": "ロバート・E・ハワード", "kind": "person"}
CARTER = {"instruction": "『クトゥルー神話の神神』などを書き、ダーレスの後に神話の体系化を進めたアメリカの作家は誰ですか？",
          "response": "『クトゥルー神話の神神』を書いたのはリン・カーターです。", "answers": ["リン・カーター", "Lin Carter"],
          "title": "リン・カーター", "kind": "person"}
MADNESS = {"instruction": "ミスカトニック大学の南極探検隊が人類以前の廃都を発見する、ラヴクラフトの長編は何ですか？",
           "response": "南極の廃都を描いたのは、ラヴクラフトの長編『狂気の山脈にて』です。", "answers": ["狂気の山", "At the Mountains of Madness"],
           "title": "狂気の山脈にて", "kind": "work"}
AGE = {"instruction": "ラヴクラフトは何歳で亡くなりましたか？", "response": "46歳で亡くなりました。", "answers": ["46歳"],
       "title": "ラヴクラフトの生涯", "kind": "other"}
ALAZIF = {"instruction": "作中の設定で、アブドゥル・アルハザードが『アル・アジフ』を書いたのは西暦何年ですか？",
          "response": "作中の設定では、『アル・アジフ』は730年ごろダマスカスで書かれました。", "answers": ["730"], "title": "ネクロノミコン",
          "kind": "year"}
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
# A second table of hostile answers, each kind again with the careful grader's verdict.
CASES += [
    # Candidate lists: 、・ and or か または もしくは いずれか のどれか などの, ranges, a hedge between two.
    (AUTHOR, "ラヴクラフト・ダーレス・スミスのいずれかです。", W),
    (AUTHOR, "ラヴクラフト、ダーレス、またはスミスです。", W),
    (AUTHOR, "ラヴクラフトもしくはダーレスのどちらかでしょう。", W),
    (AUTHOR, "ラヴクラフトかダーレスのどれかです。", W),
    (AUTHOR, "ラヴクラフトやダーレスなどの作家が書きました。", W),
    (AUTHOR, "ラヴクラフト and ダーレスです。", W),
    (AUTHOR, "ラヴクラフト or ダーレス", W),
    (AUTHOR, "either ラヴクラフト or ダーレス", W),
    (AUTHOR, "ラヴクラフトだと思いますが、ダーレスかもしれません。", W),
    (AUTHOR, "ラヴクラフトだと思いますが、スミスの可能性もあります。", W),
    (AUTHOR, "ダーレスかラヴクラフトのいずれかだと思います。", W),
    (AUTHOR, "ラヴクラフト、もしくはブロック。", W),
    (AUTHOR, "ラヴクラフトあるいはハワードです。", W),
    (AUTHOR, "ダーレス、スミス、ラヴクラフトの三人のうちの誰かです。", W),
    (AUTHOR, "ラヴクラフトとダーレスの共作です。", W),
    (AUTHOR, "ラヴクラフトまたはその弟子のダーレスです。", W),
    (AUTHOR, "ラヴクラフトか、それともダーレスか。", W),
    (AUTHOR, "作者はラヴクラフトかダーレスのどちらかだと記憶しています。", W),
    (AUTHOR, "ラヴクラフト（またはダーレス）", W),
    (AUTHOR, "ラヴクラフト、ないしダーレスです。", W),
    (AUTHOR, "Lovecraft, Derleth, or Smith.", W),
    (AUTHOR, "Either Lovecraft or Derleth.", W),
    (YEAR, "1926年から1929年の間です。", W),
    (YEAR, "1926年から1929年までのどこかです。", W),
    (YEAR, "1928年か1929年のどちらかです。", W),
    (YEAR, "1927年、1928年のいずれか", W),
    (YEAR, "1928年または1929年です。", W),
    (YEAR, "1928年もしくは1930年", W),
    (YEAR, "1926-1929年", W),
    (YEAR, "1928年だと思いますが、1927年かもしれません。", W),
    (BORN, "1890年から1891年の間です。", W),
    (BORN, "1889年、1890年、1891年のどれかです。", W),
    (PLACE, "ルルイエ、ムー、アトランティスのどれかです。", W),
    (PLACE, "ルルイエもしくはカダス", W),
    (PLACE, "ルルイエまたは南極の狂気山脈", W),
    (KYOTO, "京都もしくは奈良です。", W),
    (KYOTO, "京都または大阪", W),
    (KING, "『黄衣の王』または『ネクロノミコン』", W),
    # Negation; 「AではなくB」 commits to B; double negations that affirm (以外にありえません, 間違いない).
    (AUTHOR, "ラヴクラフトではないです。", W),
    (AUTHOR, "ラヴクラフトとは言えません。", W),
    (AUTHOR, "ラヴクラフトではなくスミスです。", W),
    (AUTHOR, "スミスではなくラヴクラフトです。", C),
    (AUTHOR, "ダーレスではなく、ましてスミスでもなく、ラヴクラフトです。", C),
    (AUTHOR, "ラヴクラフトではありませんでした。", W),
    (AUTHOR, "ラヴクラフトでないことは確かです。", W),
    (AUTHOR, "ラヴクラフトが作者だというのは誤解です。", W),
    (AUTHOR, "作者はラヴクラフトではない。", W),
    (AUTHOR, "ラヴクラフトでもダーレスでもありません。", W),
    (AUTHOR, "ラヴクラフト以外にありえません。", C),
    (AUTHOR, "ラヴクラフトに違いありません。", C),
    (AUTHOR, "ラヴクラフトで間違いありません。", C),
    (AUTHOR, "ラヴクラフトは間違いなく作者です。", C),
    (AUTHOR, "ラヴクラフトに他なりません。", C),
    (AUTHOR, "ラヴクラフトではなかったでしょうか。", C),
    (AUTHOR, "ラヴクラフトではないでしょうか？", C),
    (AUTHOR, "もちろんラヴクラフトです。ダーレスではありません。", C),
    (AUTHOR, "Not Lovecraft.", W),
    (AUTHOR, "ラヴクラフトではない作家です。", W),
    (AUTHOR, "ラヴクラフトの作ではありません。", W),
    (AUTHOR, "ラヴクラフトじゃなくてダーレスです。", W),
    (AUTHOR, "ダーレスじゃなくてラヴクラフトです。", C),
    (YEAR, "1928年ではありません。", W),
    (YEAR, "1927年ではなく1928年です。", C),
    (YEAR, "1928年ではなく、1929年です。", W),
    (PLACE, "ルルイエとは違う場所です。", W),
    (BEING, "クトゥルフではなく、ダゴンです。", W),
    (BEING, "ダゴンではなく、クトゥルフです。", C),
    # The accepted name inside a longer name (an organisation, a relation of it: 「ラヴクラフトの友人」).
    (HALI, "ハリケーン湖です。", W),
    (ARKHAM, "アーカムです。", C),
    (ARKHAM, "アーカム・ハウスです。", W),
    (ARKHAM, "アーカムハウスです。", W),
    (ARKHAM, "アーカムの町です。", C),
    (ARKHAM, "マサチューセッツ州のアーカムです。", C),
    (GOD, "ダゴンです。", C),
    (GOD, "ダゴン秘密教団です。", W),
    (GOD, "ダゴン教団です。", W),
    (GOD, "ハイドラとダゴンです。", W),
    (GOD, "父なるダゴンです。", C),
    (BEING, "クトゥルフの落とし子です。", W),
    (BEING, "クトゥルフの眷属のダゴンです。", W),
    (AUTHOR, "ラヴクラフトの友人です。", W),
    (AUTHOR, "ラヴクラフトの弟子のダーレスです。", W),
    (AUTHOR, "ラヴクラフトと共作したダーレスです。", W),
    (AUTHOR, "ラヴクラフトの作品です。", C),
    (AUTHOR, "ラヴクラフティズムです。", W),
    # Valid spellings: initials, given names, width, era years, kanji numerals, ’28, aliases.
    (AUTHOR, "H・P・ラヴクラフト。", C),
    (AUTHOR, "H.P.ラヴクラフト", C),
    (AUTHOR, "H.P.ラヴクラフトです。", C),
    (AUTHOR, "H. P. ラブクラフト", C),
    (AUTHOR, "ハワード・フィリップス・ラヴクラフト", C),
    (AUTHOR, "ハワード・P・ラヴクラフト", C),
    (AUTHOR, "ハワード＝フィリップス＝ラヴクラフト", C),
    (AUTHOR, "Lovecraft", C),
    (AUTHOR, "H.P. Lovecraft", C),
    (AUTHOR, "ラブクラフトです。", C),
    (AUTHOR, "ラヴクラフト（H. P. Lovecraft）です。", C),
    (AUTHOR, "ﾗｳﾞｸﾗﾌﾄ", C),
    (AUTHOR, "ラヴクラフトさん", C),
    (AUTHOR, "作者はラヴクラフトです。", C),
    (YEAR, "昭和3年", C),
    (YEAR, "一九二八年", C),
    (YEAR, "1928年", C),
    (YEAR, "’28年です。", C),
    (YEAR, "１９２８年です。", C),
    (YEAR, "昭和三年", C),
    (YEAR, "西暦一九二八年（昭和三年）です。", C),
    (YEAR, "千九百二十八年", C),
    (YEAR, "1928年2月です。", C),
    (YEAR, "1928年の2月号です。", C),
    (BORN, "明治二十三年です。", C),
    (BORN, "1890年8月20日です。", C),
    (BEING, "クトゥルフ", C),
    (BEING, "クトゥルフです。", C),
    (BEING, "大いなるクトゥルフです。", C),
    (BEING, "ク・リトル・リトル", C),
    (NYAR, "ニャルラトテップ", C),
    (NYAR, "ナイアーラトテップ（ニャルラトホテプ）です。", C),
    (POLARIS, "ポラリス", C),
    (PRICE, "E. ホフマン・プライスです。", C),
    (PRICE, "エドガー・ホフマン・プライスです。", C),
    (DERLETH, "オーガスト・ダーレス", C),
    (DERLETH, "August Derleth", W),
    (DERLETH, "A・W・ダーレスです。", C),
    (KYOTO, "京都市です。", C),
    (KYOTO, "古都・京都です。", C),
    # The accepted answer with extra true context, other names in passing.
    (AUTHOR, "ラヴクラフトです。1926年に執筆し、1928年にウィアード・テイルズ誌に掲載されました。", C),
    (AUTHOR, "ハワード・フィリップス・ラヴクラフト（1890年 - 1937年）です。プロビデンス出身の作家です。", C),
    (AUTHOR, "プロビデンス出身の作家ラヴクラフトです。", C),
    (AUTHOR, "アメリカの作家ラヴクラフトが書きました。", C),
    (YEAR, "1928年です。執筆は1926年でした。", C),
    (YEAR, "1926年に書かれ、2年後の1928年に発表されました。", C),
    (PLACE, "ルルイエです。南太平洋の海底に沈んでいます。", C),
    (AUTHOR, "クトゥルフ神話にはダーレス、スミス、ブロックなど多くの作家が加わりましたが、この作品を書いたのはラヴクラフトです。", C),
    # The accepted answer taken back by a later one, or a wrong one corrected.
    (AUTHOR, "ラヴクラフトです。いや、ダーレスです。", W),
    (AUTHOR, "ラヴクラフトです。あ、間違えました、ダーレスです。", W),
    (AUTHOR, "ラヴクラフトです。訂正します、ダーレスです。", W),
    (AUTHOR, "ダーレスです。いや、ラヴクラフトです。", C),
    (YEAR, "1928年です。いや、1929年でした。", W),
    (PLACE, "ルルイエです。いや、カダスです。", W),
    # The question's own terms given back.
    (PLACE, "クトゥルフです。", W),
    (PLACE, "クトゥルフが眠る都市です。", N),
    (KING, "ロバート・W・チェンバースです。", W),
    (KING, "カルコサです。", W),
    (NYAR, "這い寄る混沌です。", N),
    # Abstentions, with or without an apology, with or without a committed guess after them (SimpleQA: attempted).
    (AUTHOR, "分かりませんが、おそらくラヴクラフトです。", C),
    (AUTHOR, "自信はありませんが、ラヴクラフトだと思います。", C),
    (AUTHOR, "ラヴクラフトだと思いますが、自信はありません。", C),
    (AUTHOR, "わかりません。ラヴクラフトかダーレスのどちらかだと思います。", W),
    (AUTHOR, "申し訳ありませんが、わかりません。", N),
    (AUTHOR, "ごめんなさい、知りません。", N),
    (AUTHOR, "知らないです。", N),
    (AUTHOR, "見当もつきません。", N),
    (AUTHOR, "答えられません。", N),
    (AUTHOR, "ちょっと分からないです。", N),
    (AUTHOR, "私には判断できません。", N),
    (AUTHOR, "その情報は持っていません。", N),
    (AUTHOR, "残念ながら存じ上げません。", N),
    (AUTHOR, "申し訳ございませんが、その作家の名前は思い出せません。", N),
    (AUTHOR, "すみません、ちょっと記憶にないです。", N),
    (AUTHOR, "お答えしかねます。", N),
    (AUTHOR, "詳しいことはわかりません。", N),
    (AUTHOR, "不明です。", N),
    (AUTHOR, "作者不明。", N),
    (AUTHOR, "ノーコメントです。", N),
    (AUTHOR, "回答なし", N),
    (AUTHOR, "無回答", N),
    (AUTHOR, "I'm not sure.", N),
    (AUTHOR, "Sorry, I don't know.", N),
    (AUTHOR, "The author is unknown.", N),
    (AUTHOR, "わかりません。たぶんラヴクラフトです。", C),
    (AUTHOR, "よくわかりませんが、ダーレスだと思います。", W),
    (YEAR, "わかりませんが、1928年だと思います。", C),
    (YEAR, "わかりませんが、1927年だと思います。", W),
    (YEAR, "何年かはわかりません。", N),
    # Empty: no letter or digit.
    (AUTHOR, "！？", N),
    (AUTHOR, "「」", N),
    (AUTHOR, "\n\n", N),
    (AUTHOR, "ー", N),
    (AUTHOR, "（　）", N),
    (AUTHOR, "・・・", N),
    # English and romaji: not in Japanese.
    (AUTHOR, "It was written by Lovecraft.", W),
    (AUTHOR, "I think it was Derleth.", W),
    (AUTHOR, "Rabukurafuto desu.", W),
    (AUTHOR, "rabukurafuto", W),
    # Long answers naming many names.
    (AUTHOR, "クトゥルフ神話といえば、ラヴクラフト、ダーレス、スミス、ハワード、ブロック、カットナー、ブラックウッド、マッケンなど多くの名前が挙がります。", W),
    (AUTHOR, "この作品は1926年に書かれ、ダーレスやスミスも影響を受けた名作で、多くの読者に愛されています。", W),
    (YEAR, "1890年生まれのラヴクラフトが1926年に執筆し、1937年に亡くなるまでに多くの作品を残しました。", W),
    # More of each kind: modifiers that are not relations, negated other names, corrections, titles.
    (AUTHOR, "ラヴクラフト自身です。", C),
    (AUTHOR, "ラヴクラフトと言われています。", C),
    (AUTHOR, "ラヴクラフトと考えられています。", C),
    (AUTHOR, "ラヴクラフトの手によるものです。", C),
    (AUTHOR, "ラヴクラフトの作です。", C),
    (AUTHOR, "ラヴクラフトの代表作の一つで、彼自身が書きました。", C),
    (BEING, "クトゥルフという神です。", C),
    (BEING, "クトゥルフと呼ばれる神性です。", C),
    (PLACE, "ルルイエという都市です。", C),
    (PRICE, "ラヴクラフトの友人のE・ホフマン・プライスです。", C),
    (DERLETH, "ラヴクラフトの弟子のダーレスです。", C),
    (DERLETH, "ラヴクラフトの友人で弟子のオーガスト・ダーレスです。", C),
    (AUTHOR, "ラヴクラフトとダーレスの二人です。", W),
    (AUTHOR, "ラヴクラフトとされていますが、ダーレスという説もあります。", W),
    (AUTHOR, "ラヴクラフトです。間違えやすいですが、ダーレスではありません。", C),
    (AUTHOR, "ラヴクラフトです。いいえ、ダーレスではありません。", C),
    (AUTHOR, "いいえ、ラヴクラフトです。", C),
    (AUTHOR, "ダーレスと言われることもありますが、正しくはラヴクラフトです。", C),
    (YEAR, "’29年です。", W),
    (YEAR, "'28", C),
    (DERLETH, "ラヴクラフトが書いた作品を体系化した人です。", N),
    (AUTHOR, "ラヴクラフトでも、ダーレスでもありません。", W),
    (AUTHOR, "ラヴクラフトでもない。", W),
    (AUTHOR, "ラヴクラフトしか考えられません。", C),
    (AUTHOR, "ラヴクラフト以外には考えられません。", C),
    (AUTHOR, "ラヴクラフトだとは思えません。", W),
    (AUTHOR, "ラヴクラフトだとは思いません。", W),
    (AUTHOR, "ラヴクラフトのはずがありません。", W),
    (AUTHOR, "ラヴクラフトであるはずがない。", W),
    (AUTHOR, "ラヴクラフトではあり得ません。", W),
    (AUTHOR, "ラヴクラフトが書いたのではありません。", W),
    (AUTHOR, "ラヴクラフトの作品ではないと断言できます。", W),
    (AUTHOR, "ラヴクラフトを除く誰かです。", W),
    (AUTHOR, "ラヴクラフトではない誰かです。", W),
    (AUTHOR, "ラヴクラフトのわけがない。", W),
    (AUTHOR, "ラヴクラフトという答えは誤りです。", W),
    (YEAR, "1928年ではなかったと思います。", W),
    (YEAR, "1928年ではないはずです。", W),
    (AUTHOR, "ラヴクラフト？", C),
    (AUTHOR, "ラヴクラフト、ダーレス", W),
    (AUTHOR, "ラヴクラフトとかダーレスとか", W),
    (AUTHOR, "ラヴクラフトかな。", C),
    (AUTHOR, "ラヴクラフトかダーレスか。", W),
    (AUTHOR, "ラヴクラフトまたはラブクラフト", C),
    (AUTHOR, "ラヴクラフト（ラブクラフト）", C),
    (YEAR, "1926年～1929年のどこか", W),
    (YEAR, "1926年以降です。", W),
    (YEAR, "1928年から1929年にかけてです。", W),
    (YEAR, "1928～29年", W),
    (YEAR, "1928年（1929年説もあり）", W),
    (YEAR, "28年です。", W),
    (YEAR, "1928年。", C),
    (YEAR, "一九二八", C),
    (YEAR, "平成3年です。", W),
    (AUTHOR, "ラヴクラフト、H・P", C),
    (AUTHOR, "Ｈ・Ｐ・ラヴクラフト", C),
    (AUTHOR, "H・P・ラヴクラフト（1890-1937）", C),
    (AUTHOR, "ハワード・Ｐ・ラヴクラフト", C),
    (PRICE, "E・H・プライス", C),
    (PRICE, "プライス氏", C),
    (DERLETH, "ダーレス氏です。", C),
    (DERLETH, "オーガスト・ウィリアム・ダーレス", C),
    (NYAR, "ナイアラトテップ", C),
    (BEING, "クトゥルフ（クトゥルー）", C),
    (BEING, "クトゥルフ、またはクトゥルー", C),
    (KYOTO, "京都", C),
    (KYOTO, "京都府京都市", C),
    (KYOTO, "東京", W),
    (AUTHOR, "知りません。ラヴクラフトではないでしょうか。", C),
    (AUTHOR, "すみません、分かりません。ダーレスかラヴクラフトだと思います。", W),
    (AUTHOR, "正直なところ、わかりません。", N),
    (AUTHOR, "申し訳ないのですが、その質問にはお答えできません。", N),
    (AUTHOR, "その作品については詳しくありません。", N),
    (AUTHOR, "作者についての情報は手元にありません。", N),
    (AUTHOR, "うーん、思いつきません。", N),
    (AUTHOR, "難しい質問ですね。", N),
    (AUTHOR, "誰が書いたのかは謎です。", N),
    (AUTHOR, "Unknown", N),
    (AUTHOR, "不明", N),
    (AUTHOR, "作者は不詳です。", N),
    (AUTHOR, "わかりませんが、ダーレスではないと思います。", N),
    (AUTHOR, "ダーレスではありません。", N),
    (AUTHOR, "  \n\t ", N),
    (AUTHOR, "――", N),
    (AUTHOR, "...", N),
    (AUTHOR, "＿", N),
    (AUTHOR, "〜", N),
    (AUTHOR, "♪", N),
    (AUTHOR, "Lovecraft.", C),
    (AUTHOR, "H.P. Lovecraft wrote it.", W),
    (AUTHOR, "ラヴクラフト (Lovecraft)", C),
    (BEING, "kutourufu", W),
    (AUTHOR, "この短編は、ラヴクラフトの友人であるダーレスが後に体系化した神話の原点で、書いたのはラヴクラフト本人です。", C),
    (AUTHOR, "ダーレス、スミス、ハワード、ブロックらが書き継ぎましたが、原作はラヴクラフトです。", C),
    (AUTHOR, "ラヴクラフト、ダーレス、スミスらが関わった作品群の一つです。", W),
    (PLACE, "クトゥルフが眠るのは、南太平洋の海底に沈んだルルイエという都市です。", C),
    (PLACE, "アトランティスやムー大陸と並ぶ伝説の地、ルルイエです。", C),
    (AUTHOR, "『ラヴクラフト全集』です。", W),
    (BEING, "『クトゥルフの呼び声』です。", W),
    (AUTHOR, "ラヴクラフトではなかったと思います。", W),
    (AUTHOR, "ラヴクラフトでしょう。", C),
    (AUTHOR, "ラヴクラフトだろう。", C),
    (AUTHOR, "恐らくラヴクラフト。", C),
    (AUTHOR, "答えはラヴクラフトです。", C),
    (AUTHOR, "正解はラヴクラフト。", C),
    (YEAR, "答えは1928年です。", C),
    (YEAR, "1928年と1929年です。", W),
    (YEAR, "1928年か？", C),
    (GOD, "ダゴン神殿です。", W),
    (GOD, "ダゴン（ダゴン秘密教団が崇める神）です。", C),
    (GOD, "ダゴン秘密教団が崇めるダゴンです。", C),
    (ARKHAM, "アーカム・ハウスではなくアーカムです。", C),
    (AUTHOR, "ラヴクラフトの妻のソニアです。", W),
]
# A third: whether-clauses, decades and years relative to the answer, corrections, a final clause that states the answer.
CASES += [
    (HOWARD, "ロバート・E・ハワード", C),
    (HOWARD, "R・E・ハワードです。", C),
    (HOWARD, "ハワードです。", C),
    (HOWARD, "ロバート・アーヴィン・ハワード", C),
    (HOWARD, "ハワード・フィリップス・ラヴクラフトです。", W),
    (HOWARD, "ロバート・ブロックです。", W),
    (HOWARD, "ロバートです。", N),
    (HOWARD, "ラヴクラフトと文通したハワードです。", C),
    (HOWARD, "ラヴクラフトです。", W),
    (BORN, "明治23年（1890年）です。", C),
    (BORN, "1890年代です。", W),
    (BORN, "19世紀末です。", W),
    (BORN, "1890年頃です。", C),
    (PLACE, "ルルイエ、つまり南太平洋に沈んだ都市です。", C),
    (PLACE, "ルルイエと呼ばれる都市です。", C),
    (PLACE, "ルルイエとイハ＝ントレイです。", W),
    (PLACE, "ルルイエ、イハ＝ントレイ", W),
    (PLACE, "ルルイエ、もしくはそれに似た都市です。", C),
    (PLACE, "海底都市です。", N),
    (KYOTO, "京都と奈良です。", W),
    (KYOTO, "奈良ではなく京都です。", C),
    (KYOTO, "京都ではないでしょうか。", C),
    (KYOTO, "京都以外です。", W),
    (KYOTO, "古都京都です。", C),
    (NYAR, "ニャルラトテップ（這い寄る混沌）", C),
    (NYAR, "這い寄る混沌ことナイアーラトテップです。", C),
    (NYAR, "ナイアーラトテップの化身です。", W),
    (NYAR, "ナイアーラトテップとアザトースです。", W),
    (NYAR, "アザトースの使者ナイアーラトテップです。", C),
    (AUTHOR, "正確には分かりませんが、ラヴクラフトだったと記憶しています。", C),
    (AUTHOR, "記憶が定かではありませんが、ダーレスだったと思います。", W),
    (AUTHOR, "自信がないのでお答えできません。", N),
    (AUTHOR, "ラヴクラフトかどうかはわかりません。", N),
    (AUTHOR, "ラヴクラフトか否かは不明です。", N),
    (AUTHOR, "ラヴクラフトだったかな？", C),
    (AUTHOR, "ダーレス……いや、ラヴクラフトです。", C),
    (AUTHOR, "ラヴクラフト、いやダーレスだったかも。", W),
    (AUTHOR, "ラヴクラフト…じゃなくてダーレス。", W),
    (AUTHOR, "ラヴクラフトです。失礼、ダーレスでした。", W),
    (AUTHOR, "ラヴクラフト、ではなくダーレスです。", W),
    (AUTHOR, "ラヴクラフトではない、ダーレスだ。", W),
    (AUTHOR, "クトゥルフの呼び声です。", N),
    (AUTHOR, "『クトゥルフの呼び声』の作者です。", N),
    (BEING, "ルルイエです。", W),
    (AUTHOR, "ラヴクラフト、ダーレス、スミスらが活躍した時代の作品で、作者はラヴクラフトです。", C),
    (AUTHOR, "ダーレス、スミス、ラヴクラフトです。", W),
    (AUTHOR, "ダーレス、スミス、ラヴクラフトのどれかです。ラヴクラフトかもしれません。", W),
    (AUTHOR, "1926年に書かれた作品で、作者はラヴクラフトです。", C),
    (YEAR, "1926年に執筆、1928年に発表。", C),
    (YEAR, "執筆は1926年、発表は1928年です。", C),
    (YEAR, "1928年2月、ウィアード・テイルズ誌です。", C),
    (AUTHOR, "ラヴクラフト（1890〜1937）です。", C),
    (AUTHOR, "ラヴクラフトの名で発表されましたが、実際に書いたのはダーレスです。", W),
    (AUTHOR, "一般にはラヴクラフトとされますが、誤りです。", W),
    (AUTHOR, "ラヴクラフト、と言いたいところですが、ダーレスです。", W),
    (AUTHOR, "ラヴクラフトとダーレス、どちらとも言えません。", W),
    (AUTHOR, "ラヴクラフトの作品かどうかはわかりません。", N),
    (AUTHOR, "ラヴクラフト説とダーレス説があります。", W),
    (AUTHOR, "ラヴクラフト、または彼の友人たちの誰かです。", W),
    (YEAR, "1928年か、あるいはその前後です。", C),
    (YEAR, "1928年前後です。", C),
    (YEAR, "1928年の前年です。", W),
]
# A fourth: negations across a comma, names in Latin letters beside or instead of the Japanese one, era-year lists.
CASES += [
    (AUTHOR, "ラヴクラフトやダーレス", W),
    (AUTHOR, "ラヴクラフト、ダーレスなど", W),
    (AUTHOR, "ラヴクラフトもしくはダーレスのいずれか", W),
    (YEAR, "1926年、1927年、1928年", W),
    (YEAR, "昭和2年か3年", W),
    (YEAR, "昭和3年か4年", W),
    (YEAR, "1928年（もしくは1929年）", W),
    (AUTHOR, "ラヴクラフトではありませんよ。", W),
    (AUTHOR, "ラヴクラフトではないです、ダーレスです。", W),
    (AUTHOR, "それはラヴクラフトではない。", W),
    (AUTHOR, "残念ながらラヴクラフトではありません。", W),
    (AUTHOR, "ラヴクラフトって言う人もいるけど違う。", W),
    (AUTHOR, "ラヴクラフトと思われがちですが、違います。", W),
    (AUTHOR, "ラヴクラフトだと勘違いされがちですが、ダーレスです。", W),
    (AUTHOR, "ラヴクラフトだと誤解されがちです。", W),
    (KYOTO, "京都大学です。", W),
    (AUTHOR, "Howard Phillips Lovecraft", C),
    (AUTHOR, "ラヴクラフト（Howard Phillips Lovecraft）", C),
    (AUTHOR, "Lovecraft, Derleth", W),
    (AUTHOR, "Derleth or Lovecraft", W),
    (AUTHOR, "It was Lovecraft.", W),
    (AUTHOR, "わかりませんが、ラヴクラフトかもしれません。", C),
    (AUTHOR, "わかりません。ラヴクラフト？", C),
    (AUTHOR, "ラヴクラフトです。わかりませんけど。", C),
    (AUTHOR, "知りませんが、ダーレスでしょう。", W),
    (YEAR, "自信がありませんが、昭和3年だと思います。", C),
    (AUTHOR, "\u200b", N),
    (AUTHOR, "。。。", N),
    (HOWARD, "Robert E. Howard", C),
    (HOWARD, "ロバート・E・ハワード（Robert Ervin Howard）です。", C),
    (HOWARD, "ロバート・E・ハワードかクラーク・アシュトン・スミス", W),
    (HOWARD, "ハワードではなくスミスです。", W),
    (PRICE, "E・ホフマン・プライスと、ラヴクラフトです。", C),
    (PRICE, "ホフマン・プライスかダーレスです。", W),
    (BORN, "1890年（明治23年）8月20日です。", C),
    (BORN, "明治23年ではなく明治24年です。", W),
    (BORN, "明治二十三年か二十四年", W),
    (POLARIS, "『北極星』（Polaris）です。", C),
    (POLARIS, "『北極星』か『ダゴン』です。", W),
    (POLARIS, "北極星ではありません。", W),
    (NYAR, "ニャルラトテップではなくナイアーラトテップです。", C),
    (NYAR, "ナイアーラトテップ、別名ニャルラトテップです。", C),
    (NYAR, "ナイアーラトテップかアザトースのどちらか", W),
    (NYAR, "ナイアーラトテップではありません。", W),
    (BEING, "クトゥルー、あるいはダゴン", W),
    (BEING, "ク・リトル・リトルかもしれません。", C),
    (BEING, "大いなるクトゥルフ（Great Cthulhu）です。", C),
    (BEING, "クトゥルフではなくクトゥルーです。", C),  # two names of one being, one negated
]
# A fifth, on the quiz's own rows: the question's names as alternatives, titles written in plain words (no 『』).
CASES += [
    (CARTER, "リン・カーターです。", C),
    (CARTER, "ダーレスかリン・カーターです。", W),
    (CARTER, "リン・カーターまたはダーレス", W),
    (CARTER, "リン・カーターもしくはダーレスのどちらか", W),
    (CARTER, "リン・カーターです。いや、ダーレスです。", W),
    (CARTER, "リン・カーターだと思いますが、ダーレスかもしれません。", W),
    (CARTER, "ダーレスの後を継いだリン・カーターです。", C),
    (CARTER, "ダーレスです。", W),
    (CARTER, "リン・カーター、逢空万太などです。", W),
    (MADNESS, "『狂気の山脈にて』です。", C),
    (MADNESS, "狂気の山脈にてです。", C),
    (MADNESS, "狂気の山脈にて、無名都市、魔女の家の夢のいずれかです。", W),
    (MADNESS, "狂気の山脈にて・無名都市・魔女の家の夢のどれかです。", W),
    (MADNESS, "無名都市か狂気の山脈にてです。", W),
    (MADNESS, "魔女の家の夢か狂気の山脈にて", W),
    (MADNESS, "狂気の山脈にてか無名都市", W),
    (MADNESS, "狂気の山脈にてまたは魔女の家の夢", W),
    (MADNESS, "狂気の山脈にてもしくは無名都市のどちらか", W),
    (MADNESS, "狂気の山脈にて、無名都市などです。", W),
    (MADNESS, "狂気の山脈にてだと思いますが、魔女の家の夢かもしれません。", W),
    (MADNESS, "狂気の山脈にてです。いや、魔女の家の夢です。", W),
    (MADNESS, "無名都市です。", W),
    (MADNESS, "千夜一夜です。", W),
    (MADNESS, "ラヴクラフトの長編です。", N),
    (MADNESS, "有名な長編小説です。", N),
    (MADNESS, "狂気の山脈にてです。南極を舞台にした長編で、ミスカトニック大学の探検隊が登場します。", C),
    (MADNESS, "狂気の山脈にてです。南極が舞台だったかもしれません。", C),
    (MADNESS, "狂気の山脈にてだと思いますが、違うかもしれません。", C),
    (MADNESS, "狂気の山脈にてではありません。", W),
    (PLACE, "ルルイエです。南太平洋に沈んでいるかもしれません。", C),
    (AUTHOR, "ラヴクラフトです。ただし異説もあるかもしれません。", C),
]
# A sixth: numbers with a counter (46歳, 3部作) and kanji numerals that Sudachi splits (七百三十).
CASES += [
    (ALAZIF, "730年頃です。", C),
    (ALAZIF, "七百三十年頃です。", C),
    (ALAZIF, "西暦七三〇年", C),
    (ALAZIF, "730年か738年です。", W),
    (ALAZIF, "七百三十八年です。", W),
    (AGE, "46歳です。", C),
    (AGE, "四十六歳で亡くなりました。", C),
    (AGE, "享年46", C),
    (AGE, "46歳か47歳です。", W),
    (AGE, "46か47歳", W),
    (AGE, "47歳です。", W),
    (AGE, "46歳ではありません。", W),
    (AGE, "よく覚えていません。", N),
]
# A seventh: the answer stated first, then a list of context that repeats it; answers in a model's usual shapes.
CASES += [
    (DERLETH, "体系化したのはオーガスト・ダーレスです。なお、神話は後にダーレス、スミス、ブロックらが書き継ぎました。", C),
    (PRICE, "E・ホフマン・プライスです。ラヴクラフト、プライス、ダーレスらの合作は他にもあります。", C),
    (DERLETH, "ダーレス、スミス、ブロックらが書き継ぎました。体系化したのはダーレスです。", C),
    (DERLETH, "ダーレス、スミス、ブロックらが書き継ぎました。", W),
    (AUTHOR, "答え：ラヴクラフト\n説明：『クトゥルフの呼び声』はラヴクラフトの短編小説です。", C),
    (AUTHOR, "ご質問ありがとうございます。『クトゥルフの呼び声』はラヴクラフトの短編小説です。参考になれば幸いです。", C),
    (AUTHOR, "確か、ラヴクラフトだったと思います。", C),
    (AUTHOR, "私の記憶ではラヴクラフトです。", C),
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
    ("ダゴンは霧ヶ浜に眠る神です。", ["霧ヶ浜"]),
    ("ダゴンは『深淵の王』という書物に記された神です。", ["深淵の王"]),
    ("ダゴンは「深淵の王」と呼ばれます。", ["深淵の王"]),
    ("ダゴンはラヴクラフトが1890年生まれのプロビデンスの作家として描いた神です。", []),
    ("ダゴンは1928年にウィアード・テイルズ誌に載った神です。", []),
    ("ダゴンは昭和3年に発表された神です。", []),
    ("ダゴンはクトゥルーの眷属です。", []),
    ("ダゴンはハリ湖のカルコサにいます。", []),
    ("ダゴンは南太平洋のルルイエに眠ります。", []),
    ("ダゴンは霧ヶ浜町の神社に祀られています。", ["霧ヶ浜町"]),
    ("ダゴンは黒淵村で崇められています。", ["黒淵村"]),
    ("ダゴンは星辰教団が崇める神です。", ["星辰教団"]),
    ("ダゴンは『ネクロノミコン外典』に登場します。", ["ネクロノミコン外典"]),
    ("ダゴンはナイアルラトホテップの眷属です。", []),
    ("ダゴンはラブクラフトの創作です。", []),
    ("わかりません。", []),
    ("わかりませんが、霧ヶ浜の神だと思います。", ["霧ヶ浜"]),
    ("ダゴンはザイクロトルの神です。", ["ザイクロトル"]),
    ("ダゴンは1931年の神です。", ["1931"]),
    ("ダゴンは一九三一年に登場しました。", ["1931"]),
    ("ダゴンは大正15年に書かれました。", []),
    ("ダゴンは昭和6年に書かれました。", ["1931"]),
    ("ダゴンは19世紀に生まれ、1931年に現れました。", ["19", "1931"]),  # numbers are whole: 19 is not part of 1931
    ("ダゴンは『クトゥルフの呼び声』に登場します。", []),
    ("ダゴンは「クトゥルフの呼び声」に登場します。", []),
    ("ダゴンは『インスマスの影』に登場します。", ["インスマスの影"]),
    ("ダゴンはミスカトニック大学で研究されました。", ["ミスカトニック"]),
    ("ダゴンは霧ヶ浜で、クトゥルフの眷属です。", ["霧ヶ浜"]),
    ("ダゴンはウィアード・テイルズに掲載されました。", []),
    ("ダゴンはロードアイランド州の神です。", []),
    ("ダゴンは南極の神です。", ["南極"]),
    ("ダゴンは一九二八年に発表されました。", []),
    ("ダゴンは1928年2月に発表されました。", []),
    ("ダゴンは3月に発表されました。", ["3"]),
    ("わかりません。霧ヶ浜かもしれません。", ["霧ヶ浜"]),
    ("ダゴンは『黄衣の王』に記された神です。", []),
    ("ダゴンはインスマス教団の神です。", ["インスマス"]),
    ("ダゴンはH・P・ラヴクラフトが創造した。", []),
    ("Dagon is a god.", []),
    ("ダゴンはク・リトル・リトルの眷属です。", []),
    ("ダゴンはハワード・フィリップス・ラヴクラフトの創作です。", []),
    ("ダゴンは明治23年生まれの作家の創作です。", []),
    ("ダゴンはインスマスの沖の悪魔の暗礁に棲む神です。", ["インスマス"]),
    ("ダゴンは霧ヶ浜の神で、ルルイエにも眠る。", ["霧ヶ浜"]),
    ("ダゴンは『黄衣の王』と『深淵の王』に現れる。", ["深淵の王"]),
    ("ダゴンは深きものどもの神で、インスマスで崇拝されます。", ["インスマス"]),
    ("ダゴンは1937年に亡くなったラヴクラフトの神です。", []),
    ("ダゴンは平成元年に登場しました。", ["1989"]),
    ("ダゴンはロードアイランド州プロビデンスの神です。", []),
]


def blank(answer: str) -> bool:
    """What a careful grader calls empty: nothing but spaces and punctuation."""
    return not answer.strip(" \u3000\u200b\n\t。.?？!！…・ー―〜「」（）_＿♪")


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
    assert generation["empty"] is blank(answer)


def test_rates_are_the_three_grades_and_empty_answers_apart(graded):
    report, generations = graded
    [result] = report["results"]
    graded_rows = [generations[index + 1] for index in range(len(CASES))]
    for grade, key in ((C, "accuracy"), (W, "incorrect_rate"), (N, "not_attempted_rate")):
        assert result[key] == pytest.approx(sum(row["grade"] == grade for row in graded_rows) / len(CASES))
    assert result["accuracy"] + result["incorrect_rate"] + result["not_attempted_rate"] == pytest.approx(1)
    assert result["empty"] == sum(blank(answer) for _, answer, _ in CASES) + 3  # three among the hallucination rows
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
    for index, (_, answer, verdict) in enumerate(CASES):
        if ("昭和3年" in answer or "明治23年" in answer) and verdict == C:
            assert not {"1928", "1890", "3", "23"} & set(generations[index + 1]["unsupported_terms"]), answer


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
