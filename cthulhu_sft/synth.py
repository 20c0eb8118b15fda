"""Facts a model writes from each passage, kept only when the passage states them; and rewrites of passages.

    passages ──prompts/──> requests ──writer (cached)──> facts ──checks──> candidates ──verification──> kept
                                                    └──> rewrites ──checks──> candidates ──verification──> kept

* The writer (cthulhu_sft.writers: an endpoint, vLLM offline or transformers) returns, per passage,
  `{"facts": [{"evidence", "short_answer", "answer", "questions": [...]}]}` (json_schema `qa_facts`), from the
  prompt in prompts/qa_synthesis_ja.md (yours to edit): the evidence a verbatim span of the passage, the short
  answer the name, number or phrase asked for, the answer a short self-contained sentence, two or more
  questions asking that fact in different words.
* Checks, each a named reason counted in the Report (REASONS): per fact, the evidence occurs verbatim in the
  passage (after NFKC and whitespace folding, punctuation, brackets and name separators aside, the passage's
  parenthesised asides optional) and is at most two sentences (a whole passage would ground
  anything it names); the short answer occurs in the evidence and in the answer, and is short; every key term
  of the answer (cthulhu_sft.metrics, the evaluation's own terms, and its titles in 『』「」 and kanji place names)
  is in the evidence, the title or an alias of the article, every date of it (年月, 月日, also 1913年の8月, 千九百十三年八月) is written so in
  the evidence (not recombined from two), every number with its unit or counter (730年, not 730日); no kanji compound of three or
  more characters is made up (each piece of it is in the passage, the title or a short list of everyday words:
  霧ヶ浜, 深海教団); the answer adds no negation the evidence lacks and does not open by pointing back
  (「また、」「彼らが」「この都市の」); nothing holds the verdict prompt's tags or JSON. Per question: it names the
  subject (or an alias of its article, or a part of its name the passage uses for it alone: ラヴクラフト, ウィルバー), adds no negation, asks the short answer's year where the answer
  states two (its words fit that year's clause best: the verdict never sees the short answer), points at no text the reader cannot see (nor quotes a heading), does not hold its own answer, every
  key term of it is in the evidence or the title, it invents no compound, is new, and fits the length limit.
  A fact with fewer than 2 questions left is rejected. A question two facts ask goes to the first that verification
  keeps (a false fact never takes it from a true one).
* Verification: these checks are blind to a real span that does not support the answer (a relation swap: the
  evidence names both people). So each surviving question/answer is put, one per request, between
  <passage>, <question> and <answer> tags (and the short answer in <short_answer>: the answer sentence may hold
  two years or names, and only the short answer is the gold) to the same backend (or a judge model) at temperature 0, json_schema
  `qa_verdict` `{"supported": true|false}`, `verify` times; it stays on a majority of true. Verdicts are cached
  like answers. verify=0 turns this off, and the Report says so.
* Rewrites (knowledge augmentation): each passage rewritten `rewrites` times in other words (json_schema
  `passage_rewrite`, `{"text"}`), kept when all its key terms are in the passage, it invents no compound or
  negation, and verification (prompts/qa_rewrite_verdict_ja.md) says it states nothing the passage does not.
  A writer that fails at rewrites (after its retries) leaves the facts; the Report says why there are none.
"""

import json
import logging
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from cthulhu_sft.data import DataError
from cthulhu_sft.examples import CONNECTIVE, NAME_JOINERS, REFERRING, Fact, Passage, normalize_question
from cthulhu_sft.metrics import (
    is_abstention,
    is_japanese,
    match_form,
    named_terms,
    normalize,
    unsupported_terms,
    western_years,
)
from cthulhu_sft.writers import AnswerCache, Request, Usage, WriterError, ask

logger = logging.getLogger(__name__)
__all__ = ["AnswerCache", "Fact", "Prompts", "Report", "REASONS", "WriterError", "load_prompts", "synthesize"]

PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
FACTS_PROMPT = PROMPTS / "qa_synthesis_ja.md"
VERDICT_PROMPT = PROMPTS / "qa_verdict_ja.md"
REWRITE_PROMPT = PROMPTS / "qa_rewrite_ja.md"
REWRITE_VERDICT_PROMPT = PROMPTS / "qa_rewrite_verdict_ja.md"
# The placeholders each prompt needs, and those it may use besides
PLACEHOLDERS = {
    "facts": (("{passage}",), ("{title}", "{subject}", "{section}", "{count}")),
    "verdict": (("{passage}", "{question}", "{answer}"), ("{title}", "{subject}", "{short_answer}")),
    "rewrite": (("{passage}",), ("{title}", "{subject}", "{section}", "{variant}")),
    "rewrite_verdict": (("{passage}", "{rewrite}"), ("{title}", "{subject}")),
}
TEMPERATURE = 0.2  # factual extraction: little variety needed, the passage decides the content
REWRITE_TEMPERATURE = 0.7  # rewrites should differ from each other
MAX_TOKENS = 2048  # of a facts or rewrite answer
VERDICT_TOKENS = 32  # {"supported": false} and some slack
MIN_QUESTIONS = 2
MAX_EVIDENCE_SENTENCES = 2
MAX_EVIDENCE_CHARS = 300  # a long sentence of Japanese Wikipedia; a whole passage is longer
MAX_SHORT_ANSWER_CHARS = 40
FACTS = 5  # asked per passage at most; fewer for a short one
REWRITES = 2  # rewrites of each passage, when a writer exists
VERIFY = 1  # verdicts per question/answer and per rewrite

STRING = {"type": "string"}
FACTS_SCHEMA = {
    "type": "object",
    "properties": {"facts": {"type": "array", "items": {
        "type": "object",
        "properties": {"evidence": STRING, "short_answer": STRING, "answer": STRING,
                       "questions": {"type": "array", "items": STRING}},
        "required": ["evidence", "short_answer", "answer", "questions"],
        "additionalProperties": False,
    }}},
    "required": ["facts"],
    "additionalProperties": False,
}
VERDICT_SCHEMA = {"type": "object", "properties": {"supported": {"type": "boolean"}}, "required": ["supported"],
                  "additionalProperties": False}
REWRITE_SCHEMA = {"type": "object", "properties": {"text": STRING}, "required": ["text"], "additionalProperties": False}

REASONS = {
    # per answer
    "too_large": "an answer over the size limit (writers.MAX_ANSWER_BYTES), not read (per answer)",
    "malformed": "an answer that holds no readable {\"facts\": [...]} (per answer)",
    # per fact
    "malformed_fact": "an item without evidence, short_answer and answer strings and a list of questions, or one "
                      "holding the verification prompt's tags (per fact)",
    "evidence_not_in_passage": "the evidence is not a verbatim span of the passage (per fact)",
    "evidence_too_broad": f"the evidence is longer than {MAX_EVIDENCE_SENTENCES} sentences or {MAX_EVIDENCE_CHARS} "
                          "characters: it would ground anything the passage names (per fact)",
    "short_answer_not_in_evidence": "the short answer is empty or not in the evidence (per fact)",
    "short_answer_too_long": f"the short answer is longer than {MAX_SHORT_ANSWER_CHARS} characters: not a name, "
                             "number or phrase (per fact)",
    "short_answer_not_in_answer": "the answer sentence does not state the short answer (per fact)",
    "not_japanese": "the answer is empty or not Japanese (per fact)",
    "abstains": "the answer says it does not know (per fact)",
    "answer_ungrounded": "a key term of the answer is in neither the evidence nor the title (per fact)",
    "date_not_in_evidence": "a date of the answer (年月, 月日) is not written so in the evidence: a date recombined "
                            "from two (per fact)",
    "unit_not_in_evidence": "a number of the answer is not written with the same unit or counter in the evidence "
                            "(730日 where it says 730年) (per fact)",
    "asks_another_year": "the short answer is a year, the answer states another, and the question's words do not fit "
                         "the short answer's part of the answer better (1913年 asked by 「何年に殺されましたか」 of "
                         "「1913年に生まれ、1928年に殺された」): the verdict never sees the short answer (per question)",
    "invented_term": "a kanji compound the passage does not hold (per fact, or per question)",
    "negation": "the answer (or a question) holds a negation the evidence lacks (per fact, or per question)",
    "points_back": "the answer opens with a pointer or a connective (「また、」「彼らが」「この都市の」) (per fact)",
    "too_few_questions": f"fewer than {MIN_QUESTIONS} questions passed their checks (per fact)",
    "unsupported": f"verification left fewer than {MIN_QUESTIONS} questions the passage answers so (per fact)",
    # per question
    "points_at_text": "the question points at a text the reader cannot see (この節, 本文, a quoted heading) (per question)",
    "no_subject": "the question does not name the subject (per question)",
    "gives_away": "the question holds its own short answer (per question)",
    "question_ungrounded": "a key term of the question is in neither the evidence nor the title (per question)",
    "duplicate": "the same question (normalised) was already asked (per question)",
    "too_long": "the example does not fit the length limit (per question, or per rewrite)",
    "question_unsupported": "verification: the passage does not answer the question so (per question)",
    # per rewrite
    "rewrite_malformed": "a rewrite answer that holds no readable {\"text\": ...}, or holds the verification "
                         "prompt's tags (per rewrite)",
    "rewrite_not_japanese": "the rewrite is empty or not Japanese (per rewrite)",
    "rewrite_copy": "the rewrite is the passage itself, or a piece of it, or another rewrite (per rewrite)",
    "rewrite_ungrounded": "a key term, title or date of the rewrite is not in the passage or the title (per rewrite)",
    "rewrite_invented": "a kanji compound the passage does not hold (per rewrite)",
    "rewrite_negation": "the rewrite holds more negations than the passage (per rewrite)",
    "rewrite_points_back": "the rewrite opens with a pointer or a connective (per rewrite)",
    "rewrite_unsupported": "verification: the rewrite states what the passage does not (per rewrite)",
}
POINTING = re.compile(
    r"この(?:節|項|章|段落|文章|文(?![化学字明献書体])|記事|テキスト|資料|一覧|表(?![記現題紙])|パッセージ)|(?<!日)本文(?![化学])|"
    r"本節|本章|本稿|本記事|上記|上述|前述|下記|後述|文章中|文中|記事中|"
    r"(?:与えられた|提示された)(?:文章|文|テキスト|資料|記事|節|情報|パッセージ)|passage|the text|this section|this article",
    re.I,
)
NEGATION = re.compile(r"(?<![少危幼切汚程])(?<!間も)(?<!まも)(?<!ほど)(?:ない|なかっ|なく|ません|ずに|無い|無かっ|無く|非ず)"
                      r"|(?<![まはわいみ\u4E00-\u9FFF])ず(?=[、。，．]|して|とも)")  # 侵入せず、 (not まず、 はず。 必ず、)
COMPOUND = re.compile(r"[\u3005\u30F5\u30F6\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF]{3,}")  # kanji, 々, ヵ, ヶ
KANJI_NUMBER = re.compile(r"[〇一二三四五六七八九十百千万億兆年月日]+")
# Everyday words a correct answer or question may use though the passage does not (pieces of a compound)
EVERYDAY = frozenset(
    "作品 小説 短編 長編 中編 作家 作者 著者 人物 登場 名前 名称 存在 場所 地名 時期 年代 神話 神格 種族 生物 都市 物語 "
    "発表 執筆 創作 出版 刊行 掲載 雑誌 作中 設定 関係 正体 特徴 由来 意味 起源 舞台 主人公 何者 信仰 崇拝 初出 原作 翻訳 "
    "日本語 英語 呼称 別名 名義 題名 表題 一作 代表作 作品名 登場人物 神話体系 架空 邪神 旧支配者 外なる神 何年 何月 何日 何歳 何人 何語 誕生 誕生日 生年 没年 出身 出身地 "
    "国籍 職業 両親 父親 母親 子供 祖父 祖母 兄弟 姉妹 夫婦 最初 最後 初登場 現在 当時 以前 以後 一般 主要 重要 代表 一覧 "
    "出生 出生地 生地 生誕 命日 死去 死亡 没年月日 生年月日 結婚 配偶者 息子 家族 一族 子孫 創始 創始者 創造 創作者 執筆者 "
    "著作 作風 文学 単行本 短編集 連載 出版社 編集者 訳者 翻訳者 原題 邦題 言語 故郷 生涯 晩年 港町 老人 青年 "
    # pieces of the compounds questions are asked in (英語表記, 生没年, 外見的特徴, 奉仕種族, 収録作品集, 考古学者)
    "表記 原語 生没 居住 所在 活動 拠点 提唱 命名 信奉 対象 外見 身体 怪奇 幻想 恐怖 推理 同時代 共同 共作 大学 図書館 "
    "所属 所蔵 保管 収録 映画 初訳 邦訳 教団 結社 組織 祖父母 一人 親子 師弟 友人 文通 相手 後継 影響 世紀 生誕 死没 "
    "発行 世界 地球 宇宙 次元 最高 上位 下位 奉仕 封印 居場所 出現 米国 英国 日本 中国 欧州 研究 学者 考古学 人類学 "
    "民俗学 探検 調査 大陸 南極 北極 中心 回数 作品集 全集 選集 長男 長女 次男 本名 筆名 旧姓".split()
)
# Katakana words of everyday Japanese a question or answer may use though the passage does not: key terms count
# katakana as names (metrics), but 「…のフルネームは？」「…のデビュー作は？」 name nothing
EVERYDAY_KATAKANA = frozenset(
    "フルネーム ファーストネーム ラストネーム ペンネーム ニックネーム スペル タイトル ジャンル テーマ モチーフ ストーリー "
    "シリーズ キャラクター デビュー ホラー ファンタジー ミステリー ゲーム メディア イメージ モデル ルーツ エピソード シーン "
    "プロット キーワード カテゴリー グループ メンバー ファン オリジナル バージョン".split()
)
# Single characters that join known pieces into a compound (「米国人作家」, 「登場年」, 「作家名」)
AFFIXES = frozenset("年月日名人者家中的性化上下内外後前時期型版作誌初各全同元旧新社訳語地先頃集題隊団異別南北東西何神源")  # 出版社, ラテン語訳者
# What would let a fact speak to its own verdict prompt: its tags, JSON braces, the verdict's key
TAGS = re.compile(r"</?(?:passage|question|answer|short_answer)\s*>|[{}｛｝]|supported", re.I)
SENTENCE_END = re.compile(r"[。！？!?]+")
KANJI_DIGIT = re.compile(r"(?<![〇一二三四五六七八九十百千])[〇一二三四五六七八九十](?=[月日])")  # 八月; match_form does 十二月
COUNTED = re.compile(r"\d+(?:\.\d+)?(?:年|月|日|歳|才|人|名|巻|部|冊|作|話|章|回|世紀|年代|年間|か月|ヶ月|日間|時間|"
                     r"メートル|マイル|フィート|キロ|トン|ドル|円|パーセント|%)")  # 730年頃 is not 730日
YEAR = re.compile(r"\d{3,4}(?=年)")
DATE = re.compile(r"\d{1,4}年\d{1,2}月(?:\d{1,2}日)?|\d{1,2}月\d{1,2}日")  # in match_form: kanji numerals as digits
MARKS = r"[、。,.!?:;・=゠\-‐–—―〜~「」『』【】〈〉《》\"'“”‘’]+"  # after NFKC
PUNCTUATION = re.compile(rf"(?<![0-9]){MARKS}|{MARKS}(?![0-9])")  # but between two digits: 1,000; 3.5; 1、2巻
ASIDE = re.compile(r"\([^()]*\)")  # after NFKC: （…） is (…)
FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.S)
POLITE_END = re.compile(r"(?:です|でした|である|だ|とされる|とされています|と呼ばれる|と呼ばれています)?[。．.!！]*$")
NO_WRITER = ("no model-written questions: this set holds recitations (and cloze probes) only. To have a model write "
             "checked facts and rewrites, pass --qa_api_url URL --qa_model NAME (an OpenAI-compatible endpoint), or run "
             "on a CUDA machine (the base model writes them), or --qa_backend vllm|transformers [--qa_model NAME].")


@dataclass
class Prompts:
    facts: str
    verdict: str
    rewrite: str
    rewrite_verdict: str


@dataclass
class Report(Usage):
    """What synthesis cost and what its checks did; the dataset card and the summary read it."""

    backend: str = "none"
    model: str = ""
    judge_model: str = ""
    passages: int = 0
    facts_offered: int = 0
    facts_kept: int = 0
    questions_offered: int = 0
    questions_kept: int = 0
    rejected: Counter = field(default_factory=Counter)  # reason (REASONS) → count
    verify: int = 0  # votes per verdict; 0: no verification
    verdicts: int = 0  # question/answer pairs and rewrites put to verification
    votes: int = 0
    votes_true: int = 0
    unanimous: int = 0  # verdicts whose votes all agreed
    unreadable_votes: int = 0  # counted as false
    rewrites: int = 0  # asked per passage
    rewrites_offered: int = 0
    rewrites_kept: int = 0
    rewrite_error: str = ""  # why no rewrites were written, when the writer failed at them
    note: str = ""  # what a run without a writer lacks, and how to get it

    @property
    def kept(self) -> int:
        return self.facts_kept

    @property
    def retries(self) -> int:
        return max(0, self.requests - self.generated)

    @property
    def agreement(self) -> float | None:
        """The share of verdicts whose votes all agreed (None without verification)."""
        return self.unanimous / self.verdicts if self.verdicts else None

    @classmethod
    def without_writer(cls) -> "Report":
        return cls(backend="none", note=NO_WRITER)


# ---------------------------------------------------------------------------------------------------
# Prompts


def load_prompt(path: str | os.PathLike, kind: str = "facts") -> str:
    """A prompt template; a DataError (bad input) when it is missing or lacks its required placeholder."""
    path = Path(path)
    try:
        template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the Q&A prompt ({error})") from None
    required, optional = PLACEHOLDERS[kind]
    missing = [name for name in required if name not in template]
    if missing:
        raise DataError(f"{path}: the Q&A prompt has no {', '.join(missing)} placeholder "
                        f"(it may use {', '.join(required + optional)})")
    return template


def load_prompts(facts: str | os.PathLike = FACTS_PROMPT) -> Prompts:
    """The facts prompt (--qa_prompt) and the verdict and rewrite prompts beside the shipped one in prompts/."""
    return Prompts(load_prompt(facts), load_prompt(VERDICT_PROMPT, "verdict"), load_prompt(REWRITE_PROMPT, "rewrite"),
                   load_prompt(REWRITE_VERDICT_PROMPT, "rewrite_verdict"))


def render(template: str, **values) -> str:
    """The template with its {placeholders} replaced; other braces (a JSON example) left as they are."""
    values = {f"{{{name}}}": str(value) for name, value in values.items()}
    return re.sub("|".join(map(re.escape, values)), lambda match: values[match.group(0)], template)


def facts_wanted(passage: Passage, most: int) -> int:
    """About one fact per 80 characters, 2 at least: a short passage holds few facts."""
    return min(most, max(2, len(passage.text) // 80))


def section_name(passage: Passage) -> str:
    return passage.section or "（導入部）"


# ---------------------------------------------------------------------------------------------------
# Reading answers


def parse_json(content: str, key: str):
    """The value of `key` in the first JSON object of `content` (bare, in a code fence, or inside text) that has
    it; a bare list of objects counts as that value too. None if there is none."""
    decoder = json.JSONDecoder()
    for candidate in (content, *FENCE.findall(content)):
        for match in re.finditer(r"[{\[]", candidate):
            try:
                value, _ = decoder.raw_decode(candidate, match.start())
            except ValueError:
                continue
            if isinstance(value, dict) and key in value:
                return value[key]
            if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
                return value
    return None


def verdict_of(content: str) -> bool | None:
    value = parse_json(content, "supported")
    return value if isinstance(value, bool) else None


# ---------------------------------------------------------------------------------------------------
# Checks


def fold(text: str) -> str:
    """NFKC without whitespace: how evidence is found in the passage."""
    return re.sub(r"\s+", "", unicodedata.normalize("NFKC", text))


def quotes(evidence: str, text: str) -> bool:
    """Whether the evidence is a verbatim span of the text: in NFKC, without whitespace, punctuation, brackets and
    name separators (a writer's 「」 for 『』, ・ for ＝, ， for 、), and optionally without the text's parenthesised
    asides (「ラヴクラフト（1890年 - 1937年）は」 quoted as 「ラヴクラフトは」)."""
    def compact(piece: str) -> str:
        return PUNCTUATION.sub("", fold(piece))

    span = compact(evidence)
    return bool(span) and (span in compact(text) or span in compact(ASIDE.sub("", unicodedata.normalize("NFKC", text))))


def negations(text: str) -> int:
    return len(NEGATION.findall(text))


def points_back(text: str, passage: Passage) -> bool:
    """Whether the text opens with a pointer or a connective, not with a name of the subject (『彼方より』 is a work)."""
    if text.startswith("『") or any(text.lstrip("「 ").startswith(name) for name in (passage.subject, passage.title)):
        return False
    text = text.lstrip("「 ")
    return bool(REFERRING.match(text) or CONNECTIVE.match(text))


def abstains(answer: str) -> bool:
    """is_abstention, but for the words of titles in 『』「」 and of English names (The Dream-Quest of Unknown Kadath)."""
    return is_abstention(re.sub(r"『[^』]*』|「[^」]*」|[A-Za-z][A-Za-z'’.:,\- ]*", "", answer))


def invented_compounds(text: str, passage: Passage) -> list[str]:
    """Kanji compounds of 3+ characters in `text` that cannot be cut into pieces found in the passage, the title or
    EVERYDAY (2+ characters each) or AFFIXES (one): 深海教団 (深海 nowhere), 霧ヶ浜; not 短編小説, 南太平洋 or
    米国人作家 where the passage says 米国."""
    support = fold(f"{passage.title}\n{passage.text}")
    invented = []
    for compound in COMPOUND.findall(fold(text)):
        if KANJI_NUMBER.fullmatch(compound) or compound in support:
            continue
        reachable = [True] + [False] * len(compound)
        for start in range(len(compound)):
            if not reachable[start]:
                continue
            reachable[start + 1] |= compound[start] in AFFIXES
            for end in range(start + 2, len(compound) + 1):
                reachable[end] |= compound[start:end] in support or compound[start:end] in EVERYDAY
        if not reachable[-1]:
            invented.append(compound)
    return invented


def states(text: str, short: str) -> bool:
    """Whether the text holds the short answer, in match_form or with era years as Western ones (昭和3年 = 1928年)."""
    return match_form(short) in match_form(text) or date_form(short) in date_form(text)


def ungrounded(text: str, *support: str) -> set[str]:
    """The key terms of `text` no support text holds, era years compared as Western ones, and its names that key
    terms miss (titles in 『』「」, kanji place names: 「ダンウィッチの惨劇」 where the passage says 「ダンウィッチの怪」)."""
    held = "\n".join(map(match_form, support))
    support = tuple(western_years(normalize(piece)) for piece in support)
    return ((unsupported_terms(western_years(normalize(text)), *support) - EVERYDAY_KATAKANA)
            | {name for name in named_terms(text) if match_form(name) not in held})


def date_form(text: str) -> str:
    """match_form with era years as Western years and one-kanji months and days in digits (千九百十三年八月 →
    1913年8月), where DATE finds dates."""
    text = re.sub(r"(\d年)の(?=\d{1,2}月)|(\d月)の(?=\d{1,2}日)", r"\1\2", match_form(western_years(normalize(text))))
    return KANJI_DIGIT.sub(lambda match: str("〇一二三四五六七八九十".index(match[0])), text)


def asks_another_year(question: str, answer: str, short: str, subject: str) -> bool:
    """Whether the short answer is a year, a clause of the answer states another (and not the short answer's), and
    the question does not share more pairs of characters with the clause stating the short answer's year than with
    that one: then nothing says which year it asks (the verdict sees the question and the answer sentence, which holds both, never the short
    answer)."""
    years = set(YEAR.findall(date_form(short)))
    if not years:
        return False
    drop = match_form(subject)

    def pairs(text: str) -> set[str]:
        text = date_form(text).replace(drop, "")
        return {text[i:i + 2] for i in range(len(text) - 1) if not re.search(r"[\d、。？?]", text[i:i + 2])}

    asked = pairs(question)
    clauses = [(set(YEAR.findall(clause)), len(pairs(clause) & asked)) for clause in re.split("[、。，]", date_form(answer))]
    own = max((score for found, score in clauses if found & years), default=0)
    return any(score >= own for found, score in clauses if found - years and not found & years)


def subject_names(passage: Passage, aliases=()) -> list[str]:
    """The subject, its article's `aliases` (redirects, English title, the lead's readings: wiki.page_aliases), and
    each part of its name (at least 3 characters: ラヴクラフト of ハワード・フィリップス・ラヴクラフト, ウィルバー of
    ウィルバー・ウェイトリー) that the passage uses alone or only within the subject's name (not a part another
    person of the passage shares and the passage never uses alone), normalised as questions are."""
    subject = normalize(passage.subject)
    parts = [part for part in re.split(f"[{NAME_JOINERS}]", subject) if len(part) >= 3 and part != subject]
    names = re.findall(rf"[\u30A1-\u30FA\u30FC]+(?:[{NAME_JOINERS}][\u30A1-\u30FA\u30FC]+)*", normalize(passage.text))
    wanted = [subject, *(alias for alias in aliases if len(normalize_question(alias)) >= 2)]
    for part in parts:
        others = [name for name in names if name not in (subject, part) and part in re.split(f"[{NAME_JOINERS}]", name)]
        if part in names or not others:
            wanted.append(part)
    return [normalize_question(name) for name in wanted]


def names_subject(question: str, passage: Passage, aliases=()) -> bool:
    asked = normalize_question(question)
    return any(name in asked for name in subject_names(passage, aliases))


def fact_rejection(evidence: str, short: str, answer: str, passage: Passage, aliases=()) -> str | None:
    """The first check (REASONS) a fact fails, or None."""
    if not evidence.strip() or not quotes(evidence, passage.text):
        return "evidence_not_in_passage"
    if len(fold(evidence)) > MAX_EVIDENCE_CHARS or len(SENTENCE_END.findall(evidence.rstrip("。！？!? "))) >= MAX_EVIDENCE_SENTENCES:
        return "evidence_too_broad"
    if not match_form(short) or not states(evidence, short):
        return "short_answer_not_in_evidence"
    if len(short) > MAX_SHORT_ANSWER_CHARS:
        return "short_answer_too_long"
    if not states(answer, short):
        return "short_answer_not_in_answer"
    if not answer or not is_japanese(answer):
        return "not_japanese"
    if abstains(answer):
        return "abstains"
    if ungrounded(answer, evidence, passage.title, *aliases):
        return "answer_ungrounded"
    if any(date not in date_form(evidence) for date in DATE.findall(date_form(answer))):
        return "date_not_in_evidence"
    if any(number not in date_form(evidence) for number in COUNTED.findall(date_form(answer))):
        return "unit_not_in_evidence"
    if invented_compounds(answer, passage):
        return "invented_term"
    if negations(answer) > negations(evidence):
        return "negation"
    if points_back(answer, passage):
        return "points_back"
    return None


def question_rejection(question: str, evidence: str, short: str, answer: str, passage: Passage,
                       aliases=()) -> str | None:
    """The first check (REASONS) a question fails on its own, or None."""
    headings = [heading for heading in re.split("のうち", passage.section) if heading]
    if POINTING.search(question) or any(f"「{heading.strip('「」')}」" in question for heading in headings):
        return "points_at_text"
    if not names_subject(question, passage, aliases):
        return "no_subject"
    if states(question, short):
        return "gives_away"
    if negations(question) > negations(evidence):
        return "negation"
    if asks_another_year(question, answer, short, passage.subject):
        return "asks_another_year"
    if ungrounded(question, evidence, passage.title, *aliases):
        return "question_ungrounded"
    if invented_compounds(question, passage):
        return "invented_term"
    return None


def rewrite_rejection(text: str, passage: Passage, kept: list[str]) -> str | None:
    if not text.strip() or not is_japanese(text):
        return "rewrite_not_japanese"
    if fold(text) in fold(passage.text) or fold(text) in map(fold, kept):
        return "rewrite_copy"
    if ungrounded(text, passage.text, passage.title) or any(date not in date_form(passage.text)
                                                            for date in DATE.findall(date_form(text))):
        return "rewrite_ungrounded"
    if invented_compounds(text, passage):
        return "rewrite_invented"
    if negations(text) > negations(passage.text):
        return "rewrite_negation"
    if points_back(text, passage):
        return "rewrite_points_back"
    return None


# ---------------------------------------------------------------------------------------------------
# The pipeline


def synthesize(passages: list[Passage], writer, prompts: Prompts, cache: AnswerCache, *, judge=None,
               verify: int = VERIFY, rewrites: int = REWRITES, facts: int = FACTS, seen: set[str] | None = None, fits=None,
               max_tokens: int = MAX_TOKENS, aliases: dict[str, list[str]] | None = None
               ) -> tuple[list[Fact], list[tuple[Passage, str]], Report]:
    """(kept facts, kept rewrites as (passage, text), report), in passage order.

    `writer` writes facts and rewrites, `judge` (default: the writer) gives the verdicts; when they differ the
    writer is closed (a local one frees the GPU) before the judge is used. `seen` holds the normalised questions
    already in the dataset and gains the kept ones; `fits(question, answer)` says whether an example is within the
    length limit; `aliases` ({title: other names}, source_texts' `aliases`) are names a question may call the
    subject by. Raises writers.WriterError when the writer fails (what it answered is cached).
    """
    judge = judge or writer
    seen = set() if seen is None else seen
    fits = fits or (lambda question, answer: True)
    report = Report(backend=writer.backend, model=writer.model, judge_model=judge.model, passages=len(passages),
                    verify=verify, rewrites=rewrites)
    counts = [facts_wanted(passage, facts) for passage in passages]
    asked = [Request(render(prompts.facts, title=p.title, subject=p.subject, section=section_name(p), passage=p.text,
                            count=n), "qa_facts", FACTS_SCHEMA, TEMPERATURE, max_tokens)
             for p, n in zip(passages, counts)]
    answers = ask(writer, asked, cache, report, "facts (passages)")
    aliases = aliases or {}
    candidates = [c for passage, answer in zip(passages, answers)
                  for c in read_facts(answer, passage, seen, fits, report, aliases.get(passage.title, ()))]

    rewritten = []
    if rewrites:
        asked = [Request(render(prompts.rewrite, title=p.title, subject=p.subject, section=section_name(p),
                                passage=p.text, variant=k + 1), "passage_rewrite", REWRITE_SCHEMA, REWRITE_TEMPERATURE,
                         max_tokens) for p in passages for k in range(rewrites)]
        try:
            answers = ask(writer, asked, cache, report, "rewrites")
        except WriterError as error:  # the facts stand without them; what arrived is cached for the next run
            report.rewrite_error = str(error).splitlines()[0]
            logger.warning("no rewrites: %s", report.rewrite_error)
        else:
            rewritten = read_rewrites(answers, [p for p in passages for _ in range(rewrites)], fits, report)
    if judge is not writer:
        writer.close()

    checks = [(prompts.verdict, c.passage, {"question": q, "answer": c.answer, "short_answer": c.short_answer})
              for c in candidates for q in c.questions]
    checks += [(prompts.rewrite_verdict, p, {"rewrite": text}) for p, text in rewritten]
    verdicts = verified(judge, checks, cache, verify, report)
    position, kept_facts = 0, []
    for candidate in candidates:  # a question two candidates ask goes to the first verified (a false one takes none)
        questions = [q for q, ok in zip(candidate.questions, verdicts[position:]) if ok]
        report.rejected["question_unsupported"] += len(candidate.questions) - len(questions)
        position += len(candidate.questions)
        asked = len(questions)
        questions = [q for q in questions if normalize_question(q) not in seen]
        report.rejected["duplicate"] += asked - len(questions)
        if len(questions) < MIN_QUESTIONS:
            report.rejected["unsupported" if asked < MIN_QUESTIONS else "too_few_questions"] += 1
            continue
        seen.update(map(normalize_question, questions))
        kept_facts.append(replace(candidate, questions=questions))
    kept_rewrites = [pair for pair, ok in zip(rewritten, verdicts[position:]) if ok]
    report.rejected["rewrite_unsupported"] += len(rewritten) - len(kept_rewrites)
    report.facts_kept, report.rewrites_kept = len(kept_facts), len(kept_rewrites)
    report.questions_kept = sum(len(fact.questions) for fact in kept_facts)
    report.rejected = Counter({reason: count for reason, count in report.rejected.items() if count})
    return kept_facts, kept_rewrites, report


def read_facts(answer: dict, passage: Passage, taken: set[str], fits, report: Report, aliases=()) -> list[Fact]:
    """The facts of one answer that pass every check but verification (their questions not in `taken`, the
    dataset's, nor asked twice by one fact); each failure counted."""
    if answer.get("skipped") == "too_large":
        report.rejected["too_large"] += 1
        return []
    items = parse_json(answer["content"], "facts")
    if not isinstance(items, list):
        report.rejected["malformed"] += 1
        return []
    candidates = []
    for item in items:
        report.facts_offered += 1
        if not well_formed(item):
            report.rejected["malformed_fact"] += 1
            continue
        evidence, text = item["evidence"].strip(), item["answer"].strip()
        short = POLITE_END.sub("", item["short_answer"].strip()).strip()  # 「1913年です。」 is the gold 1913年
        reason = fact_rejection(evidence, short, text, passage, aliases)
        if reason:
            report.rejected[reason] += 1
            continue
        questions = []
        for question in map(str.strip, item["questions"]):
            report.questions_offered += 1
            reason = question_rejection(question, evidence, short, text, passage, aliases)
            if reason is None and normalize_question(question) in taken | set(map(normalize_question, questions)):
                reason = "duplicate"
            if reason is None and not fits(question, text):
                reason = "too_long"
            if reason:
                report.rejected[reason] += 1
                continue
            questions.append(question)
        if len(questions) < MIN_QUESTIONS:
            report.rejected["too_few_questions"] += 1
            continue
        candidates.append(Fact(passage, evidence, short, text, questions))
    return candidates


def well_formed(item) -> bool:
    strings = ("evidence", "short_answer", "answer")
    return (isinstance(item, dict) and all(isinstance(item.get(key), str) for key in strings)
            and isinstance(item.get("questions"), list) and all(isinstance(q, str) for q in item["questions"])
            and not any(TAGS.search(text) for text in [*(item[key] for key in strings), *item["questions"]]))


def read_rewrites(answers: list[dict], passages: list[Passage], fits, report: Report) -> list[tuple[Passage, str]]:
    kept: dict[int, list[str]] = {}
    candidates = []
    for answer, passage in zip(answers, passages):
        report.rewrites_offered += 1
        text = parse_json(answer["content"], "text") if not answer.get("skipped") else None
        if answer.get("skipped") == "too_large":
            report.rejected["too_large"] += 1
            continue
        if not isinstance(text, str) or TAGS.search(text):
            report.rejected["rewrite_malformed"] += 1
            continue
        text = text.strip()
        same = kept.setdefault(id(passage), [])
        reason = rewrite_rejection(text, passage, same)
        if reason is None and not all(fits(question, text) for question in passage.questions or [passage.subject]):
            reason = "too_long"
        if reason:
            report.rejected[reason] += 1
            continue
        same.append(text)
        candidates.append((passage, text))
    return candidates


def verified(judge, checks: list[tuple[str, Passage, dict]], cache: AnswerCache, votes: int, report: Report) -> list[bool]:
    """For each (prompt, passage, values): whether a majority of `votes` verdicts says the passage supports it
    (all True when votes is 0: verification off)."""
    if votes <= 0 or not checks:
        return [True] * len(checks)
    asked = [Request(render(prompt, title=p.title, subject=p.subject, passage=p.text, **values), "qa_verdict",
                     VERDICT_SCHEMA, 0.0, VERDICT_TOKENS, vote=vote) for prompt, p, values in checks for vote in range(votes)]
    answers = ask(judge, asked, cache, report, "verification")
    results = []
    for start in range(0, len(answers), votes):
        said = [verdict_of(answer["content"]) for answer in answers[start:start + votes]]
        report.unreadable_votes += said.count(None)
        true = said.count(True)
        report.verdicts += 1
        report.votes += votes
        report.votes_true += true
        report.unanimous += true in (0, votes)
        results.append(2 * true > votes)
    return results
