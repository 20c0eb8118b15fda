"""Measures of one answer against one reference row, for Japanese text: pure functions, no aggregation.

Normalisation (`normalize`, all measures)
    Unicode NFKC (full-width Ａ１ → A1, half-width ｸﾄｩﾙﾌ → クトゥルフ, ① → 1, ＝ → =), then lower case,
    and ’ ‘ → '. Japanese has no word spaces, so whitespace carries no meaning and is removed for ROUGE-L.

Key terms (`key_terms`) — the checkable facts of a text — are, in the normalised text:
    katakana  maximal runs of katakana letters (ァ–ヺ, ㇰ–ㇿ) and the long-vowel mark ー, not starting with ー,
              at least 2 characters. The mythos' names are katakana transliterations (クトゥルフ, ルルイエ,
              ネクロノミコン). Name separators ・ = ゠ end a run, so ハワード・フィリップス・ラヴクラフト gives
              ハワード, フィリップス, ラヴクラフト, and ヨグ＝ソトース and ヨグ・ソトース give the same terms.
    Latin     maximal runs of Latin letters (a–z and accented Latin letters) with inner apostrophes
              (r'lyeh), at least 2 letters, a possessive 's dropped; lower-cased, so Cthulhu = CTHULHU.
              Initials such as the H and P of "H. P. Lovecraft" are dropped, and so are English function words
              (the, of, and, ...: ENGLISH_STOPWORDS), which titles such as "The Call of Cthulhu" would add.
    numbers   runs of digits 0–9, with thousands commas removed (1,000 → 1000) and a decimal part kept
              (3.5); years such as 1926 are the main case. Single digits count. Numbers written in kanji
              count in the same form: 千九百二十八 and 一九二八 → 1928, 十九世紀 → 19, 三万 → 30000 — the numerals
              SudachiPy tags as such (数詞; a digit it reads as a prefix joins the numeral after it: 七 + 百三十 →
              730), valued by `kanji_number`, so 一般 or 唯一 are words, not numbers. A numeral of one kanji
              (一つ, 三部作, 十人) is left out: it is mostly part of an everyday phrase (「代表作の一つ」), and
              counting it would flag paraphrase as invention.
    kanji proper nouns
              runs of tokens that SudachiPy tags as proper nouns (固有名詞) holding at least two kanji:
              南極, 太平洋, 荒俣宏, 大瀧啓裕, 東京, 米国. A place name takes a following suffix token (太平 + 洋 →
              太平洋). Proper nouns in katakana alone are already katakana terms; マサチューセッツ州 (one kanji)
              adds nothing to マサチューセッツ. Other kanji and hiragana words are not key terms: they are
              mostly common vocabulary (小説, 作家, 架空の神性) that a correct answer is free to paraphrase.
    Terms are compared as sets of distinct terms. Known limits: transliteration variants other than those
    `fold_kana` joins (クトゥルフ / クトゥルー) are different terms; a made-up common noun (狂気山脈 where the
    source has 海底都市) is not seen; katakana vocabulary (ホラー, シリーズ) counts like a name.

SudachiPy (with sudachidict_core) rather than fugashi + unidic-lite: both install from PyPI alone, but
SudachiPy and its dictionary are maintained (dictionary releases several times a year, through 2026), while
unidic-lite ships an old UniDic (2.1.2) and is no longer updated, so newer names are missing from it. The dictionary is loaded once, on first use
(about 0.2 s); tokenizing takes about a millisecond per answer. Sudachi refuses inputs over 49,149 bytes, so
long texts are tokenized in pieces cut at line ends.

Supported terms (`unsupported_terms(answer, *support_texts)`): a key term of the answer is supported by a
text when it is one of the text's key terms, or — for a name (katakana, Latin, kanji term; not a number) —
when it occurs in the text's normalised form with whitespace and name separators removed, so that a
segmentation difference in context does not flag a term the text literally contains (太平洋 in 南太平洋,
ヨグソトース in ヨグ＝ソトース); both sides are compared without long-vowel marks and with ヴ as ブ (`fold_kana`), so
ラブクラフト is supported by ラヴクラフト. Numbers compare as whole numbers: 19 is not supported by 1926.

Other per-answer measures:
    rouge_l_f1       character-level ROUGE-L F1 of the normalised texts without whitespace:
                     2·LCS / (len(answer) + len(reference)); 1.0 when both are empty, 0.0 when one is.
    fact_recall      |terms(reference) ∩ terms(answer)| / |terms(reference)|; None (undefined) when the
                     reference has no key terms. An empty answer recalls 0.0.
    answer_is_correct
                     the answer contains one of the accepted short answers, both in `match_form`: normalised,
                     kanji numerals as digits, without whitespace, name separators (・ = ゠ -), long-vowel
                     marks (ー, so ナイアーラトテップ = ナイアラトテップ), quotes and brackets, and with ヴァ/ヴ → バ/ブ
                     (ラヴクラフト = ラブクラフト). An accepted form that starts or ends with a digit must not
                     continue a longer number (1926 does not match 19260, 19 does not match 1926). A loose
                     test of containment (the quiz check of the data's writers); the evaluation grades answers
                     with cthulhu_sft/grading.py, which also refuses negated, hedged and partial-word matches.
    is_abstention    the answer says it does not know (ABSTENTION phrases: わかりません, 存じません,
                     情報がありません, お答えできません, はっきりしたことは言えません, 知識の範囲外, 不明です,
                     確かな答えを持っていません, I don't know, ...) in its first sentence, or in its second when the
                     first is an apology (申し訳ありません。). grading.py looks for ABSTENTION anywhere in the
                     answer and keeps an answer that offers a candidate an answer.
    western_years    Japanese era years as Western years (昭和3年 → 1928年, 平成元年 → 1989年), applied to answers
                     and support texts before their terms are compared, so 昭和3年 is neither wrong nor invented.
    named_terms      titles in 『』「」 and kanji place or organisation names (霧ヶ浜, …教団): claims that key_terms
                     misses because no dictionary knows an invented name.
    SupportIndex     a whole crawl's texts prepared once (numbers, compact form), so that any article may
                     support a term.
    is_japanese      at least a third of the answer's letters (Unicode letters; digits and punctuation do not
                     count) are kana or kanji — a Latin letter says less than a Japanese character, so a
                     Japanese sentence quoting an English title stays Japanese — and a text of more than 10
                     letters has some kana (Chinese has none). A text with no letters (empty, "1926") is not in
                     another language, so it counts as Japanese.
    claimed_terms    the answer's key terms that count as its claims: all of them, except the Latin words of an
                     answer that is not in Japanese (an English answer's "entity" or "sleeping" are words, not
                     invented facts).
"""

import functools
import re
import unicodedata

KATAKANA = re.compile(r"[\u30A1-\u30FA\u31F0-\u31FF][\u30A1-\u30FA\u30FC\u31F0-\u31FF]+")
LATIN = re.compile(r"[a-z\u00DF-\u00F6\u00F8-\u024F]+(?:'[a-z\u00DF-\u00F6\u00F8-\u024F]+)*")
NUMBER = re.compile(r"[0-9]+(?:,[0-9]{3}(?![0-9]))*(?:\.[0-9]+)?")
KANJI = re.compile(r"[\u3005\u3400-\u4DBF\u4E00-\u9FFF\uF900-\uFAFF]")
KANA = re.compile(r"[\u3041-\u309F\u30A0-\u30FF\u31F0-\u31FF]")
KANJI_NUMERAL = re.compile(r"[〇一二三四五六七八九十百千万億兆]{2,}")
WHITESPACE = re.compile(r"\s+")
NAME_SEPARATORS = re.compile(r"[\s・=゠]+")
ENGLISH_STOPWORDS = frozenset(
    "an and are as at be by for from in into is it its of on or that the this to was were with".split()
)
# Sudachi's limit is 49,149 bytes; a Japanese character is 3 bytes in UTF-8 (4 for rare ones).
SUDACHI_MAX_CHARACTERS = 12_000

# Everything answer_is_correct ignores: whitespace, name separators and dashes, quotes and brackets.
MATCH_IGNORED = re.compile(r"[\s・=゠\-‐‑‒–—―−'\"“”「」『』〈〉《》【】()]+")
# Spelling variants of one katakana name: the long-vowel mark (ナイアーラトテップ, ナイアラトテップ) and ヴ (ラヴクラフト, ラブクラフト)
KANA_FOLDS = (("ー", ""), ("ヴァ", "バ"), ("ヴィ", "ビ"), ("ヴェ", "ベ"), ("ヴォ", "ボ"), ("ヴ", "ブ"))

ABSTENTION = re.compile(
    "|".join([
        r"(わか|分か|判)(りません|らない|りかね|っていません|っていない|らん)", r"存じ(上げ|あげ)?(ません|ない|て(い|お)りません)", r"知りません",
        r"知ら(ない|ん)(です|んです|のです|ので|ね|よ|[。.!?]|$)", r"(何|なん)とも(言|い)え", r"一概に(は)?(言|い)え", r"断定(は|が)?でき(ません|ない)",
        r"答え(よう|られ)(が|も)?(ない|ありません|ません)", r"覚えて(い|お)?(ません|ない)",
        r"記憶に(ありません|ございません|ない)", r"(お答え|答え|回答|説明|特定)(する|いたす|る)?こと(が|は)?(でき|いたしかね)ません", r"(でき|いたし|致し|し)かねます", r"(情報|資料|記録|データ|知識|文献).{0,6}(ございません|ありません|ない)",
        r"(情報|知識|答え|回答|資料|データ)(が|は|を)?(ありません|ない|見つかりません|見当たりません|持って(い|お)りません"
        r"|持っていません|持ち合わせて(い|お)りません|持ち合わせていません)",
        r"(お答え|答え|回答|断言|特定|判断|確認|明言|お伝え)(でき|いたしかね|しかね|られ|が出来)ません", r"確認できません",
        r"(はっきり|確か|正確|明確|定か)(な|に|と|したこと|なこと)?(は|が|を|も)?(言|い)え(ません|ない)",
        r"知識の範囲(外|を超え)", r"範囲外", r"(不明|未詳|不詳)(です|である|だ|とされ|のまま|。|$)", r"不確か",
        r"定かで(は)?(ありません|ない)", r"(自信|確信|確証)(が|は)?(ありません|ない|持てません|持てない)",
        r"思い出せ(ません|ない)", r"見当(が|も)?つき?(ません|ない)", r"申し上げられません", r"(詳しく|明らかになって)(い)?(ありません|ない|ません)",
        r"(確か|正確)な(答え|情報|こと|回答)を?(持って|持ち合わせて)", r"知る由も", r"把握して(い|お)りません|把握していません",
        r"i (don't|do not|cannot|can't) (know|answer|say|recall)", r"i'?m not (sure|certain)", r"i am not (sure|certain)",
        r"(don't|do not) have (any )?(information|knowledge)", r"no information", r"\bunknown\b", r"no idea",
        r"beyond my knowledge", r"^\W*n/?a\W*$", r"^\W*(なし|無し|該当なし|不明)\W*$", r"(該当|答え|回答)(は)?(なし|無し)",
        r"(情報|知識|資料|データ)(が|は)?(不足|足りません|足りない)", r"(記録|資料|情報)(が|は)?残って(い|お)?(ません|ない)",
        r"(お役に立て|お力になれ)(ず|ません)", r"(回答|お答え|答え)(を|は)?(差し)?控え", r"(思い|心)当たり(が)?(ません|ありません|ない)",
        r"(調べ|確認)(る|が)必要", r"アクセスでき(ません|ない)", r"(データ|情報|知識)に(は)?含まれて(い|お)?(ません|ない)",
        r"はっきり(しません|しない)", r"わかんない", r"ノー?コメント", r"^\W*さあ\W", r"\bnot (sure|certain)\b", r"\bno answer\b", r"^\W*(申し訳(ありません|ございません)|すみません|ごめんなさい)\W*$",
    ])
)
APOLOGY = re.compile(r"申し訳|すみません|ごめんなさい|恐れ入ります|sorry")
SENTENCE_END = re.compile(r"[。．！？!?\n]+")


ERAS = {"明治": 1868, "大正": 1912, "昭和": 1926, "平成": 1989, "令和": 2019}
KANJI_DIGITS = {"〇": 0, "零": 0, "一": 1, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9}
SMALL_UNITS = {"十": 10, "百": 100, "千": 1000}
LARGE_UNITS = {"万": 10_000, "億": 100_000_000, "兆": 1_000_000_000_000}
ERA_YEAR = re.compile(r"(明治|大正|昭和|平成|令和)\s*(元|[0-9]+|[〇零一二三四五六七八九十]+)\s*年")


def western_years(text: str) -> str:
    """Japanese era years as Western years: 昭和3年 → 1928年, 平成元年 → 1989年, 大正十五年 → 1926年."""
    def replace(match):
        number = 1 if match[2] == "元" else _small_number(match[2])
        return f"{ERAS[match[1]] + number - 1}年" if number else match[0]

    return ERA_YEAR.sub(replace, text)


def _small_number(text: str) -> int | None:
    """0–99 in digits or kanji (三, 十五, 二十, 六十四)."""
    if text.isdigit():
        return int(text)
    tens, _, ones = text.partition("十")
    if "十" not in text:
        return KANJI_DIGITS.get(text) if len(text) == 1 else None
    value = (KANJI_DIGITS.get(tens, 0) if tens else 1) * 10 + (KANJI_DIGITS.get(ones, 0) if ones else 0)
    return value if (not tens or tens in KANJI_DIGITS) and (not ones or ones in KANJI_DIGITS) else None


def normalize(text: str) -> str:
    """NFKC, lower case, typographic apostrophes → '."""
    return unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'").replace("\u2018", "'")


@functools.cache
def _dictionary():
    from sudachipy import Dictionary

    return Dictionary()


def _morphemes(text: str):
    """Sudachi's morphemes of a normalised text (mode C: the longest units), in pieces under Sudachi's limit.

    A tokenizer per call is cheap (the dictionary is shared) and keeps threads (the chat page) apart.
    """
    from sudachipy import SplitMode

    tokenizer = _dictionary().tokenizer(mode=SplitMode.C)
    for piece in _pieces(text):
        yield from tokenizer.tokenize(piece)


def _pieces(text: str):
    """The text cut at line ends (else anywhere) into pieces of at most SUDACHI_MAX_CHARACTERS."""
    piece = ""
    for line in text.splitlines(keepends=True):
        if len(piece) + len(line) > SUDACHI_MAX_CHARACTERS:
            if piece:
                yield piece
            piece = ""
            while len(line) > SUDACHI_MAX_CHARACTERS:
                yield line[:SUDACHI_MAX_CHARACTERS]
                line = line[SUDACHI_MAX_CHARACTERS:]
        piece += line
    if piece:
        yield piece


def _proper_nouns(text: str) -> set[str]:
    """Kanji proper nouns of a normalised text (see the module docstring)."""
    terms, run, place = set(), "", False
    for morpheme in _morphemes(text):
        pos = morpheme.part_of_speech()
        if pos[1] == "固有名詞":
            run, place = run + morpheme.surface(), place or pos[2] == "地名"
            continue
        if run and place and pos[0] == "接尾辞" and KANJI.search(morpheme.surface()):
            run += morpheme.surface()  # 太平 + 洋: Sudachi splits a place name from its suffix in some contexts
        if len(KANJI.findall(run)) >= 2:
            terms.add(run)
        run, place = "", False
    if len(KANJI.findall(run)) >= 2:
        terms.add(run)
    return terms


def _numeral_lines(text: str) -> str:
    """The lines of a text that hold a kanji numeral of two or more characters: only they need Sudachi."""
    return "".join(line for line in text.splitlines(keepends=True) if KANJI_NUMERAL.search(line))


def kanji_number(run: str) -> int:
    """The value of a run of kanji numerals: positional (一九二八 → 1928) or with units (千九百二十八, 七百三十, 三万)."""
    if not re.search("[十百千万億兆]", run):
        return int("".join(str(KANJI_DIGITS[character]) for character in run))
    total, section, digit = 0, 0, None
    for character in run:
        if character in KANJI_DIGITS:
            digit = KANJI_DIGITS[character] if digit is None else digit * 10 + KANJI_DIGITS[character]
        elif character in SMALL_UNITS:
            section += (1 if digit is None else digit) * SMALL_UNITS[character]
            digit = None
        else:
            total += (section + (digit or 0) or 1) * LARGE_UNITS[character]
            section, digit = 0, None
    return total + section + (digit or 0)


def _numbers(text: str) -> set[str]:
    """The numbers of a normalised text, written in digits or in kanji, as digits."""
    numbers = {number.replace(",", "") for number in NUMBER.findall(text)}
    numbers.update(str(kanji_number(run)) for run in _kanji_numerals(text))
    return numbers


def _kanji_numerals(text: str) -> list[str]:
    """The runs of two or more kanji numerals that Sudachi reads as one numeral (数詞; not 一二を争う's words)."""
    runs = KANJI_NUMERAL.findall(text)
    if not runs:
        return []
    pieces, joined = [], False  # the numeral morphemes, a digit that Sudachi takes for a prefix joined to the next (七 + 百三十)
    for morpheme in _morphemes(_numeral_lines(text)):
        surface, pos = morpheme.surface(), morpheme.part_of_speech()
        numeral = pos[1] == "数詞" and re.fullmatch(KANJI_NUMERAL.pattern[:-4] + "+", surface) is not None
        if joined and numeral and surface[0] in SMALL_UNITS:
            pieces[-1] += surface
        else:
            pieces.append(surface if numeral else "")
        joined = pos[0] == "接頭辞" and surface in KANJI_DIGITS
        if joined:
            pieces[-1] = surface
    return [run for run in runs if run in pieces]


@functools.lru_cache(maxsize=4096)
def _terms(text: str) -> frozenset[str]:
    text = normalize(text)
    terms = set(KATAKANA.findall(text)) | _numbers(text)
    words = (word.removesuffix("'s") for word in LATIN.findall(text))
    terms.update(word for word in words if len(word.replace("'", "")) >= 2 and word not in ENGLISH_STOPWORDS)
    if KANJI.search(text):
        terms.update(_proper_nouns(text))
    return frozenset(terms)


def key_terms(text: str) -> set[str]:
    """The key terms of a text: katakana runs, Latin words, numbers (digits or kanji) and kanji proper nouns."""
    return set(_terms(text))


def is_number(term: str) -> bool:
    return NUMBER.fullmatch(term) is not None


@functools.lru_cache(maxsize=256)
def _support(text: str) -> tuple[frozenset[str], str]:
    """What a support text offers: its numbers, and its normalised form without whitespace and name separators,
    kana folded, in which every other key term of it occurs (so a long corpus needs Sudachi only on its numeral
    lines)."""
    text = normalize(text)
    return frozenset(_numbers(text)), fold_kana(NAME_SEPARATORS.sub("", text))


def unsupported_terms(answer: str, *support_texts: str) -> set[str]:
    """The answer's key terms that none of the support texts supports (see "Supported terms" above)."""
    unsupported = set(_terms(answer))
    for text in support_texts:
        if not unsupported:
            break
        numbers, compact = _support(text)
        unsupported = {term for term in unsupported if not _supports(term, numbers, compact)}
    return unsupported


class SupportIndex:
    """Many support texts (a whole crawl) prepared once: their numbers and their compact, kana-folded form."""

    def __init__(self, texts):
        numbers, compacts = set(), []
        for text in texts:
            text = western_years(normalize(text))  # the corpus's 昭和3年 supports an answer's 1928
            numbers |= _numbers(text)
            compacts.append(fold_kana(NAME_SEPARATORS.sub("", text)))
        self.numbers, self.compact = frozenset(numbers), "\n".join(compacts)

    def supports(self, term: str) -> bool:
        return _supports(term, self.numbers, self.compact)


def unsupported(terms: set[str], *support_texts: str, index: SupportIndex | None = None) -> set[str]:
    """The terms (key terms or named_terms, normalised) that neither a support text nor the index supports; a term
    inside another unsupported one is one invention with it (浜町 of 霧ヶ浜町)."""
    terms = set(terms)
    for text in support_texts:
        if not terms:
            break
        numbers, compact = _support(text)
        terms = {term for term in terms if not _supports(term, numbers, compact)}
    if index is not None:
        terms = {term for term in terms if not index.supports(term)}
    names = {term for term in terms if not is_number(term)}
    return {term for term in terms if is_number(term) or not any(term != other and term in other for other in names)}  # 浜町 of 霧ヶ浜町


# Titles in 『』 or 「」 (short, no sentence inside), and kanji names of places and organisations by their suffix:
# 霧ヶ浜, 星の智慧派教団 are claims though no dictionary knows them.
TITLE = re.compile(r"『([^『』。\n]{1,30})』|「([^「」。、！？!?\n]{2,15})」")
PLACE_SUFFIX = re.compile(
    r"(?<![\u3005\u4E00-\u9FFF])(?:[\u3005\u4E00-\u9FFF]+[ヶケヵ][\u3005\u4E00-\u9FFF]+|[\u3005\u4E00-\u9FFF]{2,5}"
    r"(?:浜|島|岬|湾|村|町|郡|県|谷|峠|港|城|寺)|[\u3005\u4E00-\u9FFF]{1,6}(?:神社|大学|教団|教会|協会|結社|財団|研究所|"
    r"図書館|博物館|病院|出版|書房|山脈|諸島|半島))"
)


def named_terms(text: str) -> set[str]:
    """Names that key_terms misses, normalised: titles in 『』「」 (holding a kana or kanji) and kanji place or
    organisation names with a place suffix (霧ヶ浜, 大いなる…教団)."""
    text = normalize(text)
    titles = {book for book, _ in TITLE.findall(text) if KANJI.search(book) or KANA.search(book)}
    titles |= {quoted for _, quoted in TITLE.findall(text) if KANJI.search(quoted) or KATAKANA.search(quoted)}
    titles.discard("")
    return {NAME_SEPARATORS.sub("", title) for title in titles} | set(PLACE_SUFFIX.findall(text))


def _supports(term: str, numbers: frozenset[str], compact: str) -> bool:
    return term in numbers if is_number(term) else fold_kana(term) in compact


def claimed_terms(answer: str) -> set[str]:
    """The answer's key terms that count as claims: all but the Latin words of an answer not in Japanese."""
    terms = key_terms(answer)
    if is_japanese(answer):
        return terms
    return {term for term in terms if not LATIN.fullmatch(term)}


def lcs_length(a: str, b: str) -> int:
    """Length of the longest common subsequence of two strings (bit-parallel, Hyyrö 2004)."""
    if not a or not b:
        return 0
    masks: dict[str, int] = {}
    for position, character in enumerate(a):
        masks[character] = masks.get(character, 0) | (1 << position)
    full = (1 << len(a)) - 1
    row = full  # a 1 bit marks a position of `a` not (yet) matched
    for character in b:
        matched = row & masks.get(character, 0)
        row = ((row + matched) | (row - matched)) & full
    return len(a) - row.bit_count()


def rouge_l_f1(answer: str, reference: str) -> float:
    """Character-level ROUGE-L F1 of the normalised texts with whitespace removed."""
    answer = WHITESPACE.sub("", normalize(answer))
    reference = WHITESPACE.sub("", normalize(reference))
    if not answer and not reference:
        return 1.0
    if not answer or not reference:
        return 0.0
    return 2 * lcs_length(answer, reference) / (len(answer) + len(reference))


def fact_recall(answer: str, reference: str) -> float | None:
    """Share of the reference's key terms that the answer contains; None when the reference has none."""
    reference_terms = _terms(reference)
    if not reference_terms:
        return None
    return len(reference_terms & _terms(answer)) / len(reference_terms)


@functools.lru_cache(maxsize=1024)
def match_form(text: str) -> str:
    """The form in which answer_is_correct compares texts (see the module docstring)."""
    text = normalize(text)
    if KANJI_NUMERAL.search(text):
        text = _with_digits(text)
    return fold_kana(MATCH_IGNORED.sub("", text))


def fold_kana(text: str) -> str:
    """Without long-vowel marks, and ヴァ ヴィ ヴ ヴェ ヴォ as バ ビ ブ ベ ボ: one spelling of a katakana name."""
    for variant, plain in KANA_FOLDS:
        text = text.replace(variant, plain)
    return text


def _numerals_as_digits(line: str, numerals: set[str]) -> str:
    return KANJI_NUMERAL.sub(lambda match: str(kanji_number(match[0])) if match[0] in numerals else match[0], line)


def _with_digits(text: str) -> str:
    """The text with each kanji numeral of two or more characters written in digits (千九百二十八 → 1928)."""
    lines = text.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if KANJI_NUMERAL.search(line):
            lines[index] = _numerals_as_digits(line, set(_kanji_numerals(line)))
    return "".join(lines)


def answer_is_correct(answer: str, accepted: list[str]) -> bool:
    """Whether the answer contains one of the accepted short answers, compared in `match_form`."""
    text = match_form(answer)
    for form in map(match_form, accepted):
        if not form:
            continue
        pattern = ("(?<![0-9])" if form[0].isdigit() else "") + re.escape(form) + ("(?![0-9])" if form[-1].isdigit() else "")
        if re.search(pattern, text):
            return True
    return False


def is_abstention(answer: str) -> bool:
    """Whether the answer says it does not know, in its first sentence (after an apology)."""
    sentences = [sentence for sentence in SENTENCE_END.split(normalize(answer)) if sentence.strip()]
    if not sentences:
        return False
    opening = sentences[:2] if APOLOGY.search(sentences[0]) else sentences[:1]
    return any(ABSTENTION.search(sentence) for sentence in opening)


def is_japanese(answer: str) -> bool:
    """Whether the answer is written in Japanese (see the module docstring)."""
    letters = [character for character in normalize(answer) if unicodedata.category(character).startswith("L")]
    japanese = sum(1 for character in letters if KANA.match(character) or KANJI.match(character))
    if not letters:
        return True
    if len(letters) > 10 and not any(KANA.match(character) for character in letters):
        return False
    return 3 * japanese >= len(letters)
