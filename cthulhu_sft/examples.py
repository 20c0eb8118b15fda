"""From an article's plain text to passages a user can ask about, and cloze probes of trained sentences.

    text ──clean──> sections (lead, "歴史", "歴史 > 起源", ...) ──fit──> passages, each with K questions

* The text is TextExtracts' plain text with `== heading ==` lines; reference marks, footnote lines and
  the notes and links sections are removed.
* A question names the article's subject as a user would: its title without the disambiguation part
  ("ダゴン (クトゥルフ神話)" → "ダゴン"), a work in 『』. What the subject is comes from the lead's first
  sentence (`kind_of`): a person is asked as a person (「オーガスト・ダーレスは誰ですか？」), a work as a work
  (「『インスマウスを覆う影』はどのような作品ですか？」), anything else as a thing (「ダゴンとは何ですか？」).
  A 概要 section gets a summary question that is never the lead's, a section a question about that section,
  its headings never quoted (「『インスマウスを覆う影』のあらすじを教えてください。」), nested ones read as
  "登場作品のうち小説". `phrasings` distinct wordings per passage are picked deterministically from (seed,
  title, section, part).
* An answer never opens by pointing at text the user never saw: at a section's start, 彼/彼女 (a person's
  article) and 本作/同作 (a work's) become the subject, a connective (また、) is removed, and a sentence that
  still points back (彼らが…, この都市の館で…) is dropped and counted.
* A section too long for `max_tokens` (the whole example in the Mistral instruct format, measured with
  the model's own SentencePiece model) becomes several passages, cut between sentences, never inside
  one. A part asks about what it says, by the names it holds that the other parts do not
  ("ルルイエの歴史について、ウィアード・テイルズのことを教えてください。"). A part never opens by
  pointing back at text it does not hold: a sentence that starts with これ/その/彼ら… stays with the
  sentence before it (where both cannot fit in one part, it is dropped and counted), and a connective
  (また、しかし、…) at a part's start is removed.
"""

import random
import re
from collections import Counter
from dataclasses import dataclass, field

from cthulhu_sft.format import MistralFormat
from cthulhu_sft.metrics import _morphemes, is_japanese, key_terms, match_form, normalize

# Sections readers skip and that teach the model nothing about the mythos (notes, sources, links).
DROPPED_SECTION = re.compile(
    r"^(?:(?:脚注|注釈|注記|注|出典|参考文献|参考資料|参照|引用|引用文献|文献|関連項目|関連文献|関連書籍|"
    r"外部リンク|外部サイト|リンク|Notes|References|Bibliography|See also|External links)"
    r"(?:\s*[・、/／と及び]\s*)?)+$",
    re.I,
)
HEADING_WIKI = re.compile(r"^(={2,6})\s*(.*?)\s*\1\s*$")
HEADING_RAW = re.compile(r"^\x01\x02(\d)\x02\x01(.*)$")  # exsectionformat=raw
# Reference marks and maintenance tags that survive in some renderings: [1], [注 2], [要出典] ...
REFERENCE_MARK = re.compile(
    r"\[(?:\d+|[a-z]|注釈?\s*\d+|注\s*[a-z\d]+|要出典[^\]]{0,30}|要検証[^\]]{0,30}|要ページ番号|要説明|"
    r"誰によって\?|誰\?|いつ\?|どこ\?|独自研究\?|疑問点[^\]]{0,20}|リンク切れ|編集)\]"
)
# A sentence ends with 。！？!? outside brackets (with the closing marks after it), or at a line break.
SENTENCE_ENDS = "。！？!?"
OPENING, CLOSING = "「『（(【〔〈《", "」』）)】〕〉》\"”’"
# The same without bracket nesting: for a quotation too long to keep whole.
SIMPLE_SENTENCE = re.compile(r"[^。！？!?\n]*(?:[。！？!?]+[」』）)】〕〉》\"”’]*|\n+|$)")
MIN_RESPONSE_CHARS = 10  # fragments such as a lone name or "詳細は後述。" teach nothing
# A sentence that points back at the one before it ("彼らは…", "この説は…") is kept with it.
REFERRING = re.compile(
    r"^(?:これ|それ|あれ|この|その|あの|こうした|そうした|こう|そう|ここ|そこ|彼|彼女|同作|同書|同誌|同社|同年|同氏|"
    r"本作|本書|前者|後者|前述|上述|上記|後述|以上|同じく)"
)
# A connective that only links to the text before; removed where a part starts.
CONNECTIVE = re.compile(
    r"^(?:また|しかし|なお|さらに|そして|ただし|だが|一方で?|そのため|このため|その後|それでも|そこで|ところが|"
    r"同様に|加えて|他方|つまり|すなわち|したがって)[、，]\s*"
)
DISAMBIGUATION = re.compile(r"(.+?)\s*[（(][^()（）]+[)）]")
NAME_JOINERS = "・=＝゠"
KATAKANA_CHARS = re.compile(r"[\u30A1-\u30FA\u30FC]")
WORD_CHARS = re.compile(r"[\u30A1-\u30FA\u30FC\u3005\u4E00-\u9FFFA-Za-z.．]")  # a name that touches one is part of a word

LEAD_PHRASINGS = {  # by what the article is about (kind_of); a work's subject is named in 『』
    "thing": (
        "{subject}とは何ですか？",
        "{subject}について教えてください。",
        "{subject}とはどのようなものですか？",
        "{subject}について簡単に説明してください。",
        "{subject}について知っていることを教えてください。",
    ),
    "person": (
        "{subject}は誰ですか？",
        "{subject}について教えてください。",
        "{subject}はどのような人物ですか？",
        "{subject}について簡単に説明してください。",
        "{subject}について知っていることを教えてください。",
    ),
    "work": (
        "{subject}はどのような作品ですか？",
        "{subject}について教えてください。",
        "{subject}とはどんな作品ですか？",
        "{subject}の内容を簡単に説明してください。",
        "{subject}について知っていることを教えてください。",
    ),
}
SUMMARY_PHRASINGS = (  # a 概要 section beside a lead: never one of the lead's questions
    "{subject}の概要を教えてください。",
    "{subject}の概要を説明してください。",
    "{subject}について、概要をまとめてください。",
    "{subject}の概要はどのようなものですか？",
)
SECTION_PHRASINGS = (
    "{subject}の{section}を教えてください。",
    "{subject}の{section}について教えてください。",
    "{subject}の{section}について説明してください。",
    "{subject}の{section}はどのようなものですか？",
    "{subject}について、{section}を詳しく教えてください。",
    "{subject}に関して、{section}の内容を解説してください。",
)
PART_PHRASINGS = (  # {topic}: "ルルイエ", "ルルイエの概要", "ルルイエの歴史"; {terms}: names the part holds
    "{topic}について、{terms}のことを教えてください。",
    "{topic}に関して、{terms}について説明してください。",
    "{topic}について、{terms}に関わる話を教えてください。",
    "{topic}では、{terms}について何が知られていますか？",
)
MAX_PHRASINGS = min(map(len, (*LEAD_PHRASINGS.values(), SUMMARY_PHRASINGS, SECTION_PHRASINGS, PART_PHRASINGS)))
# How a lead's first sentence says what its subject is (kind_of): the noun it ends with, or what it tells.
PERSON_NOUNS = ("作家", "小説家", "詩人", "人物", "画家", "編集者", "翻訳家", "漫画家", "俳優", "脚本家", "評論家",
                "批評家", "研究家", "学者", "イラストレーター", "ゲームデザイナー", "映画監督", "出版者")
WORK_NOUNS = ("小説", "短編", "中編", "長編", "作品", "短編集", "映画", "漫画", "戯曲", "詩", "アンソロジー", "ゲーム",
              "シリーズ", "物語", "連作", "書籍", "RPG")
DEFINITION_END = re.compile(r"(?:である|であった|だった|だ|です|でした|とされる|とされている)?[。．.！!]*$")
# A birth: a life span of full dates in parentheses (a magazine's 1923年 - 1954年 is not one), or a year then 生まれ
BIRTH = re.compile(r"\d{3,4}年\d{1,2}月\d{1,2}日\s*[-–—－〜~]|\d{3,4}年[^。]{0,20}生まれ")
PERSON_PRONOUN = re.compile(r"^(?:彼女|彼)(?=[はがのもにを])")
WORK_PRONOUN = re.compile(r"^(?:本作品|本作|同作品|同作|この作品)(?=[はがのもにを])")
OVERVIEW_HEADINGS = {"概要", "概説", "解説"}
TERMS_PER_QUESTION = 2
# The longest terms a part question is expected to name, to reserve room for them when cutting parts.
TERMS_RESERVE = "アブドゥル・アルハズレッドやネクロノミコン"


@dataclass
class Section:
    path: tuple[str, ...]  # () for the lead, ("歴史", "起源") for a subsection
    text: str


@dataclass
class Passage:
    """A text a user can ask about (a section, or a part of one), with its questions (the first for eval)."""

    title: str
    subject: str
    section: str  # how questions and the writer's prompt name the section: "" for the lead
    text: str
    questions: list[str]
    source: str = ""  # where the text comes from (the page's URL), and its revision
    revid: int | None = None
    kind: str = "recitation"
    about: str = "thing"  # what the article is about: "person", "work" or "thing" (kind_of)


@dataclass
class Fact:
    """One fact a writer stated about a passage (synth.py): its evidence, the short answer a question asks for, a
    self-contained answer sentence, and two or more questions asking it in different words. Only facts that passed
    every check and the verification are made into Facts."""

    passage: Passage
    evidence: str  # a verbatim span of passage.text
    short_answer: str  # the name, number or phrase asked for
    answer: str  # a short self-contained Japanese sentence
    questions: list[str]


@dataclass
class BuildStats:
    sections: int = 0
    dropped_sections: int = 0
    split_sections: int = 0
    dropped_sentences: int = 0
    dropped_short: int = 0
    unaskable_parts: int = 0
    duplicates: int = 0  # passages whose text, or every question, an earlier passage already had
    notes: list[str] = field(default_factory=list)

    def add(self, other: "BuildStats") -> None:
        for name in ("sections", "dropped_sections", "split_sections", "dropped_sentences", "dropped_short",
                     "unaskable_parts", "duplicates"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.notes += other.notes


# ---------------------------------------------------------------------------------------------------
# Text → sections


def clean_text(text: str) -> str:
    """Normalises whitespace and removes reference marks, footnote lines and table residue."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ").replace("\u200b", "")
    text = REFERENCE_MARK.sub("", text)
    lines = []
    for line in text.split("\n"):
        if line.strip().startswith(("|", "!")) or "||" in line or line.count("\t") >= 2:
            continue  # what is left of a table row
        line = re.sub(r"[ \t]+", " ", line).strip()
        if line.startswith(("^", "↑")):
            continue  # a footnote with its back-link, outside the notes section
        lines.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def parse_sections(text: str) -> tuple[list[Section], list[tuple[str, ...]]]:
    """(sections with text, paths of sections dropped) from plain text with wiki or raw headings."""
    sections, dropped = [], []
    stack: list[tuple[int, str]] = []
    path, lines = (), []

    def close():
        body = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
        drops = [bool(DROPPED_SECTION.match(heading)) for heading in path]
        if any(drops):
            if drops[-1] and not any(drops[:-1]):  # report the dropped section, not each subsection
                dropped.append(path)
        elif body:
            sections.append(Section(path, body))

    for line in text.split("\n"):
        match = HEADING_WIKI.match(line) or HEADING_RAW.match(line)
        if not match:
            lines.append(line)
            continue
        level = len(match.group(1)) if match.re is HEADING_WIKI else int(match.group(1))
        heading = match.group(2).strip()
        close()
        while stack and stack[-1][0] >= level:
            stack.pop()
        stack.append((level, heading))
        path, lines = tuple(h for _, h in stack), []
    close()
    return sections, dropped


def split_sentences(text: str) -> list[str]:
    """Sentences with their closing marks and line breaks; joining them gives back the text.

    「いあ！　いあ！」と叫んだ。 is one sentence: an end mark inside brackets does not end it.
    """
    units, start, depth, index = [], 0, 0, 0
    while index < len(text):
        char = text[index]
        end = None
        if char == "\n":
            end = index + 1
            while end < len(text) and text[end] == "\n":
                end += 1
            depth = 0
        elif char in OPENING:
            depth += 1
        elif char in CLOSING:
            depth = max(0, depth - 1)
        elif char in SENTENCE_ENDS and depth == 0:
            end = index + 1
            while end < len(text) and (text[end] in SENTENCE_ENDS or text[end] in CLOSING):
                end += 1
        if end is None:
            index += 1
            continue
        units.append(text[start:end])
        start = index = end
    if start < len(text):
        units.append(text[start:])
    return units


# ---------------------------------------------------------------------------------------------------
# Names a user can type


def subject_of(title: str) -> str:
    """'ダゴン (クトゥルフ神話)' → 'ダゴン': what a user calls the article's topic."""
    match = DISAMBIGUATION.fullmatch(title)
    return match.group(1) if match else title


def quoted(subject: str) -> str:
    """How a question names a subject: a title that is a phrase (it holds kana: 狂気の山脈にて) in 「」."""
    return f"「{subject}」" if re.search(r"[\u3041-\u309F]", subject) else subject


def subjects_of(titles: list[str]) -> dict[str, str]:
    """{title: subject}; titles whose subjects would be the same keep their disambiguation, so that
    'ダゴン (クトゥルフ神話)' and 'ダゴン (小説)' are never asked the same question."""
    counts = Counter(subject_of(title) for title in titles)
    return {title: subject_of(title) if counts[subject_of(title)] == 1 else re.sub(r"\s*\((.+)\)$", r"（\1）", title)
            for title in titles}


def section_label(path: tuple[str, ...]) -> str:
    """('登場作品', '小説') → '登場作品のうち小説': the last two headings, as a sentence says them, never quoted
    (「『インスマウスを覆う影』のあらすじを教えてください。」)."""
    return "のうち".join(path[-2:])


def normalize_question(text: str) -> str:
    """What makes two questions the same: NFKC, case, and everything but letters and digits ignored."""
    return re.sub(r"[\W_]+", "", normalize(text))


def named_terms(text: str) -> list[str]:
    """The evaluation's key terms of `text` as written there (names whole: ハワード・フィリップス・ラヴクラフト),
    in order of appearance; bare numbers only as years (1928年)."""
    # normalised character by character, so that a position in the folded text maps back to the text even where
    # NFKC changes the length ("…" → "...")
    pieces = [normalize(character) for character in text]
    folded, owner = "".join(pieces), [index for index, piece in enumerate(pieces) for _ in piece]
    found = {}
    for term in key_terms(text):
        position = folded.find(term)
        if position < 0:
            continue
        start, end = owner[position], owner[position + len(term) - 1] + 1
        if term.isdigit():
            if len(term) != 4 or text[end:end + 1] != "年":
                continue
            end += 1
        while start > 1 and text[start - 1] in NAME_JOINERS and KATAKANA_CHARS.match(text[start - 2]):
            start -= 2
            while start > 0 and KATAKANA_CHARS.match(text[start - 1]):
                start -= 1
        while end + 1 < len(text) and text[end] in NAME_JOINERS and KATAKANA_CHARS.match(text[end + 1]):
            end += 2
            while end < len(text) and KATAKANA_CHARS.match(text[end]):
                end += 1
        found.setdefault(text[start:end], start)
    names = sorted(found, key=found.get)
    return [name for name in names if not any(name != other and name in other for other in names)]


# ---------------------------------------------------------------------------------------------------
# Sections → passages that fit


def example_length(fmt: MistralFormat, instruction: str, response: str) -> int:
    return len(fmt.encode_example(instruction, response).input_ids)


def pack(fmt: MistralFormat, question: str, text: str, max_tokens: int) -> tuple[list[str], int]:
    """(parts, sentences dropped): the text whole, or cut between sentences so that each part fits `max_tokens`
    after `question`. A sentence is never cut; one that cannot fit on its own is dropped and counted."""

    def fits(response: str) -> bool:
        return example_length(fmt, question, response.strip()) <= max_tokens

    if fits(text):
        return [text], 0
    sentences, dropped = [], 0
    for sentence in split_sentences(text):
        pieces = [sentence] if fits(sentence) else [p for p in SIMPLE_SENTENCE.findall(sentence) if p]
        for piece in pieces:  # a quotation too long to keep whole: its own sentences are still sentences
            if fits(piece):
                sentences.append(piece)
            else:
                dropped += 1
    units = []
    for sentence in sentences:
        if units and REFERRING.match(sentence.lstrip()) and fits(units[-1] + sentence):
            units[-1] += sentence
        else:
            units.append(sentence)
    parts, current = [], ""
    for unit in units:
        if current.strip() and not fits(current + unit):
            parts.append(current.strip())
            current = ""
        current += unit
    if current.strip():
        parts.append(current.strip())
    opened = [parts[0]] if parts else []
    for part in parts[1:]:
        part, lost = open_plainly(part)
        dropped += lost
        if part:
            opened.append(part)
    return opened, dropped


def open_plainly(part: str) -> tuple[str, int]:
    """The part without a leading connective, and without leading sentences that point back; (text, dropped)."""
    part, lost = CONNECTIVE.sub("", part, count=1), 0
    while REFERRING.match(part):  # kept with the sentence before it unless both did not fit together
        rest = "".join(split_sentences(part)[1:]).strip()
        part, lost = CONNECTIVE.sub("", rest, count=1), lost + 1
    return part, lost


def pick(wordings: list[str], count: int, key: str, used: set[str]) -> list[str]:
    """`count` of `wordings`, in an order fixed by `key`, none already in `used` (normalised), which they join."""
    order = list(wordings)
    random.Random(key).shuffle(order)
    chosen = []
    for question in order:
        if normalize_question(question) not in used and len(chosen) < count:
            used.add(normalize_question(question))
            chosen.append(question)
    return chosen


def part_terms(part: str, others: list[str], known: str) -> str:
    """How a question names what this part says: up to two of its names that the other parts and `known`
    (subject and headings) do not hold, years only when it names nothing else ("ネクロノミコンやアルハズレッド");
    '' when it has none."""
    elsewhere = "\n".join(others)
    names = [name for name in named_terms(part) if name not in known]
    names = [name for name in names if not name[0].isdigit()] or names
    distinct = [name for name in names if name not in elsewhere] or names
    return "や".join(distinct[:TERMS_PER_QUESTION])


def ask_parts(parts: list[str], whole: list[str], topic: str, known: str, first_part_whole: bool,
              phrasings: int, key: str, used: set[str]) -> list[list[str]]:
    """The questions of each part ([] for a part with no name to ask by). A single part, or the first when
    `first_part_whole`, is asked with the `whole` text's wordings; any other part by the names it holds."""
    asked = []
    for index, part in enumerate(parts):
        questions = []
        if len(parts) == 1 or (index == 0 and first_part_whole):
            questions = pick(whole, phrasings, key, used)
        elif terms := part_terms(part, parts[:index] + parts[index + 1:], known):
            wordings = [template.format(topic=topic, terms=terms) for template in PART_PHRASINGS]
            questions = pick(wordings, phrasings, f"{key}\x00{index}", used)
        if not questions and index == 0:
            questions = pick(whole, phrasings, key, used)
        asked.append(questions)
    return asked


def fit_passages(fmt: MistralFormat, max_tokens: int, title: str, subject: str, section: str, text: str,
                 whole: list[str], topic: str, first_part_whole: bool, phrasings: int, key: str,
                 used: set[str], stats: BuildStats, min_chars: int = MIN_RESPONSE_CHARS) -> list[Passage]:
    """One text (a section, or an answer of a converted file) as passages whose every question fits; a part shorter
    than `min_chars` is dropped (crawled text: a fragment; a converted file keeps every answer)."""
    if max(example_length(fmt, question, text) for question in whole) <= max_tokens:
        parts, lost = [text], 0
    else:  # cut with room for the longest question a part may get
        longest = max(whole + [template.format(topic=topic, terms=TERMS_RESERVE) for template in PART_PHRASINGS], key=len)
        parts, lost = pack(fmt, longest, text, max_tokens)
    stats.dropped_sentences += lost
    stats.split_sections += len(parts) > 1
    if lost:
        stats.notes.append(f"{title} {section or '(lead)'}: {lost} sentence(s) dropped (too long, or pointing back "
                           "at a sentence that did not fit with them)")
    passages = []
    for part, questions in zip(parts, ask_parts(parts, whole, topic, f"{subject}\n{section}", first_part_whole,
                                                phrasings, key, used)):
        questions = [question for question in questions if example_length(fmt, question, part) <= max_tokens]
        if not questions:
            stats.unaskable_parts += 1
        elif len(part) < min_chars:
            stats.dropped_short += 1
        else:
            passages.append(Passage(title, subject, section, part, questions))
    return passages


def build_passages(title: str, text: str, fmt: MistralFormat, max_tokens: int, phrasings: int = 2, seed: int = 0,
                   subject: str | None = None) -> tuple[list[Passage], BuildStats]:
    """The passages of one article's plain text, each with `phrasings` distinct questions that fit `max_tokens`."""
    subject = subject or subject_of(title)
    stats = BuildStats()
    sections, dropped = parse_sections(clean_text(text))
    stats.dropped_sections = len(dropped)
    has_lead = any(not section.path for section in sections)
    about = kind_of(next((section.text for section in sections if not section.path), sections[0].text if sections else ""))
    named = f"『{subject}』" if about == "work" else quoted(subject)
    used: set[str] = set()  # one article never asks the same question twice
    passages = []
    for section in sections:
        stats.sections += 1
        label = section_label(section.path)
        overview = len(section.path) == 1 and section.path[0] in OVERVIEW_HEADINGS
        lead = not section.path or (overview and not has_lead)
        if lead:
            templates, topic, label = LEAD_PHRASINGS[about], named, ""
        else:
            templates, topic = (SUMMARY_PHRASINGS if overview else SECTION_PHRASINGS), f"{named}の{label}"
        whole = [template.format(subject=named, section=label) for template in templates]
        key = f"{seed}\x00{title}\x00{'/'.join(section.path)}"
        body, lost = (section.text, 0) if lead else open_section(section.text, named, about)
        stats.dropped_sentences += lost
        if lost:
            stats.notes.append(f"{title} {label}: {lost} sentence(s) dropped at its start (pointing back at text "
                               "before the section)")
        if body:
            built = fit_passages(fmt, max_tokens, title, subject, label, body, whole, topic, lead, phrasings, key,
                                 used, stats)
            for passage in built:
                passage.about = about
            passages += built
    return passages, stats


def kind_of(lead: str) -> str:
    """What an article is about, from its lead's first sentence (the definition: 「Xは、アメリカの小説家である。」):
    "person" when it ends with a PERSON_NOUNS word or tells a birth (BIRTH: 1917年に…生まれ, 1909年2月24日 - …), "work"
    when it ends with a WORK_NOUNS word or tells a publication (発表) without saying that the subject appears in
    one (登場: a thing in a story), else "thing"."""
    first = next((sentence for sentence in split_sentences(lead) if sentence.strip()), "")
    core = re.sub(r"[（(][^()（）]*[)）]\s*$", "", DEFINITION_END.sub("", first.strip()))
    if core.endswith(PERSON_NOUNS) or BIRTH.search(first):
        return "person"
    if core.endswith(WORK_NOUNS) or ("発表" in first and "登場" not in first):
        return "work"
    return "thing"


def open_section(text: str, named: str, about: str) -> tuple[str, int]:
    """A section's text as an answer that opens plainly: 彼/彼女 (a person's article) and 本作/同作 (a work's) at its
    start read as the subject; a leading connective is removed and sentences pointing back are dropped; (text,
    sentences dropped)."""
    text = CONNECTIVE.sub("", text.lstrip(), count=1)
    pronoun = {"person": PERSON_PRONOUN, "work": WORK_PRONOUN}.get(about)
    if pronoun:
        text = pronoun.sub(named.strip("「」"), text, count=1)
    return open_plainly(text)


# ---------------------------------------------------------------------------------------------------
# Cloze probes: LAMA-style questions about trained sentences, answered by one of their key terms

CLOZE_QUESTION = "{subject}について、次の文の空欄に入る語を答えてください：『{sentence}』"
BLANK = "＿＿"


def cloze(subject: str, sentence: str, rng: random.Random, title: str = "", names: dict | None = None) -> dict | None:
    """{"instruction", "response", "answers"} blanking one name (whole) or year of `sentence`; None when it has
    no blank worth asking (`fair_blank`). names: {match_form(name): every name of one article}."""
    sentence = sentence.strip()
    if not 15 <= len(sentence) <= 150 or REFERRING.match(sentence) or CONNECTIVE.match(sentence):
        return None
    candidates = []
    for name in named_terms(sentence):
        if not is_japanese(name):  # a Latin name: a bare Latin answer is scored as a non-Japanese answer
            continue
        answer = name.removesuffix("年") if name[0].isdigit() else name
        blanked = sentence.replace(answer, BLANK)
        if fair_blank(answer, sentence, blanked, f"{subject}\n{title}", names or {}):
            candidates.append((answer, blanked))
    if not candidates:
        return None
    answer, blanked = rng.choice(candidates)
    return {"instruction": CLOZE_QUESTION.format(subject=quoted(subject), sentence=blanked), "response": answer,
            "answers": [answer]}


def fair_blank(answer: str, sentence: str, blanked: str, own: str, names: dict) -> bool:
    """Whether blanking `answer` asks something: not the article's own subject nor a word of its title (`own`);
    nothing the blanked sentence still shows (the same term, another name of the same article, a reading in
    parentheses beside it: 「クトゥルフ（Cthulhu）」); a whole name (not ロバート・E・＿＿, nor the ＿＿ of
    ＿＿神話, which the category gives away); a name, not a common noun (ゲーム, ホラー)."""
    terms = key_terms(answer)
    if terms & key_terms(own) or match_form(answer) in match_form(own) or terms & key_terms(blanked):
        return False
    if any(match_form(other) in match_form(blanked) for other in names.get(match_form(answer), []) if match_form(other)):
        return False
    for match in re.finditer(re.escape(answer), sentence):
        before, after = sentence[match.start() - 1:match.start()], sentence[match.end():match.end() + 1]
        if any(char and char in "（()）" + NAME_JOINERS for char in (before, after)):
            return False
        if not answer.isdigit() and (WORD_CHARS.match(before or " ") or WORD_CHARS.match(after or " ")):
            return False  # part of a longer word: クトゥルフ神話, 南太平洋, E・ハワード
    return answer.isdigit() or not is_common_noun(answer)


def is_common_noun(word: str) -> bool:
    """Whether the dictionary knows every part of `word` as a common noun (ゲーム, ホラー; not クトゥルフ, which it
    does not know, nor ハワード or 南極, which it tags as proper nouns)."""
    morphemes = list(_morphemes(normalize(word)))
    return all(not m.is_oov() and m.part_of_speech()[:2] == ("名詞", "普通名詞") for m in morphemes)


def cloze_probes(passages: list[Passage], ratio: float, seed: int, names: dict | None = None) -> list[tuple[Passage, dict]]:
    """About `ratio` of the sentences of one article's passages that hold a fair blank, each as a cloze probe
    (at least one when there is any); names: {match_form(name): every name of one article} (splits.alias_groups)."""
    if ratio <= 0 or not passages:
        return []
    rng = random.Random(f"{seed}\x00cloze\x00{passages[0].title}")
    candidates = [(passage, sentence) for passage in passages for sentence in split_sentences(passage.text)]
    probes = [(passage, probe) for passage, sentence in candidates
              if (probe := cloze(passage.subject, sentence, rng, passage.title, names))]
    count = min(len(probes), max(1, round(len(probes) * ratio)))
    return [probes[index] for index in sorted(rng.sample(range(len(probes)), count))]
