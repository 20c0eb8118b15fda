"""One answer against its accepted short answers: correct, incorrect or not attempted, as SimpleQA grades.

    correct        the answer commits to an accepted form: it names one (matched as a whole word or name), does
                   not negate it (「ラヴクラフトではありません」), does not offer it as one candidate among others of
                   the same kind (「A、B、Cのいずれか」「1926年か1927年」「AまたはB」), and is in Japanese. A single
                   hedged answer (「たぶんラヴクラフトだと思います」) is correct, as in SimpleQA.
    not attempted  the answer is empty (no letter or digit), or abstains (「わかりません」「はっきりしたことは言えま
                   せん」「その点については私の知識の範囲外です」「正確な作者は不明です」, with or without an apology:
                   metrics.ABSTENTION) without offering a candidate and without negating an accepted form, or — as
                   SimpleQA grades — gives no answer at all: no accepted form, no other candidate, nothing against
                   the accepted answer (「有名な作家です」「ラヴクラフトの友人の作家です」); a name of the question
                   given as the answer (「ラヴクラフトです」 to a question about his successor) is incorrect.
    incorrect      everything else: another answer, a negated or hedged accepted form, an English sentence.

Accepted forms are compared in a folded form (`fold`): NFKC and lower case (full/half width, Ｈ → h), Japanese
era years as Western years (昭和3年 → 1928年, 平成元年 → 1989年), kanji numerals as digits (千九百二十八 → 1928),
ヴ as ブ, no long-vowel marks (ナイアーラトテップ = ナイアラトテップ), no name separators (・ = ゠ spaces dashes)
nor quotes and brackets; where a separator was, a word boundary is kept. A match must be whole:
    katakana and Latin  not continued by a letter of the same script (「ハリウッド」 does not name ハリ); a
                        name may be preceded by initials or given names (H・P・ラヴクラフト names ラヴクラフト);
                        an accepted form as the data writes it may be the first part of a longer name after a
                        separator (ソニア names ソニア・グリーン, so アーカム names アーカム・ハウス), a name tail
                        derived from it may not (ハワード of ロバート・E・ハワード is not in ハワード・フィリップス…)
    digits              not continued by a digit (1926 is not 19)
    kanji               starting at a word boundary (SudachiPy, short units: 京都 is not in 東京都); a form as the
                        data writes it may end inside a word (狂気の山 of 狂気の山脈)
Each accepted form also accepts its family name and its shorter tails (エドガー・ホフマン・プライス → ホフマン・プライス,
プライス; at least 3 characters) and, for a year, the year without 年.

A candidate of the same kind is a number (for a numeric accepted form) or a name — katakana or Latin run, kanji
proper noun — (otherwise) that is not an accepted form and not in the question. The answer hedges when such a
candidate is listed next to the accepted form (、 , / と や か または もしくは あるいは から 〜 ? ...), when a
sentence with the accepted form holds both a candidate and a marker of choice (いずれか どれか どちらか または
もしくは あるいは ないし or either 候補), when a candidate is offered as a possibility (「ダーレスかもしれません」
「ダーレスの可能性も」「ダーレスという説も」), or when another sentence asks a candidate (「ラヴクラフト？ダーレス？」).

Known limits: an answer that names two accepted forms and negates one (「クトゥルフではなくクトゥルーです」) is
incorrect; a candidate written in hiragana or as a common noun is not seen; a negation further than the clause
of the name (「ラヴクラフトが書いたという説は、今では否定されています」) is not seen.
"""

import functools
import re
from dataclasses import dataclass

from . import metrics
from .metrics import KANJI, fold_kana, normalize, western_years

CORRECT, INCORRECT, NOT_ATTEMPTED = "correct", "incorrect", "not_attempted"

# Removed by `fold`, leaving a word boundary: whitespace, name separators, dashes, quotes, brackets, apostrophes
BOUNDARY = re.compile(r"[\s・·•‧⋅=゠\-‐‑‒–—―−'\"“”「」『』〈〉《》【】()\[\]{}]")
# What `fold` removes: boundary characters, and a full stop that is not a decimal point (H. P. Lovecraft)
REMOVED = re.compile(BOUNDARY.pattern + r"+|(?<![0-9])\.|\.(?![0-9])")
SENTENCE_END = "。！？!?\n"
# What may stand between two listed candidates: a suffix, then list punctuation or a word of choice
SUFFIX = r"(?:年|年代|氏|さん|様|先生|ら)?"
LIST_JOIN = re.compile(  # | marks where a boundary character (a bracket, a space) was
    SUFFIX + r"(?:だった|でした|です|など|なの|だ)?"
    r"\|?(?:(?:、|,|/|と|や|か|及び|および|または|もしくは|あるいは|或いは|ないし|から|~|〜|～|ー|or|either|\?)\|?)+$"
)
CHOICE = re.compile(r"いずれ|どれか|どちらか|どっちか|どれ(?:で|な)|または|もしくは|あるいは|或いは|ないし|それとも|候補|"
                    r"のうちの?(?:一|ひと)つ|(?:^|\|)(?:or|either)(?:\||$)")
# A candidate offered as a possibility, just after its name: 「ダーレスかもしれません」「ダーレスの可能性も」「ダーレスという説も」
POSSIBILITY = re.compile(r"^(?:年|氏|さん)?(?:だ|です|の|という|とする|とも)?(?:かもしれ|かも知れ|可能性|説|考えられ|言われ|いわれ)")
# A negation of the name just before it in the same clause: 「ラヴクラフトではありません」「ラヴクラフトの作品ではなく」
NEGATION = re.compile(
    r"^[^、,。！？!?\n]{0,12}?(?:(?:では|じゃ|で)(?:は)?(?:ありません|ございません|ない|無い|なく|無く|なかった)"
    r"(?!(?:です|でしょう|だろう|のです|んです|ん)?か(?!もしれ|も知れ))|とは(?:違|異な|言え|言い切れ|限ら|断定でき)|以外"
    r"|(?:という|とする|とした)?のは(?:誤|間違)|は(?:誤り|間違い)|(?:は|とは|と)?(?:関係|無関係)(?:が)?(?:ありません|ない|です))"
)
NAME_TAIL_MIN = 3
# A name given as the answer: 「ラヴクラフトです」「ラヴクラフトが書きました」, not 「ラヴクラフトの友人です」
ANSWER_SLOT = re.compile(r"^(?:年|氏|さん)?(?:です|でした|だ|でしょう|でございます|が|という|とされ|と考えられ|[。!?]|$)")
# Katakana and Latin words that are vocabulary, never a candidate answer (「学習データにありません」 offers none)
COMMON_WORDS = frozenset(
    "データ ソース アクセス インターネット ウェブ サイト システム モデル トレーニング テキスト リソース ファン ホラー "
    "ジャンル シリーズ ストーリー キャラクター クイズ イメージ ケース ポイント レベル タイプ テーマ ヒント パターン "
    "ルール リスト メモリ エラー ai or either not".split()
)
INITIALS_MAX = 3  # what may be left of an answer beside the name it gives (ＨＰ) without making it non-Japanese
ITEM_FILLER = 4  # what a list item may hold beside its candidate (です, でしょう, a number)


@dataclass(frozen=True)
class Folded:
    """A text in the folded form: `text`, and the positions where a boundary character was removed."""

    text: str
    boundaries: frozenset[int]


@dataclass(frozen=True)
class Grade:
    grade: str | None  # CORRECT, INCORRECT, NOT_ATTEMPTED; None without accepted answers
    empty: bool
    abstained: bool  # says it does not know and offers nothing (also without accepted answers)
    reason: str


@functools.lru_cache(maxsize=4096)
def fold(text: str) -> Folded:
    """The folded form of a text (see the module docstring); line ends become 。."""
    text = western_years(normalize(text))
    if metrics.KANJI_NUMERAL.search(text):
        text = metrics._with_digits(text)
    text = fold_kana(text).replace("\n", "。")
    pieces, boundaries, length, last = [], set(), 0, 0
    for match in REMOVED.finditer(text):
        pieces.append(text[last:match.start()])
        length += match.start() - last
        boundaries.add(length)
        last = match.end()
    pieces.append(text[last:])
    return Folded("".join(pieces), frozenset(boundaries))


def script(character: str) -> str:
    if "\u30A1" <= character <= "\u30FA" or "\u31F0" <= character <= "\u31FF" or character == "ー":
        return "katakana"
    if character.isascii() and character.isalpha() or "\u00DF" <= character <= "\u024F":
        return "latin"
    if character.isdigit():
        return "digit"
    if KANJI.match(character):
        return "kanji"
    return "other"


def accepted_forms(accepted: list[str]) -> list[tuple[str, bool]]:
    """The folded forms an answer may name, each with whether it must end a name (strict): the accepted forms as
    written (not strict: the data's forms may be the first part of a name, ソニア of ソニア・グリーン, or of a word,
    狂気の山 of 狂気の山脈), their name tails (strict: ハワード of ロバート・E・ハワード is not ハワード・フィリップス・
    ラヴクラフト), a year without 年."""
    forms = {}
    for answer in accepted:
        parts = [part for part in BOUNDARY.split(western_years(normalize(answer))) if part]
        for start in range(len(parts)):
            form = fold("".join(parts[start:])).text
            if form and (start == 0 or len(form) >= NAME_TAIL_MIN and script(form[0]) in ("katakana", "latin")):
                forms[form] = forms.get(form, True) and start > 0
        if re.fullmatch(r"[0-9]+年", fold(answer).text):
            forms.setdefault(fold(answer).text[:-1], False)
    return sorted(forms.items(), key=lambda item: len(item[0]), reverse=True)


def occurrences(folded: Folded, forms: list[tuple[str, bool]]) -> list[tuple[int, int]]:
    """The spans of `folded.text` where a form is named whole (longest forms first, not overlapping)."""
    spans: list[tuple[int, int]] = []
    for form, strict in forms:
        for match in re.finditer(re.escape(form), folded.text):
            start, end = match.span()
            if any(start < other_end and other_start < end for other_start, other_end in spans):
                continue
            if _whole(folded, start, end, strict):
                spans.append((start, end))
    return sorted(spans)


def _whole(folded: Folded, start: int, end: int, strict: bool) -> bool:
    text = folded.text
    first, last = script(text[start]), script(text[end - 1])
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    if first == "digit" and before.isdigit() or last == "digit" and after.isdigit():
        return False
    if last in ("katakana", "latin") and after and script(after) == last and (strict or end not in folded.boundaries):
        return False  # ハリ in ハリウッド; a name tail continued by another name part
    if first in ("katakana", "latin") and before and script(before) == first and start not in folded.boundaries:
        return False
    if first == "kanji" and before and KANJI.match(before) and start not in _word_starts(text):
        return False  # 京都 in 東京都
    if strict and last == "kanji" and after and KANJI.match(after) and end not in _word_starts(text):
        return False
    return True


@functools.lru_cache(maxsize=1024)
def _word_starts(text: str) -> frozenset[int]:
    """Positions where a SudachiPy short unit begins (and the end of the text)."""
    from sudachipy import SplitMode

    tokenizer = metrics._dictionary().tokenizer(mode=SplitMode.A)
    starts, position = set(), 0
    for piece in metrics._pieces(text):
        for morpheme in tokenizer.tokenize(piece):
            starts.add(position + morpheme.begin())
        position += len(piece)
    return frozenset(starts | {len(text)})


@functools.cache
def _common_words() -> frozenset[str]:
    return frozenset(fold(word).text for word in COMMON_WORDS)


def candidate_spans(folded: Folded, numeric: bool, answer: str = "") -> list[tuple[int, int]]:
    """The spans of the answer's numbers (numeric) or names: katakana or Latin runs, kanji proper nouns, titles in
    『』 (of `answer`)."""
    text = folded.text
    if numeric:
        return [match.span() for match in re.finditer(r"[0-9]+(?:\.[0-9]+)?", text)]
    spans = []
    for match in re.finditer(r"[\u30A1-\u30FA\u30FC\u31F0-\u31FFa-z\u00DF-\u00F6\u00F8-\u024F]+", text):
        start, end = match.span()
        if script(text[start]) == "katakana":  # a katakana name with a kanji tail: ムー大陸 (folded ム大陸)
            end += len(re.match(r"[\u3005\u4E00-\u9FFF]*", text[end:])[0])
        cuts = [start] + sorted(b for b in folded.boundaries if start < b < end) + [end]
        latin = script(text[start]) == "latin"
        pieces = list(zip(cuts, cuts[1:])) if latin else [(start, end)]  # Latin words keep their spaces
        spans += [piece for piece in pieces if piece[1] - piece[0] >= 2 and text[piece[0]:piece[1]] not in _common_words()]
    if not metrics.is_japanese(text):  # an English sentence's words are not candidates (metrics.claimed_terms)
        spans = []
    if KANJI.search(text):
        for noun in metrics._proper_nouns(text):
            spans += [match.span() for match in re.finditer(re.escape(noun), text)]
    names = set(re.findall(r"『([^『』]+)』", normalize(answer))) | metrics.named_terms(answer)  # 霧ヶ浜 too
    for name in filter(None, (fold(name).text for name in names)):
        spans += [match.span() for match in re.finditer(re.escape(name), text)]
    return sorted(set(spans))


def is_common_word(term: str) -> bool:
    """Whether a key term is everyday katakana or Latin vocabulary (COMMON_WORDS), not a name."""
    return fold(term).text in _common_words()


def grade_answer(answer: str, accepted: list[str] | None, question: str = "", unsupported: bool = False) -> Grade:
    """The grade of one answer (see the module docstring). `unsupported`: it states a key term that nothing
    supports, so that an abstention that states one is an answer (rows without accepted answers; with them, a
    candidate of the same kind decides)."""
    folded = fold(answer)
    if not re.search(r"\w", folded.text):
        return Grade(NOT_ATTEMPTED if accepted else None, True, False, "empty")
    abstains = metrics.is_abstention(answer) or metrics.ABSTENTION.search(normalize(answer)) is not None
    if not accepted:
        abstained = abstains and not unsupported
        return Grade(None, False, abstained, "abstains" if abstained else "no accepted answers")
    forms = accepted_forms(accepted)
    numeric = all(re.fullmatch(r"[0-9]+(?:\.[0-9]+)?年?", form) for form, _ in forms)
    named = occurrences(folded, forms)
    question_text = fold(question).text
    candidates = candidate_spans(folded, numeric, answer)
    others = [span for span in candidates if _is_other(folded, span, named, forms, question_text)]
    negated = [span for span in named if _negated(folded, span)]
    if negated:
        return Grade(INCORRECT, False, False, "negates an accepted answer")
    if named:
        if _hedged(folded, named, others):
            return Grade(INCORRECT, False, False, "one of several candidates")
        if not _japanese_apart_from(folded, named):
            return Grade(INCORRECT, False, False, "not in Japanese")
        return Grade(CORRECT, False, False, "names an accepted answer")
    if others:
        return Grade(INCORRECT, False, False, "names another answer")
    if abstains:  # an invented term beside it still counts for the hallucination rate
        return Grade(NOT_ATTEMPTED, False, not unsupported, "abstains")
    if not metrics.is_japanese(answer):
        return Grade(INCORRECT, False, False, "not in Japanese")
    if any(ANSWER_SLOT.match(folded.text[end:]) for start, end in candidates if _is_other(folded, (start, end), named, forms, "")):
        return Grade(INCORRECT, False, False, "answers with a name of the question")  # 「ラヴクラフトです」 to 「…の死後…」
    # Neither the answer nor another one, nothing against it: as SimpleQA, not attempted (「有名な作家です」)
    return Grade(NOT_ATTEMPTED, False, False, "gives no answer")


def _is_other(folded: Folded, span, named, forms, question_text: str) -> bool:
    """Whether a candidate span is another answer: not an accepted form or part of one, not in the question."""
    start, end = span
    term = folded.text[start:end]
    if any(start < other_end and other_start < end for other_start, other_end in named):
        return False
    if any(term in form for form, _ in forms):  # a part of an accepted name (エドガー of エドガー・ホフマン・プライス)
        return False
    core = re.match(r"[^\u3005\u4E00-\u9FFF]*", term)[0] or term  # クトゥルフ of クトゥルフ神話
    return not (question_text and (term in question_text or core in question_text))


def _negated(folded: Folded, span) -> bool:
    start, end = span
    text = folded.text
    if NEGATION.match(text[end:]):
        return True
    before = text[max(0, start - 3):start]
    return before.endswith("not") and (start - 3 in folded.boundaries or start - 3 <= 0)


def _sentence(text: str, position: int) -> tuple[int, int]:
    start = max(text.rfind(mark, 0, position) for mark in SENTENCE_END) + 1
    ends = [index for index in (text.find(mark, position) for mark in SENTENCE_END) if index >= 0]
    return start, min(ends, default=len(text))


def _hedged(folded: Folded, named, others) -> bool:
    text = folded.text
    spans = sorted(named + others)
    for (left_start, left_end), (right_start, right_end) in zip(spans, spans[1:]):
        pair = {(left_start, left_end), (right_start, right_end)}
        if pair & set(named) and pair & set(others) and LIST_JOIN.match(_marked(folded, left_end, right_start)):
            return True
    named_sentences = {_sentence(text, start) for start, _ in named}
    for sentence_start, sentence_end in named_sentences:
        inside = [span for span in others if sentence_start <= span[0] < sentence_end]
        if inside and CHOICE.search(_marked(folded, sentence_start, sentence_end)):
            return True
    items = {"named": set(), "other": set()}  # sentences or lines that are one candidate alone: a list written down
    for kind, spans in (("named", named), ("other", others)):
        for start, end in spans:
            sentence_start, sentence_end = _sentence(text, start)
            if sentence_end - sentence_start - (end - start) <= ITEM_FILLER:
                items[kind].add((sentence_start, sentence_end))
    if items["named"] and items["other"] - items["named"]:
        return True
    for start, end in others:
        if POSSIBILITY.match(text[end:]):
            return True
        sentence_start, sentence_end = _sentence(text, start)  # 「ラヴクラフト？ダーレス？」
        if (sentence_start, sentence_end) not in named_sentences and text[sentence_end:sentence_end + 1] in ("?", "？"):
            return True
    return False


def _marked(folded: Folded, start: int, end: int) -> str:
    """folded.text[start:end] with | where a boundary was (so that Latin words stay apart)."""
    return "".join(("|" if index in folded.boundaries else "") + folded.text[index] for index in range(start, end)) + (
        "|" if end in folded.boundaries else "")


def _japanese_apart_from(folded: Folded, named) -> bool:
    """Whether the answer without its named forms and initials is in Japanese (nothing left counts as Japanese)."""
    rest, position = [], 0
    for start, end in named:
        rest.append(_marked(folded, position, start))
        position = end
    rest.append(_marked(folded, position, len(folded.text)))
    words = re.sub(r"(?:^|(?<=[|\W]))[a-z](?=[|\W]|$)", "", "|".join(rest)).replace("|", " ")
    letters = [character for character in words if character.isalpha()]
    return len(letters) <= INITIALS_MAX or metrics.is_japanese(words)
