"""Answer-quality measures for Japanese text: character ROUGE-L, fact recall, unsupported-term rate, EOS-stop rate.

Normalisation (all measures)
    Unicode NFKC (full-width Ａ１ → A1, half-width ｸﾄｩﾙﾌ → クトゥルフ, ① → 1, ＝ → =), then lower case,
    and ’ ‘ → '. Japanese has no word spaces, so whitespace carries no meaning and is removed for ROUGE-L.

Key terms — the checkable facts of an answer — are, in the normalised text:
    katakana  maximal runs of katakana letters (ァ–ヺ, ㇰ–ㇿ) and the long-vowel mark ー, not starting with ー,
              at least 2 characters. The mythos' names are katakana transliterations (クトゥルフ, ルルイエ,
              ネクロノミコン). Name separators ・ = ゠ end a run, so ハワード・フィリップス・ラヴクラフト gives
              ハワード, フィリップス, ラヴクラフト, and ヨグ＝ソトース and ヨグ・ソトース give the same terms.
    Latin     maximal runs of Latin letters (a–z and accented Latin letters) with inner apostrophes
              (r'lyeh), at least 2 letters; lower-cased, so Cthulhu = CTHULHU. Initials such as the H and P
              of "H. P. Lovecraft" are dropped, and so are English function words (the, of, and, ...:
              ENGLISH_STOPWORDS), which titles such as "The Call of Cthulhu" would otherwise contribute.
    numbers   runs of digits 0–9, with thousands commas removed (1,000 → 1000) and a decimal part kept
              (3.5); years such as 1926 are the main case. Single digits count.
    Kanji and hiragana words are not key terms: without a dictionary, kanji runs are mostly common
    vocabulary (小説, 作家, 架空の神性) that a correct answer is free to paraphrase, and counting them would
    flag paraphrase as invention. Known limits: transliteration variants (クトゥルフ / クトゥルー) are
    different terms; numbers written in kanji (三, 十九世紀) are not seen.
    Terms are compared as sets of distinct terms.

Measures of one answer against its reference (and the source article's text, when known):
    rouge_l_f1       character-level ROUGE-L F1 of the normalised texts without whitespace:
                     2·LCS / (len(answer) + len(reference)); 1.0 when both are empty, 0.0 when one is.
    fact_recall      |terms(reference) ∩ terms(answer)| / |terms(reference)|; None (undefined) when the
                     reference has no key terms. An empty answer recalls 0.0.
    unsupported_term_rate
                     share of the answer's terms found neither in terms(reference) nor in terms(source text);
                     None (undefined) when the answer has no key terms, e.g. an empty answer. Without a source
                     text only the reference supports terms, which overstates invention.
Over a run (`summarize`):
    rouge_l_f1            mean over answers;
    fact_recall           pooled: recalled reference terms / reference terms, over all answers;
    unsupported_term_rate pooled: unsupported answer terms / answer terms, over all answers
                          (pooling weighs every term alike and needs no special case for term-free answers);
    eos_stop_rate         share of generations that ended with </s> within max_new_tokens.
"""

import re
import unicodedata
from collections.abc import Sequence

KATAKANA = re.compile(r"[\u30A1-\u30FA\u31F0-\u31FF][\u30A1-\u30FA\u30FC\u31F0-\u31FF]+")
LATIN = re.compile(r"[a-z\u00DF-\u00F6\u00F8-\u024F]+(?:'[a-z\u00DF-\u00F6\u00F8-\u024F]+)*")
NUMBER = re.compile(r"[0-9]+(?:,[0-9]{3}(?![0-9]))*(?:\.[0-9]+)?")
WHITESPACE = re.compile(r"\s+")
ENGLISH_STOPWORDS = frozenset(
    "an and are as at be by for from in into is it its of on or that the this to was were with".split()
)


def normalize(text: str) -> str:
    """NFKC, lower case, typographic apostrophes → '."""
    return unicodedata.normalize("NFKC", text).lower().replace("\u2019", "'").replace("\u2018", "'")


def key_terms(text: str) -> set[str]:
    """The key terms of a text: katakana runs, Latin words and numbers, as defined in the module docstring."""
    text = normalize(text)
    terms = set(KATAKANA.findall(text))
    terms.update(
        word for word in LATIN.findall(text) if len(word.replace("'", "")) >= 2 and word not in ENGLISH_STOPWORDS
    )
    terms.update(number.replace(",", "") for number in NUMBER.findall(text))
    return terms


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
    reference_terms = key_terms(reference)
    if not reference_terms:
        return None
    return len(reference_terms & key_terms(answer)) / len(reference_terms)


def unsupported_terms(answer: str, reference: str, source_text: str = "") -> set[str]:
    """The answer's key terms found neither in the reference nor in the source text."""
    return key_terms(answer) - key_terms(reference) - key_terms(source_text)


def unsupported_term_rate(answer: str, reference: str, source_text: str = "") -> float | None:
    """Share of the answer's key terms that nothing supports; None when the answer has no key terms."""
    answer_terms = key_terms(answer)
    if not answer_terms:
        return None
    return len(unsupported_terms(answer, reference, source_text)) / len(answer_terms)


def eos_stop_rate(stopped: Sequence[bool]) -> float | None:
    """Share of generations that ended with </s> before max_new_tokens; None for no generations."""
    return sum(map(bool, stopped)) / len(stopped) if len(stopped) else None


def score(answer: str, reference: str, source_text: str = "") -> dict:
    """All per-answer measures, with the term counts that `summarize` pools."""
    answer_terms, reference_terms = key_terms(answer), key_terms(reference)
    return {
        "rouge_l_f1": rouge_l_f1(answer, reference),
        "fact_recall": fact_recall(answer, reference),
        "unsupported_term_rate": unsupported_term_rate(answer, reference, source_text),
        "reference_terms": len(reference_terms),
        "recalled_terms": len(reference_terms & answer_terms),
        "answer_terms": len(answer_terms),
        "unsupported_terms": sorted(unsupported_terms(answer, reference, source_text)),
    }


def summarize(scores: Sequence[dict], stopped: Sequence[bool]) -> dict:
    """Run-level measures from `score` results and the generations' stop flags (see the module docstring)."""
    reference_terms = sum(s["reference_terms"] for s in scores)
    answer_terms = sum(s["answer_terms"] for s in scores)
    return {
        "answers": len(scores),
        "rouge_l_f1": sum(s["rouge_l_f1"] for s in scores) / len(scores) if scores else None,
        "fact_recall": sum(s["recalled_terms"] for s in scores) / reference_terms if reference_terms else None,
        "unsupported_term_rate": (
            sum(len(s["unsupported_terms"]) for s in scores) / answer_terms if answer_terms else None
        ),
        "eos_stop_rate": eos_stop_rate(stopped),
        "reference_terms": reference_terms,
        "answer_terms": answer_terms,
    }
