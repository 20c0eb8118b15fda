"""From an article's plain text to instruction/response pairs that fit the model's context.

    text ──clean──> sections (lead, "歴史", "歴史 > 起源", ...) ──questions──> pairs ──fit──> examples

* The text is TextExtracts' plain text with `== heading ==` lines (or wikitext, rendered here with
  mwparserfromhell when a wiki has no TextExtracts); what neither should leave (reference marks,
  markup, footnote and link sections) is removed.
* The lead answers an overview question, each section a question about that section, phrased in
  one of several Japanese wordings picked deterministically from (seed, title, section).
* Text longer than `max_tokens` (the whole example in the Mistral instruct format, measured with the
  model's own SentencePiece model) is packed sentence by sentence into parts; a sentence is never cut,
  and a sentence that cannot fit on its own is dropped and counted.
"""

import random
import re
from dataclasses import dataclass, field

import mwparserfromhell

from cthulhu_sft.format import MistralFormat

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
MARKUP = re.compile(r"\[\[|\]\]|\{\{|\}\}|'''|''|<\s*/?\s*[A-Za-z][^>]*>|^\s*\{\||^\s*\|\}|__[A-Z]+__", re.M)
# A sentence ends with 。！？!? outside brackets (with the closing marks after it), or at a line break.
SENTENCE_ENDS = "。！？!?"
OPENING, CLOSING = "「『（(【〔〈《", "」』）)】〕〉》\"”’"
# The same without bracket nesting: for a quotation too long to keep whole.
SIMPLE_SENTENCE = re.compile(r"[^。！？!?\n]*(?:[。！？!?]+[」』）)】〕〉》\"”’]*|\n+|$)")
MIN_RESPONSE_CHARS = 10  # fragments such as a lone name or "詳細は後述。" teach nothing

OVERVIEW_PHRASINGS = (
    "{subject}について教えてください。",
    "{subject}とは何ですか？",
    "{subject}の概要を説明してください。",
    "{subject}について簡潔に説明してください。",
    "{subject}について知っていることを教えてください。",
)
SECTION_PHRASINGS = (
    "{subject}の{section}について教えてください。",
    "{subject}の{section}について説明してください。",
    "{subject}について、{section}を詳しく教えてください。",
    "{subject}に関して、{section}の内容を解説してください。",
    "{subject}の{section}はどのようなものですか？",
)
OVERVIEW_HEADINGS = {"概要", "概説", "解説"}
PART_SUFFIX = "（その{part}）"


@dataclass
class Section:
    path: tuple[str, ...]  # () for the lead, ("歴史", "起源") for a subsection
    text: str


@dataclass
class BuildStats:
    sections: int = 0
    dropped_sections: int = 0
    split_sections: int = 0
    dropped_sentences: int = 0
    dropped_short: int = 0
    notes: list[str] = field(default_factory=list)

    def add(self, other: "BuildStats") -> None:
        for name in ("sections", "dropped_sections", "split_sections", "dropped_sentences", "dropped_short"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.notes += other.notes


# ---------------------------------------------------------------------------------------------------
# Wikitext, for wikis without TextExtracts and for markup that should never have been there


LANGUAGE_NAMES = {
    "en": "英語", "de": "ドイツ語", "fr": "フランス語", "la": "ラテン語", "el": "ギリシア語", "grc": "古代ギリシア語",
    "ar": "アラビア語", "he": "ヘブライ語", "it": "イタリア語", "es": "スペイン語", "ru": "ロシア語", "zh": "中国語",
}
FIRST_PARAMETER_TEMPLATES = {
    "仮リンク", "nowrap", "small", "big", "smaller", "larger", "nobr", "sic", "要出典範囲", "補助漢字フォント",
    "jis2004フォント", "cp932フォント", "unicode", "quote", "quotation", "引用", "cquote", "blockquote", "en", "lang-ja",
    "ill", "ill2", "interlanguage link", "un", "コメント", "abbr", "color", "font color", "tooltip",
}
READING_TEMPLATES = {"ruby", "ルビ", "読み仮名", "読み仮名 ruby不使用", "読み仮名_ruby不使用", "nihongo", "nihongo2"}
HIDDEN_TAGS = {"ref", "references", "table", "gallery", "math", "score", "timeline", "imagemap", "templatedata", "hr",
               "syntaxhighlight", "source", "graph", "mapframe", "maplink", "inputbox", "categorytree", "noinclude"}
HIDDEN_LINK_NAMESPACES = {"file", "image", "media", "ファイル", "画像", "メディア", "category", "カテゴリ"}


def _parameter(template, index: int | str) -> str:
    key = str(index)
    return _render(template.get(key).value).strip() if template.has(key) else ""


def _render_template(template) -> str:
    name = str(template.name).strip().replace("_", " ")
    key = name.lower()
    if key == "lang":
        return _parameter(template, 2)
    if key.startswith("lang-"):
        text = _parameter(template, 1)
        language = LANGUAGE_NAMES.get(key[5:])
        return f"{language}: {text}" if language and text else text
    if key in READING_TEMPLATES:
        base, reading = _parameter(template, 1), _parameter(template, 2)
        return f"{base}（{reading}）" if base and reading else base or reading
    if key in FIRST_PARAMETER_TEMPLATES:
        return _parameter(template, 1)
    if key == "!":
        return "|"
    return ""  # infoboxes, citations, maintenance tags, navigation: nothing a reader reads as prose


def _render(code) -> str:
    parts = []
    for node in code.nodes:
        if isinstance(node, mwparserfromhell.nodes.Text):
            parts.append(str(node))
        elif isinstance(node, mwparserfromhell.nodes.Template):
            parts.append(_render_template(node))
        elif isinstance(node, mwparserfromhell.nodes.Wikilink):
            title = str(node.title).strip()
            namespace = title.lstrip(":").split(":", 1)[0].strip().lower() if ":" in title else ""
            if namespace in HIDDEN_LINK_NAMESPACES or (
                re.fullmatch(r"[a-z]{2,3}(?:-[a-z]+)?", namespace) and not title.startswith(":")
            ):
                continue  # images with their captions, categories, interlanguage links
            parts.append(_render(node.text) if node.text is not None else title.lstrip(":"))
        elif isinstance(node, mwparserfromhell.nodes.ExternalLink):
            parts.append(_render(node.title) if node.title is not None and node.brackets else "")
        elif isinstance(node, mwparserfromhell.nodes.Tag):
            tag = str(node.tag).strip().lower()
            if tag == "br":
                parts.append("\n")
            elif tag not in HIDDEN_TAGS and node.contents is not None:
                parts.append(_render(node.contents))
        elif isinstance(node, mwparserfromhell.nodes.Heading):
            bars = "=" * node.level
            parts.append(f"\n{bars} {_render(node.title).strip()} {bars}\n")
        elif isinstance(node, mwparserfromhell.nodes.HTMLEntity):
            parts.append(node.normalize())
        # Comments and {{{arguments}}} render as nothing.
    return "".join(parts)


def wikitext_to_text(wikitext: str) -> str:
    """Plain text with `== heading ==` lines, as a reader sees the page (for the templates known here)."""
    text = _render(mwparserfromhell.parse(wikitext))
    return re.sub(r"__[A-Z]+__", "", text)


# ---------------------------------------------------------------------------------------------------
# Text → sections


def clean_text(text: str) -> str:
    """Normalises whitespace and removes reference marks, footnote lines and any markup residue."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ").replace("\u200b", "")
    if MARKUP.search(text):
        text = wikitext_to_text(text)
    text = REFERENCE_MARK.sub("", text)
    # Brackets emptied by what the renderer left out: "（、英: X）" → "（英: X）", "（）" → "".
    text = re.sub(r"([（(])\s*[、，,;；]\s*", r"\1", text)
    text = re.sub(r"\s*[、，,;；]\s*([）)])", r"\1", text)
    text = re.sub(r"（\s*）|\(\s*\)", "", text)
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
# Sections → questions → examples that fit


def subject_of(title: str) -> str:
    """'ダゴン (クトゥルフ神話)' → 'ダゴン（クトゥルフ神話）', the way a question names it."""
    match = re.fullmatch(r"(.+?)\s*[（(]([^()（）]+)[)）]", title)
    return f"{match.group(1)}（{match.group(2)}）" if match else title


def section_label(path: tuple[str, ...]) -> str:
    return "の".join(f"「{heading}」" for heading in path)


def question(title: str, path: tuple[str, ...], seed: int) -> str:
    rng = random.Random(f"{seed}\x00{title}\x00{'/'.join(path)}")
    subject = subject_of(title)
    if not path or (len(path) == 1 and path[0] in OVERVIEW_HEADINGS):
        return rng.choice(OVERVIEW_PHRASINGS).format(subject=subject)
    return rng.choice(SECTION_PHRASINGS).format(subject=subject, section=section_label(path))


def example_length(fmt: MistralFormat, instruction: str, response: str) -> int:
    return len(fmt.encode_example(instruction, response).input_ids)


def fit(fmt: MistralFormat, instruction: str, text: str, max_tokens: int) -> tuple[list[tuple[str, str]], int]:
    """([(instruction, response)], sentences dropped): the text whole, or in parts at sentence ends."""
    if example_length(fmt, instruction, text) <= max_tokens:
        return [(instruction, text)], 0
    parts, current, dropped = [], [], 0

    def part_instruction():
        return instruction + PART_SUFFIX.format(part=len(parts) + 1)

    sentences = split_sentences(text)
    while sentences:
        sentence = sentences.pop(0)
        if sentence.strip() and example_length(fmt, part_instruction(), sentence.strip()) > max_tokens:
            pieces = [piece for piece in SIMPLE_SENTENCE.findall(sentence) if piece]
            if len(pieces) > 1:  # a long quotation: its own sentences are still sentences
                sentences[:0] = pieces
            else:
                dropped += 1  # one sentence longer than the budget: never cut it
            continue
        candidate = "".join(current + [sentence]).strip()
        if not candidate or example_length(fmt, part_instruction(), candidate) <= max_tokens:
            current.append(sentence)
            continue
        parts.append((part_instruction(), "".join(current).strip()))
        current = [sentence]
        if example_length(fmt, part_instruction(), sentence.strip()) > max_tokens:
            current, dropped = [], dropped + 1  # fitted with "（その9）" but not with "（その10）"
    if "".join(current).strip():
        parts.append((part_instruction(), "".join(current).strip()))
    if len(parts) == 1:  # only dropping made it fit: no "part 1 of 1"
        parts = [(instruction, parts[0][1])] if example_length(fmt, instruction, parts[0][1]) <= max_tokens else parts
    return parts, dropped


def build_examples(
    title: str, text: str, fmt: MistralFormat, max_tokens: int, seed: int
) -> tuple[list[dict], BuildStats]:
    """[{"instruction", "response"}] of one article's plain text (already cleaned or not)."""
    stats = BuildStats()
    sections, dropped = parse_sections(clean_text(text))
    stats.dropped_sections = len(dropped)
    examples = []
    for section in sections:
        stats.sections += 1
        pairs, lost = fit(fmt, question(title, section.path, seed), section.text, max_tokens)
        stats.dropped_sentences += lost
        stats.split_sections += len(pairs) > 1
        if lost:
            stats.notes.append(f"{title} {section_label(section.path) or '(lead)'}: {lost} sentence(s) longer than {max_tokens} tokens dropped")
        for instruction, response in pairs:
            if len(response) < MIN_RESPONSE_CHARS:
                stats.dropped_short += 1
                continue
            examples.append({"instruction": instruction, "response": response})
    return examples, stats


def dedupe(examples: list[dict]) -> tuple[list[dict], int]:
    """Keeps the first of examples with the same response (whitespace aside), whatever their instructions;
    returns them and how many were removed. Run before the split, it also keeps a text from being in both train and eval."""
    seen, kept = set(), []
    for example in examples:
        key = re.sub(r"\s+", " ", example["response"]).strip()
        if key in seen:
            continue
        seen.add(key)
        kept.append(example)
    return kept, len(examples) - len(kept)
