"""An adversarial probe of the writer's checks through prepare_data.main: Japanese Wikipedia-like articles, a writer
that offers true facts in varied natural Japanese and false ones of every kind the checks must stop (with
verbatim-looking evidence), and a verifier that answers truthfully (it knows which facts are true) or lazily
(always true). No false fact may reach a split with the truthful verifier; every true one must; with the lazy
verifier the text checks alone must stop every false kind they can see (KINDS names the rest)."""

import json
import re

import pytest
from mediawiki_server import MediaWikiServer, Wiki
from openai_server import OpenAIServer, grounded_verdict

import prepare_data

KEY = "sk-loopback-secret-0123456789"
HPL, NEC, WIL, INS = "ハワード・フィリップス・ラヴクラフト", "ネクロノミコン", "ウィルバー・ウェイトリー", "インスマスを覆う影"
CTH = "クトゥルフ"
PAGES = {
    CTH: "クトゥルフ（Cthulhu）は、ハワード・フィリップス・ラヴクラフトの小説『クトゥルフの呼び声』に登場する架空の神性。"
         "太平洋の海底に沈んだ都市ルルイエで眠っているとされる。タコに似た頭部と、ドラゴンのような翼を持つ姿で描かれる。"
         "深きものどもに崇拝されている。\n",
    HPL: "ハワード・フィリップス・ラヴクラフト（Howard Phillips Lovecraft、1890年8月20日 - 1937年3月15日）は、"
         "アメリカ合衆国の小説家。ロードアイランド州プロビデンスに生まれた。怪奇小説や幻想小説を執筆し、"
         "クトゥルフ神話の創始者として知られる。\n\n"
         "== 生涯 ==\n父ウィンフィールド・スコット・ラヴクラフトは1898年に死去し、ラヴクラフトは母サラ・スーザンと祖父に"
         "育てられた。1924年にソニア・グリーンと結婚したが、1929年に離婚した。代表作『クトゥルフの呼び声』は1926年に"
         "執筆され、1928年に雑誌『ウィアード・テイルズ』に掲載された。\n",
    NEC: "『ネクロノミコン』（Necronomicon）は、ハワード・フィリップス・ラヴクラフトの作品に登場する架空の魔道書。"
         "作中では、狂える詩人アブドゥル・アルハズレッドが730年頃にダマスカスで著したとされ、原題は『アル・アジフ』という。"
         "950年にテオドラス・フィレタスがギリシア語に翻訳し、1228年にオラウス・ウォルミウスがラテン語に翻訳したとされる。"
         "初出は1924年の短編「猟犬」である。\n",
    WIL: "ウィルバー・ウェイトリーは、ラヴクラフトの短編小説「ダンウィッチの怪」に登場する人物。"
         "ラヴィニア・ウェイトリーの息子で、父はヨグ＝ソトースである。1913年2月2日にダンウィッチで生まれ、"
         "1928年8月にミスカトニック大学の図書館に侵入しようとして番犬に殺された。祖父のウェイトリー老人は1924年に死去した。\n",
    INS: "『インスマスを覆う影』（原題: The Shadow over Innsmouth）は、ラヴクラフトが1931年に執筆した中編小説。"
         "1936年にヴィジョナリー・パブリッシングから単行本として刊行された。マサチューセッツ州の寂れた港町インスマスを"
         "舞台に、深きものどもと交配した住民と、彼らが崇拝する父なるダゴンを描く。\n\n"
         "== あらすじ ==\n語り手の青年は1927年、成人を祝う旅の途中でインスマスを訪れる。酒浸りの老人ザドック・アレンから、"
         "船長オーベッド・マーシュが南洋の島で深きものどもと取引をしたという話を聞く。\n",
}
LEAD = "（導入部）"


def fact(kind, page, section, evidence, short, answer, *questions) -> dict:
    return {"kind": kind, "page": page, "section": section,
            "fact": {"evidence": evidence, "short_answer": short, "answer": answer, "questions": list(questions)}}


TRUE = [
    fact("English name", CTH, LEAD, "クトゥルフ（Cthulhu）は", "Cthulhu", "クトゥルフの英語表記はCthulhuです。",
         "クトゥルフの英語表記は何ですか？", "クトゥルフは英語でどう綴りますか？"),
    fact("resting place", CTH, LEAD, "太平洋の海底に沈んだ都市ルルイエで眠っているとされる", "ルルイエ",
         "クトゥルフは太平洋の海底に沈んだ都市ルルイエで眠っているとされます。",
         "クトゥルフが眠っているとされる海底都市の名前は？", "クトゥルーの封印場所とされる都市はどこですか？"),  # a redirect
    fact("appearance", CTH, LEAD, "タコに似た頭部と、ドラゴンのような翼を持つ姿で描かれる", "タコ",
         "クトゥルフはタコに似た頭部を持つ姿で描かれます。",
         "Cthulhuの頭部は何に似ていますか？", "クトゥルフの外見的特徴として、頭は何に似た形ですか？"),  # the lead's name
    fact("worshippers", CTH, LEAD, "深きものどもに崇拝されている", "深きものども", "クトゥルフは深きものどもに崇拝されています。",
         "クトゥルフを崇拝しているのは誰ですか？", "クトゥルフの信奉者として知られる種族は何ですか？"),
    fact("work (real author)", CTH, LEAD, "ハワード・フィリップス・ラヴクラフトの小説『クトゥルフの呼び声』に登場する",
         "ハワード・フィリップス・ラヴクラフト", "クトゥルフを生み出した作家はハワード・フィリップス・ラヴクラフトです。",
         "クトゥルフを創造した作家は誰ですか？", "クトゥルフの生みの親の小説家は誰ですか？"),
    fact("birth date", HPL, LEAD, "1890年8月20日 - 1937年3月15日", "1890年8月20日", "ラヴクラフトは1890年8月20日に生まれました。",
         "ラヴクラフトの生年月日はいつですか？", "ハワード・フィリップス・ラヴクラフトはいつ生まれましたか？"),
    fact("death year", HPL, LEAD, "1890年8月20日 - 1937年3月15日", "1937年", "ラヴクラフトは1937年に亡くなりました。",
         "ラヴクラフトが亡くなったのは何年ですか？", "ラヴクラフトの没年を教えてください。"),
    fact("birthplace", HPL, LEAD, "ロードアイランド州プロビデンスに生まれた", "プロビデンス",
         "ラヴクラフトはロードアイランド州プロビデンスの出身です。",
         "ラヴクラフトの出身地はどこですか？", "H・P・ラヴクラフトはどこで生まれましたか？"),
    fact("known for", HPL, LEAD, "クトゥルフ神話の創始者として知られる", "クトゥルフ神話",
         "ラヴクラフトはクトゥルフ神話の創始者として知られています。",
         "ラヴクラフトは何の創始者として知られていますか？", "ラヴクラフトが創始した神話体系は何ですか？"),
    fact("father", HPL, "生涯", "父ウィンフィールド・スコット・ラヴクラフトは1898年に死去し", "ウィンフィールド・スコット・ラヴクラフト",
         "ラヴクラフトの父はウィンフィールド・スコット・ラヴクラフトです。",
         "ラヴクラフトの父親は誰ですか？", "ハワード・フィリップス・ラヴクラフトの父の名前は？"),
    fact("spouse", HPL, "生涯", "1924年にソニア・グリーンと結婚したが、1929年に離婚した", "ソニア・グリーン",
         "ラヴクラフトは1924年にソニア・グリーンと結婚しました。",
         "ラヴクラフトが結婚した相手は誰ですか？", "ラヴクラフトの妻の名前を教えてください。"),
    fact("publication year", HPL, "生涯", "代表作『クトゥルフの呼び声』は1926年に執筆され、1928年に雑誌『ウィアード・テイルズ』に掲載された",
         "1928年", "ラヴクラフトの『クトゥルフの呼び声』は1928年に雑誌『ウィアード・テイルズ』に掲載されました。",
         "ラヴクラフトの『クトゥルフの呼び声』が雑誌に載ったのは何年ですか？",
         "ラヴクラフトの代表作『クトゥルフの呼び声』はいつ雑誌に掲載されましたか？"),
    fact("in-story author", NEC, LEAD, "狂える詩人アブドゥル・アルハズレッドが730年頃にダマスカスで著したとされ",
         "アブドゥル・アルハズレッド", "作中でネクロノミコンを著したとされるのは、狂える詩人アブドゥル・アルハズレッドです。",
         "ネクロノミコンの作中での著者は誰ですか？", "『ネクロノミコン』を書いたとされる人物は誰ですか？"),
    fact("original title", NEC, LEAD, "原題は『アル・アジフ』という", "アル・アジフ", "ネクロノミコンの原題は『アル・アジフ』です。",
         "ネクロノミコンの原題は何ですか？", "ネクロノミコンはもともと何という題名でしたか？"),
    fact("first appearance", NEC, LEAD, "初出は1924年の短編「猟犬」である", "猟犬",
         "ネクロノミコンが初めて登場したのは1924年の短編「猟犬」です。",
         "ネクロノミコンが初めて登場した作品は何ですか？", "ネクロノミコンの初出はどの短編ですか？"),
    fact("translator", NEC, LEAD, "1228年にオラウス・ウォルミウスがラテン語に翻訳したとされる", "オラウス・ウォルミウス",
         "ネクロノミコンをラテン語に翻訳したとされるのはオラウス・ウォルミウスです。",
         "ネクロノミコンをラテン語に訳したのは誰ですか？", "ネクロノミコンのラテン語訳者は誰とされていますか？"),
    fact("father (short name)", WIL, LEAD, "父はヨグ＝ソトースである", "ヨグ＝ソトース", "ウィルバー・ウェイトリーの父はヨグ＝ソトースです。",
         "ウィルバー・ウェイトリーの父親は誰ですか？", "ウィルバーの父は何者ですか？"),
    fact("mother (from 息子)", WIL, LEAD, "ラヴィニア・ウェイトリーの息子で", "ラヴィニア・ウェイトリー",
         "ウィルバー・ウェイトリーの母はラヴィニア・ウェイトリーです。",
         "ウィルバー・ウェイトリーの母親は誰ですか？", "ウィルバーを産んだのは誰ですか？"),
    fact("birthplace (village)", WIL, LEAD, "1913年2月2日にダンウィッチで生まれ", "ダンウィッチ", "ウィルバーはダンウィッチで生まれました。",
         "ウィルバー・ウェイトリーはどこで生まれましたか？", "ウィルバーの生まれた村の名前は？"),
    fact("work appeared in", WIL, LEAD, "ラヴクラフトの短編小説「ダンウィッチの怪」に登場する人物", "ダンウィッチの怪",
         "ウィルバー・ウェイトリーはラヴクラフトの短編小説「ダンウィッチの怪」の登場人物です。",
         "ウィルバー・ウェイトリーが登場する作品は何ですか？", "ウィルバー・ウェイトリーはどの小説に出てくる人物ですか？"),
    fact("death year beside the birth year", WIL, LEAD,
         "1913年2月2日にダンウィッチで生まれ、1928年8月にミスカトニック大学の図書館に侵入しようとして番犬に殺された", "1928年",
         "ウィルバー・ウェイトリーは1913年に生まれ、1928年8月に殺されました。",
         "ウィルバー・ウェイトリーは何年に殺されましたか？", "ウィルバー・ウェイトリーが番犬に殺されたのは何年ですか？"),
    fact("year written", INS, LEAD, "ラヴクラフトが1931年に執筆した中編小説", "1931年", "『インスマスを覆う影』は1931年に執筆されました。",
         "『インスマスを覆う影』は何年に書かれましたか？", "インスマスを覆う影が執筆されたのはいつですか？"),
    fact("publisher", INS, LEAD, "1936年にヴィジョナリー・パブリッシングから単行本として刊行された", "ヴィジョナリー・パブリッシング",
         "『インスマスを覆う影』の単行本はヴィジョナリー・パブリッシングから刊行されました。",
         "『インスマスを覆う影』を単行本で刊行した出版社はどこですか？", "インスマスを覆う影の単行本はどこから出ましたか？"),
    fact("setting (state)", INS, LEAD, "マサチューセッツ州の寂れた港町インスマスを舞台に", "マサチューセッツ州",
         "『インスマスを覆う影』の舞台の港町はマサチューセッツ州にあります。",
         "『インスマスを覆う影』の舞台となる港町はどの州にありますか？", "「インスマウスの影」で描かれる港町はどの州にありますか？"),
    fact("character", INS, "あらすじ", "酒浸りの老人ザドック・アレンから", "ザドック・アレン",
         "『インスマスを覆う影』で語り手に話をする酒浸りの老人はザドック・アレンです。",
         "『インスマスを覆う影』で語り手に話を聞かせる老人の名前は？", "インスマスを覆う影に登場する酒浸りの老人は誰ですか？"),
]

# False facts: kind, and the text check that must stop it without verification (None: only verification can)
FALSE = [
    (fact("worshipped and worshipper swapped", CTH, LEAD, "深きものどもに崇拝されている", "深きものども",
          "クトゥルフは深きものどもを崇拝しています。", "クトゥルフが崇拝しているのは誰ですか？", "クトゥルフが崇める種族は？"), None),
    (fact("an attribute of the city given to the god", CTH, LEAD, "太平洋の海底に沈んだ都市ルルイエで眠っているとされる",
          "太平洋", "クトゥルフは太平洋の海底に沈んだ神性です。", "クトゥルフが沈んでいる海はどこですか？",
          "クトゥルフはどの海の底に沈みましたか？"), None),
    (fact("relation swap (mother/son)", WIL, LEAD, "ラヴィニア・ウェイトリーの息子で", "ラヴィニア・ウェイトリー",
          "ラヴィニア・ウェイトリーはウィルバー・ウェイトリーの息子です。",
          "ウィルバー・ウェイトリーの息子は誰ですか？", "ウィルバー・ウェイトリーの子供の名前は？"), None),
    (fact("relation swap (father/son)", HPL, "生涯", "父ウィンフィールド・スコット・ラヴクラフトは1898年に死去し",
          "ウィンフィールド・スコット・ラヴクラフト", "ラヴクラフトの息子はウィンフィールド・スコット・ラヴクラフトです。",
          "ラヴクラフトの息子は誰ですか？", "ラヴクラフトの子供の名前を教えてください。"), None),
    (fact("real author for in-story author", NEC, LEAD, "ハワード・フィリップス・ラヴクラフトの作品に登場する架空の魔道書",
          "ハワード・フィリップス・ラヴクラフト", "作中でネクロノミコンを著したのはハワード・フィリップス・ラヴクラフトです。",
          "作中でネクロノミコンを著した人物は誰ですか？", "ネクロノミコンの作中の著者は誰ですか？"), None),
    (fact("number from elsewhere (1926 for 1928)", HPL, "生涯",
          "代表作『クトゥルフの呼び声』は1926年に執筆され、1928年に雑誌『ウィアード・テイルズ』に掲載された", "1926年",
          "『クトゥルフの呼び声』は1926年に雑誌『ウィアード・テイルズ』に掲載されました。",
          "ラヴクラフトの『クトゥルフの呼び声』が『ウィアード・テイルズ』に載ったのは何年ですか？",
          "ラヴクラフトの『クトゥルフの呼び声』の雑誌掲載は何年ですか？"), None),
    (fact("number not in evidence (1926)", HPL, "生涯", "1928年に雑誌『ウィアード・テイルズ』に掲載された", "1926年",
          "『クトゥルフの呼び声』は1926年に『ウィアード・テイルズ』に掲載されました。",
          "ラヴクラフトの『クトゥルフの呼び声』はいつ掲載されましたか？", "ラヴクラフトの『クトゥルフの呼び声』の初出年は？"),
     "short_answer_not_in_evidence"),
    (fact("number from elsewhere (translation year)", NEC, LEAD,
          "950年にテオドラス・フィレタスがギリシア語に翻訳し、1228年にオラウス・ウォルミウスがラテン語に翻訳したとされる",
          "1228年", "ネクロノミコンは1228年にギリシア語に翻訳されたとされます。",
          "ネクロノミコンがギリシア語に訳されたのは何年ですか？", "ネクロノミコンのギリシア語訳は何年のことですか？"), None),
    (fact("birth date recombined", HPL, LEAD, "1890年8月20日 - 1937年3月15日", "1890年", "ラヴクラフトは1890年3月15日に生まれました。",
          "ラヴクラフトの誕生日はいつですか？", "ラヴクラフトは何年何月何日に生まれましたか？"), "date_not_in_evidence"),
    (fact("birth date recombined (kanji numerals)", WIL, LEAD,
          "1913年2月2日にダンウィッチで生まれ、1928年8月にミスカトニック大学の図書館に侵入しようとして番犬に殺された", "1913年",
          "ウィルバー・ウェイトリーは千九百十三年八月に生まれました。",
          "ウィルバー・ウェイトリーは何年何月に生まれましたか？", "ウィルバー・ウェイトリーの生まれた年月は？"), "date_not_in_evidence"),
    (fact("date recombined across words", WIL, LEAD,
          "1913年2月2日にダンウィッチで生まれ、1928年8月にミスカトニック大学の図書館に侵入しようとして番犬に殺された", "1928年",
          "ウィルバー・ウェイトリーは1928年の2月2日に殺されました。",
          "ウィルバー・ウェイトリーが殺された日はいつですか？", "ウィルバー・ウェイトリーの命日は？"), "date_not_in_evidence"),
    (fact("negation ではありません", HPL, LEAD, "クトゥルフ神話の創始者として知られる", "クトゥルフ神話",
          "ラヴクラフトはクトゥルフ神話の創始者ではありません。",
          "ラヴクラフトが創始したのではない神話は何ですか？", "ラヴクラフトと無関係な神話体系は何ですか？"), "negation"),
    (fact("negation せず", WIL, LEAD,
          "1913年2月2日にダンウィッチで生まれ、1928年8月にミスカトニック大学の図書館に侵入しようとして番犬に殺された",
          "ミスカトニック大学", "ウィルバー・ウェイトリーはミスカトニック大学の図書館には侵入せず、番犬に殺されました。",
          "ウィルバー・ウェイトリーが侵入を試みた図書館はどこの大学にありますか？",
          "ウィルバー・ウェイトリーが忍び込もうとした大学はどこですか？"), "negation"),
    (fact("invented kanji place (霧ヶ浜)", WIL, LEAD, "1913年2月2日にダンウィッチで生まれ", "ダンウィッチ",
          "ウィルバー・ウェイトリーはダンウィッチ近郊の霧ヶ浜で生まれました。",
          "ウィルバー・ウェイトリーの出生地はどこですか？", "ウィルバー・ウェイトリーが生まれた土地はどこですか？"),
     {"answer_ungrounded", "invented_term"}),
    (fact("invented kanji group (深海教団)", INS, LEAD, "彼らが崇拝する父なるダゴンを描く", "父なるダゴン",
          "『インスマスを覆う影』の住民は深海教団を通じて父なるダゴンを崇拝しています。",
          "『インスマスを覆う影』の住民が崇拝するのは何ですか？", "インスマスを覆う影で住民が崇める存在は？"),
     {"answer_ungrounded", "invented_term"}),
    (fact("real span about another entity", WIL, LEAD, "祖父のウェイトリー老人は1924年に死去した", "1924年",
          "ウィルバー・ウェイトリーは1924年に死去しました。",
          "ウィルバー・ウェイトリーは何年に死去しましたか？", "ウィルバー・ウェイトリーが死んだのは何年ですか？"), None),
    (fact("short answer in another role", WIL, LEAD,
          "1913年2月2日にダンウィッチで生まれ、1928年8月にミスカトニック大学の図書館に侵入しようとして番犬に殺された", "1913年",
          "ウィルバー・ウェイトリーは1913年に生まれ、1928年8月に番犬に殺されました。",
          "ウィルバー・ウェイトリーは何年に殺されましたか？", "ウィルバー・ウェイトリーの没年は何年ですか？"), "too_few_questions"),
    (fact("era date, wrong conversion", INS, LEAD, "1936年にヴィジョナリー・パブリッシングから単行本として刊行された", "1936年",
          "『インスマスを覆う影』の単行本は1936年（昭和10年）に刊行されました。",
          "『インスマスを覆う影』の単行本が出たのは何年ですか？", "インスマスを覆う影の単行本の刊行年は？"), "answer_ungrounded"),
    (fact("number with another unit", NEC, LEAD, "狂える詩人アブドゥル・アルハズレッドが730年頃にダマスカスで著したとされ",
          "730", "ネクロノミコンはアブドゥル・アルハズレッドが730日をかけて著したとされます。",
          "ネクロノミコンを著すのに何日かかったとされますか？", "アルハズレッドがネクロノミコンの執筆にかけた日数は？"), "unit_not_in_evidence"),
    (fact("partial names recombined", HPL, "生涯", "1924年にソニア・グリーンと結婚したが", "ソニア",
          "ラヴクラフトの妻はソニア・ラヴクラフトです。",
          "ラヴクラフトの妻の名は何ですか？", "ラヴクラフトと結婚した女性の名前は？"), None),
    (fact("invented title in brackets", WIL, LEAD, "ラヴクラフトの短編小説「ダンウィッチの怪」に登場する人物", "ラヴクラフト",
          "ウィルバー・ウェイトリーはラヴクラフトの短編「ダンウィッチの惨劇」に登場します。",
          "ウィルバー・ウェイトリーが登場する短編を書いた作家は誰ですか？", "ウィルバー・ウェイトリーの生みの親の作家は？"),
     "answer_ungrounded"),
    (fact("another country", HPL, LEAD, "アメリカ合衆国の小説家", "アメリカ合衆国", "ラヴクラフトはイギリス生まれのアメリカ合衆国の小説家です。",
          "ラヴクラフトはどこの国の小説家ですか？", "ラヴクラフトの国籍は？"), "answer_ungrounded"),
    (fact("paraphrased evidence", HPL, LEAD, "ラヴクラフトはプロビデンスで生まれた", "プロビデンス", "ラヴクラフトはボストンの近くのプロビデンスで生まれました。",
          "ラヴクラフトの生地はどこですか？", "ラヴクラフトはどの町で生まれましたか？"), "evidence_not_in_passage"),
    (fact("points back", HPL, LEAD, "1890年8月20日 - 1937年3月15日", "1937年3月15日", "彼は1937年3月15日に死去しました。",
          "ラヴクラフトの命日はいつですか？", "ラヴクラフトが死去した日付は？"), "points_back"),
    (fact("true answer to another question", INS, "あらすじ", "語り手の青年は1927年、成人を祝う旅の途中でインスマスを訪れる", "1927年",
          "『インスマスを覆う影』の語り手は1927年にインスマスを訪れます。",
          "『インスマスを覆う影』が書かれたのは何年ですか？", "インスマスを覆う影の執筆年は？"), None),
    (fact("worshipper and worshipped swapped", INS, LEAD, "深きものどもと交配した住民と、彼らが崇拝する父なるダゴンを描く",
          "父なるダゴン", "『インスマスを覆う影』では、父なるダゴンが住民を崇拝しています。",
          "『インスマスを覆う影』で住民を崇拝しているのは誰ですか？", "インスマスを覆う影で町の人々を崇めるのは何者ですか？"), None),
]
KINDS = {item["kind"]: check for item, check in FALSE}
ALL = [item for item, _ in FALSE] + TRUE  # the false first: none may take a question from a true one
# A verifier sees the question and the answer sentence, never the short answer: for this kind it truthfully says yes
RIGHT_PAIRS = {"short answer in another role"}
TRUTH = {(q, item["fact"]["answer"]): item in TRUE or item["kind"] in RIGHT_PAIRS
         for item in ALL for q in item["fact"]["questions"]}


def probe_writer(prompt: str) -> str:
    title = re.search(r"^タイトル: (.*)$", prompt, re.M).group(1)
    section = re.search(r"^節: (.*)$", prompt, re.M).group(1)
    return json.dumps({"facts": [item["fact"] for item in ALL if (item["page"], item["section"]) == (title, section)]},
                      ensure_ascii=False)


def truthful(passage: str, question: str, answer: str) -> bool:
    """The verifier knows which facts are true; a rewrite is judged by the stand-in's sentence test."""
    return TRUTH.get((question, answer), grounded_verdict(passage, question, answer))


def prepare(tmp_path, tokenizer_dir, verdict, *extra) -> tuple[dict[str, list[dict]], str]:
    wiki = Wiki()
    for title, text in PAGES.items():
        wiki.add_page(title, extract=text)
    wiki.add_redirect("ラヴクラフト", HPL)
    wiki.add_redirect("クトゥルー", CTH)
    wiki.add_redirect("インスマウスの影", INS)
    with MediaWikiServer(wiki) as server, OpenAIServer(probe_writer, verdict=verdict) as writer:
        code = prepare_data.main(["--api_url", server.url, "--tokenizer", str(tokenizer_dir), "--cache_dir",
                                  str(tmp_path / "cache"), "--out_dir", str(tmp_path / "out"), "--request_interval", "0",
                                  "--category", "", "--titles", *PAGES, "--max_tokens", "512", "--qa_backend", "openai",
                                  "--qa_api_url", writer.url, "--qa_model", "test-writer-7b", *extra])
    assert code == 0
    out = tmp_path / "out"
    splits = {split: [json.loads(line) for line in (out / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()]
              for split in ("train", "eval", "eval_known") if (out / f"{split}.jsonl").exists()}
    return splits, (tmp_path / "out" / "README.md").read_text(encoding="utf-8")


def reached(splits: dict[str, list[dict]], item: dict) -> set[str]:
    """The splits a fact's answer reaches (under any of its questions)."""
    return {split for split, rows in splits.items() for row in rows
            if row["kind"] == "synthesized" and row["response"] == item["fact"]["answer"]}


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)


def test_with_a_truthful_verifier_no_false_fact_reaches_a_split_and_every_true_one_does(tmp_path, tokenizer_dir):
    splits, _ = prepare(tmp_path, tokenizer_dir, truthful, "--eval_ratio", "0.25")
    leaked = {item["kind"]: reached(splits, item) for item, _ in FALSE if reached(splits, item)}
    lost = [item["kind"] for item in TRUE if not reached(splits, item)]
    assert not leaked and not lost
    known = [row for row in splits["eval_known"] if row["kind"] == "synthesized"]
    assert all(row["answers"][0] in row["evidence"] or row["answers"][0] in row["response"] for row in known)


def test_with_a_lazy_verifier_the_text_checks_alone_stop_every_false_kind_they_can_see(tmp_path, tokenizer_dir):
    splits, _ = prepare(tmp_path, tokenizer_dir, lambda *texts: True, "--eval_ratio", "0", "--rewrites", "0")
    passed = {item["kind"] for item, _ in FALSE if reached(splits, item)}
    assert passed == {kind for kind, check in KINDS.items() if check is None}
    assert not [item["kind"] for item in TRUE if not reached(splits, item)]
