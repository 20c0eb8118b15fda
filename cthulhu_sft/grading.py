"""One answer against its accepted short answers: correct, incorrect or not attempted, as SimpleQA grades.

    correct        the answer commits to an accepted form: it names one (matched as a whole word or name), does
                   not negate it (「ラヴクラフトではありません」「ラヴクラフトだとは思えません」; a double negation
                   affirms: 「ラヴクラフト以外にありえません」「間違いなく」), does not offer it as one candidate among
                   others of the same kind (「A、B、Cのいずれか」「A・B・Cのいずれか」「1926年か1927年」「AまたはB」
                   「A and B」「A説とB説」「Aか誰か」), does not take it back for another (「Aです。いや、Bです。」
                   「実際に書いたのはB」), does not use it only to name something else (「ラヴクラフトの友人」
                   「クトゥルフの落とし子」「アーカム・ハウス」「ダゴン秘密教団」「1890年代」「1928年の前年」, a
                   longer title 『ラヴクラフト全集』 unless the question asks for a work), does not leave it open
                   (「ラヴクラフトかどうかはわかりません」: not attempted), and is in Japanese. Candidates listed as
                   context do not hedge an answer stated last in a clause of its own (「A、B、Cらが活躍した時代の作品
                   で、作者はAです」) nor one stated alone first (「Aです。なお、のちにA、B、Cらが書き継ぎました」).
                   A single hedged answer (「たぶんラヴクラフトだと思います」「わかりませんが、おそらくラヴクラフト
                   です」) is correct, as in SimpleQA. A negated other name offers nothing:
                   「ダーレスではありません」 alone gives no answer.
    not attempted  the answer is empty (no letter or digit), or abstains (「わかりません」「はっきりしたことは言えま
                   せん」「その点については私の知識の範囲外です」「正確な作者は不明です」, with or without an apology:
                   metrics.ABSTENTION) without offering a candidate and without negating an accepted form, or — as
                   SimpleQA grades — gives no answer at all: no accepted form, no other candidate, nothing against
                   the accepted answer (「有名な作家です」「ラヴクラフトの友人の作家です」); a name of the question
                   given as the answer (「ラヴクラフトです」 to a question about his successor) is incorrect.
    incorrect      everything else: another answer, a negated or hedged accepted form, an English sentence.

Accepted forms are compared in a folded form (`fold`): NFKC and lower case (full/half width, Ｈ → h), Japanese
era years as Western years (昭和3年 → 1928年, 平成元年 → 1989年), kanji numerals as digits (千九百二十八 → 1928),
a two-digit year as the accepted year it ends (’28 → 1928; 28年 without the apostrophe is another number), one
kanji numeral before a counter as a digit (三部作 → 3部作; an accepted number with its counter, 46歳, is graded as a
number and accepts the bare number, 享年46),
ヴ as ブ, no long-vowel marks (ナイアーラトテップ = ナイアラトテップ), no name separators (・ = ゠ spaces dashes)
nor quotes and brackets; where a separator was, a word boundary is kept. A match must be whole:
    katakana and Latin  not continued by a letter of the same script (「ハリウッド」 does not name ハリ); a
                        name may be preceded by initials or given names (H・P・ラヴクラフト names ラヴクラフト);
                        an accepted form as the data writes it may be the first part of a longer name after a
                        separator (ソニア names ソニア・グリーン; not before an organisation word: アーカム・ハウス
                        is a publisher, ORGANISATION), a name tail
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
A name of the question hedges too when a word of choice joins it to the accepted form (「ダーレスかリン・カーター」 to a
question about Derleth's successor). Words that no dictionary calls a name (titles written without 『』: 無名都市,
魔女の家の夢) hedge when they stand beside the accepted form with a word of choice (または もしくは あるいは, or か
after a kanji or katakana word: 「無名都市か狂気の山脈にて」), in a list ended by など or ら, beside it with 、 or ・ in a
sentence of choice, or in a later clause of possibility or correction (「…、魔女の家の夢かもしれません」「いや、魔女の
家の夢です」). A short answer to a question for a work that offers such words alone (「千夜一夜です」) is incorrect.

Known limits: a candidate written in hiragana or ending in hiragana (闇に棲みつくもの) is seen only beside a word of
choice or in a list; a negation further than the clause of the name (「ラヴクラフトが書いたという説は、今では否定
されています」) is not seen; a list written with ・ and no
word of choice reads as one name (「ラヴクラフト・ダーレス・スミスです」); letters as list labels (「A. ラヴクラフト
B. ダーレス」) are not seen; a vague range beside the answer (「1920年代のどこか、たぶん1928年」) is a hedged single
answer; the long-vowel fold makes ハリー name ハリ; a prefix word (「ネオ・ラヴクラフト」) is not seen.
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
SUFFIX = r"(?:年|年代|氏|さん|様|先生|ら|説)?"
LIST_JOIN = re.compile(  # | marks where a boundary character (a bracket, a space) was
    SUFFIX + r"(?:だった|でした|です|など|なの|だ)?"
    r"\|?(?:(?:、|,|/|と|や|か|及び|および|または|もしくは|あるいは|或いは|ないし|から|~|〜|～|ー|or|either|and|&|\?)\|?)+(?:[a-z0-9]\|)?$"
)
CHOICE = re.compile(r"いずれ|どれか|どちらか|どっちか|どれ(?:で|な)|または|もしくは|あるいは|或いは|ないし|それとも|候補|"
                    r"のうちの?(?:一|ひと)つ|(?:^|\|)(?:or|either)(?:\||$)")
# A candidate offered as a possibility, just after its name: 「ダーレスかもしれません」「ダーレスの可能性も」「ダーレスという説も」
POSSIBILITY = re.compile(r"^(?:年|氏|さん)?(?:だ|です|の|という|とする|とも)?(?:かもしれ|かも知れ|可能性|説|考えられ|言われ|いわれ)")
# A negation of the name just before it in the same clause: 「ラヴクラフトではありません」「ラヴクラフトの作品ではなく」
NEGATION = re.compile(
    r"^[^、,。！？!?\n]{0,12}?(?:(?:では|じゃ|で)(?:は|も)?(?:ありません|ございません|ない|無い|なく|無く|なかった|あり得|ありえ|有り得)"
    r"(?!(?:です|でしょう|だろう|のです|んです|ん)?か(?!もしれ|も知れ))|とは(?:違|異な|言え|言い切れ|限ら|断定でき)|以外(?!(?:に|と)(?:は)?(?:ありえ|あり得|有り得|考えられ|い(?:ない|ません)))|を除"
    r"|とは(?:思え|思わ|思いません|考えられ(?:ません|ない))|(?:はず|わけ)(?:が|は)(?:ありません|ない|無い)"
    r"|(?:という|とする|とした)?のは(?:誤|間違)|(?:と|という)?(?:勘違い|誤解|誤認)|は(?:誤り|間違い(?!な|あり))|(?:は|とは|と)?(?:関係|無関係)(?:が)?(?:ありません|ない|です))"
)
# The accepted name as a modifier of another answer: 「ラヴクラフトの友人」「クトゥルフの落とし子」「ラヴクラフトと共作した…」
RELATION = re.compile(
    r"^(?:氏|さん)?(?:の|と)[^、,。！？!?\n]{0,6}?(友人|友達|親友|弟子|師匠|妻|夫|父|母|息子|娘|兄|弟|姉|妹|子孫|末裔|眷属|落とし子|"
    r"従者|使者|化身|信者|信奉者|崇拝者|後継者|文通相手|仲間|知人|恋人|共作|合作|共著|文通|親交|影響を受け)")
# ... or the first word of an organisation's or a place's name: 「アーカム・ハウス」「ダゴン秘密教団」「ダゴン神殿」
ORGANISATION = re.compile(r"^(?:秘密)?(教団|教会|結社|協会|財団|研究所|大学|図書館|博物館|出版|書房|社(?!会)|神社|神殿|寺院|賞|ハウス|クラブ)")
# A later candidate that takes the accepted answer back: 「ラヴクラフトです。いや、ダーレスです。」
CORRECTION = re.compile(r"(?:^|[。、,!?])(?:あ|あっ|おっと)?、?(?:いや|いいえ)|訂正|間違え|言い間違|失礼|正しくは|撤回|"
                        r"言いたいところ|(?:実際|本当|実)(?:に|は)[^。!?]{0,10}のは")
# Both names of a pair negated across a comma: 「ラヴクラフトでも、ダーレスでもありません」
# ... and negations across a comma: 「ラヴクラフトでも、ダーレスでもありません」「ラヴクラフト、ではなく」「…とされますが、誤りです」
NEITHER = re.compile(r"^でも[、,][^。！？!?\n]{0,15}?でも(?:ありません|ない|なく)|^[、,](?:では|じゃ)(?:なく|ない)"
                     r"|^(?:と|という|って)[^。！？!?\n]{0,14}?(?:が|けど|けれど)[、,]?(?:それは|これは)?(?:誤|間違い(?!な)|誤解|俗説|違)")
# Not a commitment: 「ラヴクラフトかどうかはわかりません」
WHETHER = re.compile(r"^[^、,。！？!?\n]{0,8}?(?:かどうか|か否か)")
# A vague alternative beside the accepted name: 「ラヴクラフト、または彼の友人たちの誰か」「ラヴクラフトか誰か」
VAGUE = re.compile(r"誰か|どなたか|何か|どこか|その他|他の|ほかの|別の")
# A year as the edge of a span or of a decade: 「1890年代」「1928年の前年」「1928年以降」
RELATIVE_YEAR = re.compile(r"^年?(?:代|の?(?:前年|翌年|前々年|翌々年)|以前|以降|より(?:前|後)|の(?:前|後)(?:[にのでだ。]|$))")
# A clause of its own that states the answer last: 「…、作者はラヴクラフトです。」 (after は or が, nothing after it)
FRAME = re.compile(r"(?:は|が)\|?$")
CLOSE = re.compile(r"^(?:氏|さん)?(?:本人)?(?:です|でした|だ|である)?\|?[。!?]*$")
# A question that asks for a work, whose title may hold more than its accepted short form (『狂気の山脈にて』 for 狂気の山)
WORK_QUESTION = re.compile(r"(?:短編|長編|中編|作品|小説|連作|シリーズ|ライトノベル|ゲーム|題名|タイトル|戯曲|集|論|詩|映画|漫画)"
                           r"(?:の(?:題名|名前|タイトル))?(?:は|を)?(?:何|なん|どれ|\?|？)")
# Words of choice that hedge whatever stands beside the accepted name (「狂気の山または魔女の家の夢」), unless it points
# back (「ルルイエ、もしくはそれに似た都市」)
CHOICE_WORD = r"(?:または|もしくは|あるいは|或いは|ないし|それとも)"
# After the accepted name, the rest of its word may come first (狂気の山 of 狂気の山脈にて)
WORD_REST = r"(?:(?![はがをにでともの])[^\W_◎]{1,4}?)?"
CHOICE_AFTER = re.compile(WORD_REST + SUFFIX + r"\|?[、,]?" + CHOICE_WORD + r"\|?[、,]?(?!それ|その|これ|この|あれ|あの|彼|同様|似た)[^\W_]")
CHOICE_BEFORE = re.compile(r"[^\W_]{2}" + SUFFIX + r"\|?[、,]?" + CHOICE_WORD + r"\|?[、,]?$")
# A word written in kanji or katakana just before or after 「か」: 「千夜一夜か無名都市です」「無名都市か魔犬」
OR_WORD_BEFORE = re.compile(r"(?<![何誰])[\u3005\u4E00-\u9FFF\u30A1-\u30FA]か\|?$")
OR_WORD_AFTER = re.compile(WORD_REST + SUFFIX + r"か\|?[、,]?[\u3005\u4E00-\u9FFF\u30A1-\u30FA]{2}")
# A later clause that offers or corrects to something else, written in any words: 「…、魔女の家の夢かもしれません」
# 「…。いや、魔女の家の夢です」; not 「違うかもしれません」
NOUN_PHRASE = r"[\u3005\u4E00-\u9FFF\u30A1-\u30FA](?:[\u3005\u4E00-\u9FFF\u30A1-\u30FAー]|の(?!で|に))+"
LATER_ALTERNATIVE = re.compile(
    r"(?:^|[、,。!?])(?:でも|しかし|ただ|あるいは|もしかすると|もしかしたら)?[、,]?(?![違間誤別他])" + NOUN_PHRASE
    + r"(?:だった|でした|です|だ|の)?(?:かもしれ|かも知れ|可能性)"
    r"|(?:^|[、,。!?])(?:あ[、,]?)?(?:いや|いいえ)[、,]?(?![違間誤別他本冗確])" + NOUN_PHRASE + r"(?:だった|でした|です|だ)[。!?]*$")
# What a question for a work is not answered by: a generic description (「ラヴクラフトの短編です」)
# A list of words beside the accepted name, ended by など or ら: 「ラムジー・キャンベル、逢空万太などです」
LISTED_AFTER = re.compile(WORD_REST + SUFFIX + r"(?:(?:[、,][^\W_◎][^、,。!?◎]{0,19}?)+など|(?:[、,]" + NOUN_PHRASE + r")+ら(?![しれ]))")
GENERIC_HEAD = re.compile(r"(?:作品|小説|短編|長編|中編|物語|話|本|書|もの|作|シリーズ|連作|戯曲|詩|ゲーム|評論|集|作家|人物|人|名作|傑作)$")
# A number with its counter (46歳, 3部作): graded as a number; one kanji numeral before a counter is a digit (三部作)
COUNTER = r"(?:年|歳|才|人|巻|冊|部作|回|世紀|年間|日|か月|ヶ月|号|章|柱|匹)"
NUMERIC_FORM = re.compile(r"[0-9]+(?:\.[0-9]+)?" + COUNTER + "?")
ONE_KANJI_COUNT = re.compile(r"(?<![〇一二三四五六七八九十百千万])([一二三四五六七八九])(?=(?:部作|冊|巻|歳|才|人|回|世紀|柱|匹|か月|ヶ月))")
NAME_TAIL_MIN = 3
# A name given as the answer: 「ラヴクラフトです」「ラヴクラフトが書きました」, not 「ラヴクラフトの友人です」
ANSWER_SLOT = re.compile(r"^(?:年|氏|さん)?(?:です|でした|だ|でしょう|でございます|が|という|とされ|と考えられ|[。!?]|$)")
# Katakana and Latin words that are vocabulary, never a candidate answer (「学習データにありません」 offers none)
COMMON_WORDS = frozenset(
    "データ ソース アクセス インターネット ウェブ サイト システム モデル トレーニング テキスト リソース ファン ホラー "
    "ジャンル シリーズ ストーリー キャラクター クイズ イメージ ケース ポイント レベル タイプ テーマ ヒント パターン "
    "ルール リスト メモリ エラー ノーコメント コメント ai or either not and".split()
)
INITIALS_MAX = 3  # what may be left of an answer beside the name it gives (ＨＰ) without making it non-Japanese
# ... or its other name parts in Latin letters (Howard Phillips Lovecraft, 『北極星』（Polaris）): at most this many words,
# none of them English sentence words
NAME_WORDS_MAX = 3
SENTENCE_WORDS = metrics.ENGLISH_STOPWORDS | frozenset(
    "wrote written writer created author think maybe probably perhaps answer name yes no not i he she his her who "
    "sure was is".split())
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
    text = ONE_KANJI_COUNT.sub(lambda match: str(metrics.KANJI_DIGITS[match[1]]), text)
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
        if NUMERIC_FORM.fullmatch(fold(answer).text) and not fold(answer).text[-1].isdigit():  # 1928 of 1928年, 46 of 46歳
            forms.setdefault(re.match(r"[0-9.]+", fold(answer).text)[0], False)
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


def candidate_spans(folded: Folded, numeric: bool, answer: str = "", parts: bool = False) -> list[tuple[int, int]]:
    """The spans of the answer's numbers (numeric) or names: katakana or Latin runs, kanji proper nouns, titles in
    『』 (of `answer`); with `parts`, each part of a katakana name between separators."""
    text = folded.text
    if numeric:
        return [match.span() for match in re.finditer(r"[0-9]+(?:\.[0-9]+)?", text)]
    spans = []
    for match in re.finditer(r"[\u30A1-\u30FA\u30FC\u31F0-\u31FF]+|[a-z\u00DF-\u00F6\u00F8-\u024F]+", text):
        start, end = match.span()
        if script(text[start]) == "katakana":  # a katakana name with a kanji tail: ムー大陸 (folded ム大陸)
            end += len(re.match(r"[\u3005\u4E00-\u9FFF]*", text[end:])[0])
        cuts = [start] + sorted(b for b in folded.boundaries if start < b < end) + [end]
        latin = script(text[start]) == "latin"
        # Latin words keep their spaces; katakana name parts (ラヴクラフト・ダーレス・スミス) only when asked (parts)
        pieces = list(zip(cuts, cuts[1:])) if latin or parts else [(start, end)]
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
    if not re.search(r"[^\W_]", folded.text):
        return Grade(NOT_ATTEMPTED if accepted else None, True, False, "empty")
    abstains = metrics.is_abstention(answer) or metrics.ABSTENTION.search(normalize(answer)) is not None
    if not accepted:
        abstained = abstains and not unsupported
        return Grade(None, False, abstained, "abstains" if abstained else "no accepted answers")
    forms = accepted_forms(accepted)
    numeric = all(NUMERIC_FORM.fullmatch(form) for form, _ in forms)
    if numeric:
        folded = fold(_with_short_years(answer, forms))
    named = occurrences(folded, forms)
    question_text = fold(question).text
    candidates = candidate_spans(folded, numeric, answer)
    others = [span for span in candidates if _is_other(folded, span, named, forms, question_text, numeric)]
    others = [span for span in others if not _negated(folded, span)]  # 「ダーレスではありません」 offers nothing
    asked = [span for span in candidates if span not in others and not _negated(folded, span)  # the question's names
             and _is_other(folded, span, named, forms, "", numeric)]
    titles = [] if WORK_QUESTION.search(normalize(question)) else [
        fold(title).text for title in re.findall(r"『([^『』]+)』", normalize(answer))]
    modifiers = [span for span in named if _names_something_else(folded, span, question_text, titles)]
    if modifiers and len(modifiers) == len(named):
        return Grade(INCORRECT, False, False, "names something else by the accepted answer")
    named = [span for span in named if span not in modifiers and not WHETHER.match(folded.text[span[1]:])]
    negated = [span for span in named if _negated(folded, span)]
    if negated and not any(span > max(negated) and _in_answer_slot(folded.text, span[1]) for span in named):
        return Grade(INCORRECT, False, False, "negates an accepted answer")  # not 「クトゥルフではなくクトゥルーです」
    named = [span for span in named if span not in negated]
    if named:
        parts = [] if numeric else [span for span in candidate_spans(folded, False, answer, parts=True)
                                    if _is_other(folded, span, named, forms, question_text)]
        stated = _stated_first(folded, named, [*others, *parts, *asked]) or named  # a later list of context repeats it
        if _hedged(folded, stated, others, parts, asked, numeric) and not _states_last(folded, named, [*others, *parts]):
            return Grade(INCORRECT, False, False, "one of several candidates")
        if _taken_back(folded, named, [*others, *asked]):
            return Grade(INCORRECT, False, False, "takes the accepted answer back")
        if not _japanese_apart_from(folded, named):
            return Grade(INCORRECT, False, False, "not in Japanese")
        return Grade(CORRECT, False, False, "names an accepted answer")
    if others:
        return Grade(INCORRECT, False, False, "names another answer")
    if abstains:  # an invented term beside it still counts for the hallucination rate
        return Grade(NOT_ATTEMPTED, False, not unsupported, "abstains")
    if not metrics.is_japanese(answer):
        return Grade(INCORRECT, False, False, "not in Japanese")
    if any(_in_answer_slot(folded.text, end) for start, end in candidates if _is_other(folded, (start, end), named, forms, "")):
        return Grade(INCORRECT, False, False, "answers with a name of the question")  # 「ラヴクラフトです」 to 「…の死後…」
    if WORK_QUESTION.search(normalize(question)) and _names_a_title(folded):
        return Grade(INCORRECT, False, False, "names another title")  # 「千夜一夜です」 to 「…の短編は何ですか」
    # Neither the answer nor another one, nothing against it: as SimpleQA, not attempted (「有名な作家です」)
    return Grade(NOT_ATTEMPTED, False, False, "gives no answer")


def _is_other(folded: Folded, span, named, forms, question_text: str, numeric: bool = False) -> bool:
    """Whether a candidate span is another answer: not an accepted form or part of a name (a number is whole: 28 is
    not 1928), not in the question."""
    start, end = span
    term = folded.text[start:end]
    if any(start < other_end and other_start < end for other_start, other_end in named):
        return False
    if any(term == form if numeric else term in form for form, _ in forms):  # エドガー of エドガー・ホフマン・プライス
        return False
    core = re.match(r"[^\u3005\u4E00-\u9FFF]*", term)[0] or term  # クトゥルフ of クトゥルフ神話
    return not (question_text and (term in question_text or core in question_text))


def _with_short_years(answer: str, forms) -> str:
    """The answer with a two-digit year (’28) as the accepted year it abbreviates (1928)."""
    years = {form[:4] for form, _ in forms if re.fullmatch(r"[0-9]{4}年?", form)}

    def expand(match):
        return next((year for year in sorted(years) if year.endswith(match[1])), match[0])

    return re.sub(r"'([0-9]{2})(?![0-9])", expand, normalize(answer))


def _stated_first(folded: Folded, named, candidates) -> list:
    """The accepted names of the answer's first sentence when it states one alone, before any other candidate
    (「オーガスト・ダーレスです。なお、後にダーレス、スミス、ブロックらが関わりました。」); else []."""
    text = folded.text
    if min([*named, *candidates]) not in named:
        return []
    start, end = _sentence(text, min(named)[0])
    marked = _marked(folded, start, end)
    inside = [span for span in named if start <= span[0] < end]
    if any(start <= span[0] < end for span in candidates) or CHOICE.search(marked) or VAGUE.search(marked):
        return []
    return inside if any(_in_answer_slot(text, span[1]) for span in inside) else []


def _states_last(folded: Folded, named, others) -> bool:
    """Whether the answer ends on a clause of its own that states an accepted name (FRAME, CLOSE): the candidates
    before it were context (「ラヴクラフト、ダーレス、スミスらが活躍した時代の作品で、作者はラヴクラフトです」)."""
    text = folded.text
    start, end = max(named)
    if any(other[0] > start for other in others):
        return False
    clause = max(text.rfind(mark, 0, start) for mark in "、,。!?") + 1
    before = _marked(folded, clause, start)
    return bool(FRAME.search(before) and CLOSE.match(_marked(folded, end, len(text)))
                and not any(clause <= other[0] for other in others) and not CHOICE.search(before))


def _names_something_else(folded: Folded, span, question_text: str, titles: list[str]) -> bool:
    """Whether the accepted name only qualifies another answer (RELATION, ORGANISATION) that the question does not
    ask about (「ラヴクラフトの弟子です」 answers 「誰の弟子ですか」), or is part of a longer title in 『』 (folded; none
    when the question asks for a work)."""
    start, end = span
    for title in titles:
        if any(match.start() <= start and end <= match.end() and len(title) > end - start
               for match in re.finditer(re.escape(title), folded.text)):
            return True  # 『ラヴクラフト全集』
    rest = folded.text[end:]
    if re.fullmatch(r"[0-9]+年?", folded.text[start:end]) and RELATIVE_YEAR.match(rest):
        return True
    match = RELATION.match(rest) or ORGANISATION.match(rest)
    return match is not None and match[1] not in question_text


def _in_answer_slot(text: str, end: int) -> bool:
    """Whether the name ending at `end` is given as the answer (ANSWER_SLOT); a subject whose sentence ends in a noun
    describes the answer instead (「クトゥルフが眠る都市です」)."""
    match = ANSWER_SLOT.match(text[end:])
    if not match or match[0] != "が":
        return match is not None
    rest = text[end:_sentence(text, end)[1]]
    return not re.search(r"(?<![のん])(?:です|でした|だ|である|でしょう)$", rest)


def _taken_back(folded: Folded, named, others) -> bool:
    """Whether a candidate after the last accepted name corrects it (CORRECTION between them)."""
    last = max(end for _, end in named)
    later = [start for start, _ in others if start >= last]  # `others` holds no negated candidate
    return any(CORRECTION.search(folded.text[last:start]) for start in later)


def _negated(folded: Folded, span) -> bool:
    start, end = span
    text = folded.text
    if NEGATION.match(text[end:]) or NEITHER.match(text[end:]):
        return True
    before = text[max(0, start - 3):start]
    return before.endswith("not") and (start - 3 in folded.boundaries or start - 3 <= 0)


def _sentence(text: str, position: int) -> tuple[int, int]:
    start = max(text.rfind(mark, 0, position) for mark in SENTENCE_END) + 1
    ends = [index for index in (text.find(mark, position) for mark in SENTENCE_END) if index >= 0]
    return start, min(ends, default=len(text))


def _listed_beside(folded: Folded, masked: str, start: int, end: int) -> bool:
    """Whether another word is listed just before or after the accepted name (、 or a separator between them)."""
    before = masked[max(0, start - 2):start]
    word = r"[\u3005\u4E00-\u9FFF\u30A1-\u30FAa-z]"  # a name's first or last letter, not a word of choice (、または)
    rest = re.match(WORD_REST + r"(?=[、,]" + word + ")", masked[end:])  # the rest of the name's word (狂気の山脈にて)
    end = end + len(rest[0]) if rest else next((b for b in sorted(folded.boundaries) if end <= b <= end + 4
                                                 and re.match(r"[^\W_◎]{0,4}$", masked[end:b])), end)
    after = masked[end:end + 2]
    return (bool(re.match(r"[、,]" + word, after)) or end in folded.boundaries and bool(re.match(word, after))
            or bool(re.search(word + r"[、,]$", before)) or start in folded.boundaries and bool(re.search(word + "$", before)))


def _names_a_title(folded: Folded) -> bool:
    """Whether a short answer of one clause offers a title in plain words (「千夜一夜です」, not 「有名な短編です」)."""
    match = re.fullmatch(r"(?:それは|答えは|正解は)?([^、,。!?]{2,20}?)(?:です|でした|だ|である)?[。!?]*", folded.text)
    return bool(match) and not GENERIC_HEAD.search(match[1]) and not re.search(r"[ぁ-ゖ]$", match[1])


def _hedged(folded: Folded, named, others, parts=(), asked=(), numeric=False) -> bool:
    """Whether the accepted name is one candidate among others; `parts`: other katakana name parts, which count in
    a sentence of choice (「ラヴクラフト・ダーレス・スミスのいずれか」); `asked`: the question's names, which count
    beside a word of choice (「ダーレスかリン・カーターです」 to a question about Derleth's successor); words of choice
    and later alternatives hedge whatever words they offer (CHOICE_AFTER, LATER_ALTERNATIVE)."""
    text = folded.text
    spans = sorted(named + others + list(asked))
    for (left_start, left_end), (right_start, right_end) in zip(spans, spans[1:]):
        pair = {(left_start, left_end), (right_start, right_end)}
        gap = _marked(folded, left_end, right_start)
        if pair & set(named) and pair & set(others) and LIST_JOIN.match(gap):
            return True
        if pair & set(named) and pair & set(asked) and re.fullmatch(SUFFIX + r"\|?[、,]?(?:か|/|or|\?|" + CHOICE_WORD + r")\|?", gap):
            return True
    masked = list(text)  # the accepted names blanked out, so that a word beside a word of choice is another one
    for start, end in named:
        masked[start:end] = "◎" * (end - start)
    masked = "".join(masked)
    for start, end in named:
        after, before = masked[end:], masked[:start]
        if CHOICE_AFTER.match(after) or CHOICE_BEFORE.search(before):
            return True
        if not numeric and (OR_WORD_AFTER.match(after) or OR_WORD_BEFORE.search(before) or LISTED_AFTER.match(after)):
            return True
    if not numeric and LATER_ALTERNATIVE.search(masked[max(end for _, end in named):]):
        return True
    named_sentences = {_sentence(text, start) for start, _ in named}
    for sentence_start, sentence_end in named_sentences:
        inside = [span for span in [*others, *parts] if sentence_start <= span[0] < sentence_end]
        marked = _marked(folded, sentence_start, sentence_end)
        listed = any(sentence_start <= start < sentence_end and _listed_beside(folded, masked, start, end) for start, end in named)
        if (inside or listed or VAGUE.search(marked)) and CHOICE.search(marked):
            return True
    if any(re.match(r"(?:か|や)(?:誰か|どなたか|何か|どこか)", text[end:]) for _, end in named):
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
    if len(letters) <= INITIALS_MAX or metrics.is_japanese(words):
        return True
    latin = re.findall(r"[a-z\u00DF-\u024F]+", words)
    return (len(latin) <= NAME_WORDS_MAX and not SENTENCE_WORDS & set(latin) and not re.search(r"[、,/&]", words)
            and metrics.is_japanese(re.sub(r"[a-z\u00DF-\u024F]+", "", words)))
