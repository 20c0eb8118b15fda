"""Open-book answers: BM25 over the crawled articles, the open-book prompt, citations, and RAFT examples.

    python -m cthulhu_sft.retrieval "ルルイエはどこにありますか？"          # the top 3 passages
    python -m cthulhu_sft.retrieval --json --top_k 5 "ネクロノミコンの著者は？"  # one JSON object per hit
    python -m cthulhu_sft.retrieval --recall data/eval_known.jsonl            # recall@1/3/5 of the rows' titles

Passages. Each row of data/source_texts.jsonl ({"title", "text", "source", "revid", "split", optional
"aliases"}) is cleaned and cut into sections as the data is (examples.clean_text, parse_sections); a section
longer than MAX_PASSAGE_CHARS is cut between sentences (examples.split_sentences), so that three passages fit
an open-book prompt under the training length. What is indexed is the article's names, the section path and
the text: a question that names an article's subject finds its passages even when their text says "it".

Analysis. NFKC and lower case (metrics.normalize); SudachiPy's morphemes (mode C, and the short units of a
compound, so 海底都市 matches 海底の都市), as written and in Sudachi's normalized form (附属 → 付属); particles,
auxiliaries, punctuation and a few question words dropped; katakana folded as the metrics fold it (ー dropped,
ヴ as ブ: ラヴクラフト = ラブクラフト) and with small vowels as large ones (ツァトゥグァ = ツァトゥグア); a passage's
name in parts also gives the whole name as one word (ヨグ=ソトース → ヨグソトス), as a question may write it.
Measured and left out (benchmarks/RESULTS.md, "Retrieval"): character bigrams of katakana names (they lost quiz
questions whose article holds the answer), and the kanji of words with okurigana (眠り, 眠る → 眠: a wash with the
name boost, a loss without it).

Scoring. bm25s (Lucene BM25) over the passages. The question names an article when it contains, in
metrics.match_form, the article's title, subject (the title without its disambiguation) or an alias (weight 1),
the last part of a name in parts, a surname (ラヴクラフト; 0.5), or a katakana word sharing most character bigrams
with a katakana name (クトゥルー for クトゥルフ; 0.5). A name found only inside a longer matched name counts half
(クトゥルフ in クトゥルフ神話); one the question is about counts double (followed by は, とは, について: its topic);
a surname is worth less the more articles hold it (`Retriever.rarity`: naming ラヴクラフト says little in a corpus
of his works). The best passage of each named article gets weight × TITLE_BOOST × the best passage score added;
only one passage per article, so a name that many questions carry takes one place at most. At most
MAX_PER_ARTICLE hits come from one article, so the top three name at least two articles.

Cache. The index is built once and kept beside the data, in <folder of source_texts>/.retrieval/<key>/ where
the key is the corpus file's sha256 with INDEX_VERSION; a changed corpus gets a new folder (the old ones of the
same file are removed), and a folder appears whole or not at all (built under a temporary name, then renamed).
"""

import argparse
import hashlib
import json
import logging
import math
import os
import random
import re
import secrets
import shutil
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

import numpy as np

from . import config, metrics
from .data import DataError, load_items
from .examples import Fact, clean_text, normalize_question, parse_sections, section_label, split_sentences, subject_of
from .files import sha256_file, write_json_atomic, write_text_atomic

logger = logging.getLogger(__name__)

INDEX_VERSION = 6  # part of the cache key: bump it when the cut, the analysis or the stored files change
MAX_PASSAGE_CHARS = 240  # about 270 Mistral tokens of Japanese: three passages and a question fit 1024 tokens
DEFAULT_TOP_K = 3
BM25_PARAMETERS = {"k1": 1.5, "b": 0.75, "method": "lucene"}
PROMPT_MAX_TOKENS = 1024  # the whole open-book user turn, in Mistral tokens ([INST] ... [/INST])
TITLE_BOOST = 0.5  # × the best passage score, added to the passages of an article the question names
MAX_PER_ARTICLE = 2  # hits from one article: the top three always show two articles or more
CONTAINED_NAME_WEIGHT = 0.5  # a name seen only inside a longer matched one: クトゥルフ in クトゥルフ神話
PART_NAME_WEIGHT = 0.5  # a surname alone (ラヴクラフト) also names the works about him
FUZZY_NAME_WEIGHT = 0.5  # a katakana word close to a name: another spelling, or a typo
FUZZY_DICE = 0.75  # クトゥルー/クトゥルフ (folded クトゥル/クトゥルフ): 0.86; ダゴン/ダオン: 0.5
MIN_FUZZY_CHARS = 4
TOPIC_WEIGHT = 2.0  # a name the question is about: followed by は, とは, について ... (クトゥルフはどこで眠る？)
TOPIC = re.compile(r"は|とは|について|に関して|って")
MIN_PART_CHARS = 3
MIN_NAME_CHARS = 2  # a one-character title (門) is too common inside questions to be a match
NAME_IDF_POWER = 1.0  # how fast a surname's weight falls with the articles holding it (Retriever.rarity)
RECALL_KS = (1, 3, 5)

SKIPPED_POS = {"助詞", "助動詞", "補助記号", "空白", "記号"}
STOPWORDS = set(
    "する ある いる なる れる られる せる こと もの ため よう これ それ あれ どれ この その あの どの ここ そこ どこ "
    "何 なに なん 誰 だれ いつ どう どんな どのよう どういう 教える くださる ください 下さる 説明 知る おる 居る 為る "
    "有る 成る 言う いう とき 時 です ます つく 付く 関する 対する よる 因る 名前".split()
)
WORD = re.compile(r"\w")
ONE_KANA = re.compile(r"[\u3041-\u309F]")  # a lone hiragana left of a conjugation (し, つ) says nothing

OPEN_BOOK_INSTRUCTION = (
    "上の資料だけを使って、次の質問に日本語で答えてください。答えの根拠にした資料の番号を [1] のように文末に書いてください。"
    "資料に答えが書かれていないときは、推測せずに「{not_found}」と答えてください。"
)
NOT_FOUND = "資料からは分かりません。"  # metrics.is_abstention takes it for an abstention
CITATION = re.compile(r"\[\s*(\d{1,3}(?:\s*[,、，;]\s*\d{1,3})*)\s*\]|資料\s*(\d{1,2})(?![\d年])")
BRACKETS = str.maketrans({"【": "[", "】": "]", "〔": "[", "〕": "]"})


# ---------------------------------------------------------------------------------------------------
# Articles and passages


@dataclass
class Article:
    title: str
    text: str
    url: str = ""
    revid: int | None = None
    aliases: list[str] = field(default_factory=list)
    split: str | None = None


@dataclass
class Hit:
    """One retrieved passage: its article, section ('' for the lead), text, and the score that ranked it."""

    title: str
    section: str
    text: str
    revid: int | None
    url: str
    score: float = 0.0

    @property
    def heading(self) -> str:
        """How prompts and source lists name the passage: 'title／section', or the title for the lead."""
        return f"{self.title}／{self.section}" if self.section else self.title

    def as_json(self) -> dict:
        return {**asdict(self), "revision_url": revision_url(self.url, self.revid)}


def read_articles(path: str | os.PathLike) -> list[Article]:
    """The rows of a source_texts.jsonl file with text; DataError naming file:line:field for a bad row."""
    rows = load_items(path, _to_article)
    return [Article(**{key: value for key, value in row.items() if key != "line"}) for row in rows if row["text"].strip()]


def _to_article(item) -> tuple[dict | None, str | None]:
    if not isinstance(item, dict):
        return None, f"expected a JSON object, got {type(item).__name__}"
    if not isinstance(item.get("title"), str) or not item["title"].strip():
        return None, "field 'title': missing or not a non-empty string"
    checks = (("text", (str, type(None))), ("source", (str, type(None))), ("split", (str, type(None))),
              ("aliases", (list, type(None))))
    for key, types in checks:
        if not isinstance(item.get(key), types):
            return None, f"field '{key}': expected {' or '.join(t.__name__ for t in types)}, got {type(item[key]).__name__}"
    revid = item.get("revid")
    if revid is not None and (not isinstance(revid, int) or isinstance(revid, bool)):
        return None, f"field 'revid': expected an integer or null, got {type(revid).__name__}"
    aliases = item.get("aliases") or []
    if not all(isinstance(alias, str) for alias in aliases):
        return None, "field 'aliases': expected a list of strings"
    return {"title": item["title"].strip(), "text": item.get("text") or "", "url": item.get("source") or "",
            "revid": revid, "aliases": aliases, "split": item.get("split")}, None


def cut_section(text: str, max_chars: int = MAX_PASSAGE_CHARS) -> list[str]:
    """A section's text as parts of at most `max_chars`, cut between sentences (inside one only if it is longer)."""
    parts, current = [], ""
    for sentence in split_sentences(text):
        for start in range(0, len(sentence), max_chars):
            piece = sentence[start:start + max_chars]
            if current.strip() and len(current) + len(piece) > max_chars:
                parts.append(current.strip())
                current = ""
            current += piece
    if current.strip():
        parts.append(current.strip())
    return parts


def article_passages(article: Article) -> list[Hit]:
    """The passages of one article, in order: its sections (as the data cuts them), each cut to fit."""
    sections, _ = parse_sections(clean_text(article.text))
    return [Hit(article.title, section_label(section.path), part, article.revid, article.url)
            for section in sections for part in cut_section(section.text)]


def article_names(article: Article) -> list[str]:
    """What a question may call the article: its title, the title without the disambiguation, its aliases."""
    return list(dict.fromkeys([article.title, subject_of(article.title), *article.aliases]))


def name_forms(article: Article) -> list[tuple[str, float, str]]:
    """(name in metrics.match_form, weight, name as written) of what a question may call the article: its names
    (1.0), and the last part of a name written in parts, a surname (ラヴクラフト of ハワード・フィリップス・ラヴクラフト),
    at PART_NAME_WEIGHT."""
    forms: dict[str, tuple[float, str]] = {}
    for name in article_names(article):
        forms.setdefault(metrics.match_form(name), (1.0, name))
        parts = re.split(r"[\s・=゠]+", metrics.normalize(subject_of(name)).strip())
        if len(parts) > 1 and len(parts[-1]) >= MIN_PART_CHARS:
            forms.setdefault(metrics.match_form(parts[-1]), (PART_NAME_WEIGHT, parts[-1]))
    return [(form, weight, name) for form, (weight, name) in forms.items() if form]


def bigrams(word: str) -> set[str]:
    return {word[index:index + 2] for index in range(len(word) - 1)}


def revision_url(url: str, revid: int | None) -> str:
    """The permanent link to the revision that was read (…/w/index.php?title=…&oldid=…), else the page URL."""
    parts = urlsplit(url)
    if not revid or not parts.path.startswith("/wiki/"):
        return url
    title = quote(unquote(parts.path.removeprefix("/wiki/")), safe="")
    return f"{parts.scheme}://{parts.netloc}/w/index.php?title={title}&oldid={revid}"


# ---------------------------------------------------------------------------------------------------
# Analysis


SMALL_KANA = str.maketrans("ァィゥェォヵヶ", "アイウエオカケ")
JOINED_NAME = re.compile(r"[ァ-ヺー]+(?:[・=゠][ァ-ヺー]+)+")


def fold(token: str) -> str:
    """A katakana word in one spelling: metrics.fold_kana (ー dropped, ヴ as ブ), small vowels as large ones
    (ツァトゥグァ = ツァトゥグア)."""
    return metrics.fold_kana(token).translate(SMALL_KANA) if metrics.KATAKANA.fullmatch(token) else token


def analyze(text: str, passage: bool = True) -> list[str]:
    """The words of a text as BM25 terms (see the module docstring). A passage also gives each name written in
    parts as one word, since questions write it without separators (ヨグ=ソトース → ヨグソトス); a question does not,
    or its names in parts would count twice."""
    from sudachipy import SplitMode

    text, terms = metrics.normalize(text), []
    for morpheme in metrics._morphemes(text):
        if morpheme.part_of_speech()[0] in SKIPPED_POS or morpheme.normalized_form() in STOPWORDS:
            continue
        forms = {morpheme.surface(), morpheme.normalized_form()}
        units = morpheme.split(SplitMode.A)
        if len(units) > 1:
            forms.update(unit.surface() for unit in units)
        terms += [fold(form) for form in sorted(forms) if WORD.search(form) and not ONE_KANA.fullmatch(form)]
    if passage:
        terms += [fold(metrics.NAME_SEPARATORS.sub("", name)) for name in JOINED_NAME.findall(text)]
    return terms


def indexed_text(article: Article, passage: Hit) -> str:
    return "\n".join([*article_names(article), passage.section, passage.text])


# ---------------------------------------------------------------------------------------------------
# The retriever


class Retriever:
    """BM25 over the passages of a corpus; `search` gives the best passages for a question."""

    def __init__(self, articles: list[Article], passages: list[Hit], owners: list[int], bm25):
        self.articles, self.passages, self.owners, self.bm25 = articles, passages, owners, bm25
        self.names = [name_forms(article) for article in articles]
        # katakana names, for `fuzzy_names`: (article, bigrams), and the names holding each bigram
        self.katakana_names = [(number, bigrams(name)) for number, names in enumerate(self.names)
                               for name, _, _ in names if len(name) >= MIN_FUZZY_CHARS and metrics.KATAKANA.fullmatch(name)]
        self.names_with_bigram: dict[str, list[int]] = {}
        for index, (_, grams) in enumerate(self.katakana_names):
            for gram in grams:
                self.names_with_bigram.setdefault(gram, []).append(index)
        self.passages_of: dict[int, list[int]] = {}
        for index, owner in enumerate(owners):
            self.passages_of.setdefault(owner, []).append(index)
        self.owner_array = np.asarray(owners)
        self._rarity: dict[str, float] = {}

    @classmethod
    def build(cls, articles: list[Article]) -> "Retriever":
        import bm25s

        passages, owners = [], []
        for number, article in enumerate(articles):
            for passage in article_passages(article):
                passages.append(passage)
                owners.append(number)
        if not passages:
            raise DataError("no article has text to retrieve from")
        bm25 = bm25s.BM25(**BM25_PARAMETERS)
        bm25.index([analyze(indexed_text(articles[owner], passage)) for owner, passage in zip(owners, passages)],
                   show_progress=False)
        return cls(articles, passages, owners, bm25)

    # -- cache

    def save(self, folder: Path) -> None:
        self.bm25.save(str(folder / "bm25"))
        write_json_atomic(folder / "articles.json", [asdict(article) | {"text": ""} for article in self.articles])
        write_text_atomic(folder / "passages.jsonl", "".join(
            json.dumps([owner, passage.section, passage.text], ensure_ascii=False) + "\n"
            for owner, passage in zip(self.owners, self.passages)))

    @classmethod
    def load(cls, folder: Path) -> "Retriever":
        import bm25s

        articles = [Article(**row) for row in json.loads((folder / "articles.json").read_text(encoding="utf-8"))]
        passages, owners = [], []
        for line in (folder / "passages.jsonl").read_text(encoding="utf-8").splitlines():
            owner, section, text = json.loads(line)
            article = articles[owner]
            passages.append(Hit(article.title, section, text, article.revid, article.url))
            owners.append(owner)
        return cls(articles, passages, owners, bm25s.BM25.load(str(folder / "bm25")))

    # -- search

    def named_articles(self, question: str) -> dict[int, float]:
        """{article: weight} of the articles the question names (see `name_forms`): a name's weight, times
        CONTAINED_NAME_WEIGHT for a name found only inside another matched name (クトゥルフ in クトゥルフ神話);
        a katakana word of the question that is not a name but shares most of its character bigrams with one
        (クトゥルー, クトゥルフ) names that article at FUZZY_NAME_WEIGHT."""
        form = metrics.match_form(question)
        found: dict[int, list] = {}
        for number, names in enumerate(self.names):
            for name, weight, written in names:
                if len(name) >= MIN_NAME_CHARS and name in form:
                    weight *= self.rarity(written) if weight < 1 else 1.0  # a surname: see `rarity`
                    found.setdefault(number, []).extend(
                        ((match.start(), match.end()), weight) for match in re.finditer(re.escape(name), form))
        covered = [span for matches in found.values() for span, _ in matches]

        def inside_longer(span):
            return any(other != span and other[0] <= span[0] and span[1] <= other[1] for other in covered)

        def weighed(span, weight):
            if inside_longer(span):
                return weight * CONTAINED_NAME_WEIGHT
            return weight * (TOPIC_WEIGHT if TOPIC.match(form, span[1]) else 1.0)

        named = {number: max(weighed(span, weight) for span, weight in matches) for number, matches in found.items()}
        for number, weight in self.fuzzy_names(form, covered).items():
            named[number] = max(named.get(number, 0.0), weight)
        return named

    def rarity(self, name: str) -> float:
        """How much naming a surname tells, from 1.0 (only its own article holds its words) down to 0 (every article
        does: ラヴクラフト in a corpus of his works, whose questions say 「ラヴクラフトの短編」):
        (log((N + 1) / df) / log(N + 1)) ** NAME_IDF_POWER, df the articles whose passages hold every word of the
        name. A whole title is not weighed so: the subject of many articles (ネクロノミコン) is still what a
        question naming it asks about."""
        if name not in self._rarity:
            matrix, held = self.bm25.scores, None  # per term (column), the passages that hold it
            for term in set(analyze(name)):
                column = self.bm25.vocab_dict.get(term)
                if column is None:
                    continue
                start, end = matrix["indptr"][column], matrix["indptr"][column + 1]
                owners = np.unique(self.owner_array[matrix["indices"][start:end]])
                held = owners if held is None else np.intersect1d(held, owners)
            count, articles = max(1, len(held) if held is not None else 1), len(self.articles)
            self._rarity[name] = (math.log((articles + 1) / count) / math.log(articles + 1)) ** NAME_IDF_POWER
        return self._rarity[name]

    def fuzzy_names(self, form: str, covered: list) -> dict[int, float]:
        named = {}
        for match in metrics.KATAKANA.finditer(form):
            word = match.group()
            if len(word) < MIN_FUZZY_CHARS or any(start <= match.start() and match.end() <= end for start, end in covered):
                continue
            grams = bigrams(word)
            shared = Counter(name for gram in grams for name in self.names_with_bigram.get(gram, ()))
            for name, count in shared.items():
                number, name_grams = self.katakana_names[name]
                if 2 * count / (len(grams) + len(name_grams)) >= FUZZY_DICE:
                    named[number] = max(named.get(number, 0.0), FUZZY_NAME_WEIGHT)
        return named

    def scores(self, question: str):
        """BM25 score of every passage, the best passage of each article the question names raised by TITLE_BOOST
        × the best score (one boosted passage per article: a name that many questions carry, such as
        クトゥルフ神話, takes one place at most)."""
        terms = [self.bm25.vocab_dict[term] for term in analyze(question, passage=False) if term in self.bm25.vocab_dict]
        scores = self.bm25.get_scores(terms).astype("float64") if terms else np.zeros(len(self.passages))
        boost = TITLE_BOOST * max(float(scores.max()), 1.0)
        for number, weight in self.named_articles(question).items():
            own = self.passages_of.get(number)
            if not own:
                continue
            scores[own[int(np.argmax(scores[own]))]] += weight * boost
        return scores

    def search(self, question: str, top_k: int = DEFAULT_TOP_K, max_per_article: int = MAX_PER_ARTICLE) -> list[Hit]:
        """The `top_k` best passages for the question, at most `max_per_article` from one article (fewer only
        when the corpus has fewer); passages that share no term with the question and name no article are left out."""
        scores = self.scores(question)
        hits, taken = [], {}
        for index in np.argsort(-scores, kind="stable"):
            if len(hits) == top_k or scores[index] <= 0:
                break
            owner = self.owners[index]
            if taken.get(owner, 0) < max_per_article:
                taken[owner] = taken.get(owner, 0) + 1
                hits.append(Hit(**{**asdict(self.passages[index]), "score": round(float(scores[index]), 4)}))
        return hits


def cache_folder(source_texts: str | os.PathLike) -> Path:
    path = Path(source_texts)
    key = hashlib.sha256(f"{INDEX_VERSION}\x00{sha256_file(path)}".encode()).hexdigest()[:32]
    return path.parent / ".retrieval" / f"{path.stem}-{key}"


def open_retriever(source_texts: str | os.PathLike = config.SOURCE_TEXTS) -> Retriever:
    """The retriever of a source_texts.jsonl file: loaded from its cache, or built (and cached) when the file is
    new or changed. Raises DataError for a missing file or a bad row (file:line:field)."""
    path = Path(source_texts)
    if not path.is_file():
        raise DataError(f"{path}: file not found (prepare_data.py writes {config.SOURCE_TEXTS})")
    folder = cache_folder(path)
    if (folder / "articles.json").is_file():
        try:
            return Retriever.load(folder)
        except (OSError, ValueError, KeyError) as error:
            logger.warning("rebuilding the retrieval index: %s is unreadable (%s)", folder, error)
            shutil.rmtree(folder, ignore_errors=True)
    started = time.monotonic()
    retriever = Retriever.build(read_articles(path))
    logger.info("indexed %d passages of %d articles in %.1fs", len(retriever.passages), len(retriever.articles),
                time.monotonic() - started)
    try:
        save_once(retriever, folder)
    except OSError as error:  # a read-only data folder: the index still serves this process
        logger.warning("the retrieval index is not cached (%s: %s); it is rebuilt next time", folder, error)
        return retriever
    for old in folder.parent.glob(f"{path.stem}-*"):
        if old != folder and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return retriever


def save_once(retriever: Retriever, folder: Path) -> None:
    """Saves under a temporary name beside `folder`, then renames it: the folder appears whole or not at all."""
    temporary = folder.with_name(f".{folder.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        temporary.mkdir(parents=True)
        retriever.save(temporary)
        os.replace(temporary, folder)
    except OSError:
        if not (folder / "articles.json").is_file():  # another process finishing first is fine
            raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------
# Open-book prompt and citations


def passage_block(number: int, hit: Hit) -> str:
    return f"[{number}] {hit.heading}\n{hit.text}"


def render_open_book(question: str, hits: list[Hit]) -> str:
    """The user turn's text for these passages, numbered from 1 in the order given."""
    blocks = "\n\n".join(passage_block(number, hit) for number, hit in enumerate(hits, start=1))
    instruction = OPEN_BOOK_INSTRUCTION.format(not_found=NOT_FOUND)
    return f"資料：\n{blocks}\n\n{instruction}\n\n質問：{question}" if hits else f"{instruction}\n\n質問：{question}"


def open_book_turn(retriever: "Retriever", question: str, fmt, top_k: int = DEFAULT_TOP_K,
                   max_tokens: int = PROMPT_MAX_TOKENS) -> tuple[str, list[Hit]]:
    """(user turn, the passages it shows) for a question: the retriever's top_k passages through open_book_prompt."""
    return open_book_prompt(question, retriever.search(question, top_k=top_k), fmt, max_tokens=max_tokens, top_k=top_k)


def open_book_prompt(question: str, hits: list[Hit], fmt, max_tokens: int = PROMPT_MAX_TOKENS,
                     top_k: int = DEFAULT_TOP_K) -> tuple[str, list[Hit]]:
    """(user turn, the passages it shows): the first `top_k` hits, in order, each kept whole when the user turn
    ([INST] ... [/INST], `fmt`: format.MistralFormat) still fits `max_tokens`, else cut to its leading sentences
    that fit (left out when none does). The passages' numbers are their places in the returned list."""
    def fits(shown):
        return len(fmt.encode_user(render_open_book(question, shown))) <= max_tokens

    shown = []
    for hit in hits[:top_k]:
        if fits(shown + [hit]):
            shown.append(hit)
            continue
        text = ""
        for sentence in split_sentences(hit.text):
            if not fits(shown + [Hit(**{**asdict(hit), "text": (text + sentence).strip()})]):
                break
            text += sentence
        if text.strip():
            shown.append(Hit(**{**asdict(hit), "text": text.strip()}))
    return render_open_book(question, shown), shown


def parse_citations(answer: str) -> list[int]:
    """The passage numbers an answer cites, in order, once each: [1], [1][2], ［1］, [1, 2], 【1】, 資料1."""
    text = metrics.normalize(answer).translate(BRACKETS)
    groups = [bracketed or named for bracketed, named in CITATION.findall(text)]
    numbers = [int(number) for group in groups for number in re.split(r"\s*[,、，;]\s*", group)]
    return list(dict.fromkeys(numbers))


def citation_is_correct(answer: str, shown: list[Hit], accepted: list[str]) -> bool:
    """Whether the answer cites at least one passage, and every passage it cites was shown and contains an accepted
    answer (metrics.answer_is_correct). Citing nothing, a number not shown, or every passage at once (one of which
    holds the answer) is not correct."""
    cited = parse_citations(answer)
    return bool(cited) and all(1 <= number <= len(shown) and metrics.answer_is_correct(shown[number - 1].text, accepted)
                               for number in cited)


def with_citation(answer: str, number: int) -> str:
    """'ルルイエです。' → 'ルルイエです[2]。': the citation before the closing full stop, as Wikipedia places notes."""
    answer = answer.strip()
    stop = answer[-1] if answer[-1:] in "。．.!！?？" else ""
    return f"{answer.removesuffix(stop)}[{number}]{stop}"


# ---------------------------------------------------------------------------------------------------
# RAFT: open-book training examples


@dataclass
class RaftStats:
    facts: int = 0
    chosen: int = 0
    with_passage: int = 0
    distractors_only: int = 0
    held_out: int = 0  # facts a held-out probe asks, or of an eval-split article: never an open-book example
    too_long: int = 0
    no_distractor: int = 0


def oracle_passage(fact: Fact) -> Hit:
    """The fact's own passage as retrieval cuts it: the part of its section that holds the evidence; where the
    evidence crosses a cut, the sentences from the one where it starts, to MAX_PASSAGE_CHARS or the evidence's end."""
    passage = fact.passage
    evidence = metrics.match_form(fact.evidence)
    text = next((part for part in cut_section(passage.text) if evidence in metrics.match_form(part)), None)
    start = passage.text.find(fact.evidence)
    if text is None and start >= 0:
        end, text, offset = start + len(fact.evidence), "", 0
        for sentence in split_sentences(passage.text):
            sentence_start, offset = offset, offset + len(sentence)
            if offset <= start:
                continue  # before the evidence
            if sentence_start >= end and len(text) + len(sentence) > MAX_PASSAGE_CHARS:
                break
            text += sentence
        text = text.strip()
    return Hit(passage.title, passage.section, text or passage.text, passage.revid, passage.source)


def same_text(a: Hit, b: Hit) -> bool:
    x, y = metrics.match_form(a.text), metrics.match_form(b.text)
    return x in y or y in x


def raft_examples(facts: list[Fact], retriever: Retriever, ratio: float, seed: int, held_out_questions: list[str],
                  fmt, max_tokens: int, top_k: int = DEFAULT_TOP_K,
                  distractor_only_ratio: float = 0.2) -> tuple[list[dict], RaftStats]:
    """Open-book training rows for about `ratio` of the facts (RAFT, Zhang et al. 2024), deterministic by `seed`.

    Each chosen fact is asked (its first question) over `top_k` passages: its own passage (`oracle_passage`) at a
    random place among distractors the retriever returns for the question, and the answer is the fact's answer
    citing that passage. A share `distractor_only_ratio` of them get distractors only, none from the fact's article
    and none holding the short answer, and the answer NOT_FOUND. A fact any of whose questions is in `held_out_questions` (the eval probes,
    compared as examples.normalize_question does) is skipped, and so is a fact of an article of the retriever's
    "eval" split (never trained); no distractor comes from such an article either. Every row fits `max_tokens`
    (the whole example); the rows are {"instruction", "response", "title", "source", "revid",
    "kind": "open_book" | "open_book_absent", "section"}.
    """
    held = {normalize_question(question) for question in held_out_questions}
    unseen = {article.title for article in retriever.articles if article.split == "eval"}
    rng = random.Random(f"{seed}\x00raft")
    stats, rows = RaftStats(facts=len(facts)), []
    for fact in facts:
        if rng.random() >= ratio:
            continue
        if fact.passage.title in unseen or any(normalize_question(question) in held for question in fact.questions):
            stats.held_out += 1
            continue
        stats.chosen += 1
        absent = rng.random() < distractor_only_ratio
        question, oracle = fact.questions[0], oracle_passage(fact)
        # an "absent" example shows nothing of the fact's article, which may state the fact in other words
        distractors = [hit for hit in retriever.search(question, top_k=top_k + 4, max_per_article=top_k)
                       if hit.title not in unseen and not same_text(hit, oracle)
                       and not (absent and hit.title == fact.passage.title)
                       and not metrics.answer_is_correct(hit.text, [fact.short_answer])]
        if not distractors:
            stats.no_distractor += 1
            continue
        if absent:
            passages, response = distractors[:top_k], NOT_FOUND
        else:
            passages = distractors[:top_k - 1]
            passages.insert(rng.randrange(len(passages) + 1), oracle)
        row = _fitting_row(question, passages, oracle, fact.answer if not absent else response, fmt, max_tokens)
        if row is None:
            stats.too_long += 1
            continue
        stats.distractors_only += absent
        stats.with_passage += not absent
        source = fact.passage
        rows.append({**row, "title": source.title, "source": source.source, "revid": source.revid,
                     "kind": "open_book_absent" if absent else "open_book", "section": source.section})
    return rows, stats


def _fitting_row(question: str, passages: list[Hit], oracle: Hit, answer: str, fmt, max_tokens: int) -> dict | None:
    """{"instruction", "response"} with distractors dropped from the end until the example fits; None if the
    oracle (or one distractor, for an absent answer) alone does not."""
    passages = list(passages)
    while passages:
        instruction = render_open_book(question, passages)
        response = answer if answer == NOT_FOUND else with_citation(answer, passages.index(oracle) + 1)
        if len(fmt.encode_example(instruction, response).input_ids) <= max_tokens:
            return {"instruction": instruction, "response": response}
        removable = [index for index, hit in enumerate(passages) if hit is not oracle]
        if not removable:
            return None
        passages.pop(removable[-1])
    return None


# ---------------------------------------------------------------------------------------------------
# Measure


def recall_at_k(retriever: Retriever, pairs: list[tuple[str, str]], ks=RECALL_KS) -> dict[int, float]:
    """{k: share of (question, title) pairs whose article is among the top k passages}; per-question ranks in
    `ranks_of`."""
    ranks = ranks_of(retriever, pairs, max(ks))
    return {k: sum(rank is not None and rank <= k for rank in ranks) / len(ranks) if ranks else 0.0 for k in ks}


def ranks_of(retriever: Retriever, pairs: list[tuple[str, str]], depth: int) -> list[int | None]:
    """The 1-based rank of the first passage of each pair's article among the top `depth` (None: not there)."""
    ranks = []
    for question, title in pairs:
        titles = [hit.title for hit in retriever.search(question, top_k=depth)]
        ranks.append(titles.index(title) + 1 if title in titles else None)
    return ranks


def read_recall_pairs(path: str | os.PathLike) -> list[tuple[str, str]]:
    """(instruction, title) of each row of a JSONL set (eval_known, the quiz); DataError for a bad row."""
    def convert(item):
        if not isinstance(item, dict):
            return None, f"expected a JSON object, got {type(item).__name__}"
        for key in ("instruction", "title"):
            if not isinstance(item.get(key), str) or not item[key].strip():
                return None, f"field '{key}': missing or not a non-empty string"
        return {"pair": (item["instruction"].strip(), item["title"].strip())}, None

    return [row["pair"] for row in load_items(path, convert)]


# ---------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m cthulhu_sft.retrieval", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("question", nargs="?", help="the question to find passages for")
    parser.add_argument("--source_texts", default=config.SOURCE_TEXTS, help="the articles (prepare_data.py writes them)")
    parser.add_argument("--top_k", type=int, default=DEFAULT_TOP_K, help="passages to print")
    parser.add_argument("--json", action="store_true", help="one JSON object per hit")
    parser.add_argument("--recall", metavar="FILE.jsonl", help="recall@1/3/5 of the rows' titles for their instructions")
    args = parser.parse_args(argv)
    if (args.question is None) == (args.recall is None):
        parser.error("give a question or --recall FILE.jsonl (one of them)")
    if args.top_k < 1:
        parser.error(f"--top_k must be at least 1, got {args.top_k}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not logger.handlers:  # this module's lines on stderr (the --json output stays clean), not bm25s' debug lines
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        pairs = read_recall_pairs(args.recall) if args.recall else None
        retriever = open_retriever(args.source_texts)
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if pairs is not None:
        known = {article.title for article in retriever.articles}
        missing = sum(title not in known for _, title in pairs)
        for k, value in recall_at_k(retriever, pairs).items():
            print(f"recall@{k}: {value:.3f}")
        print(f"({len(pairs)} questions, {len(retriever.articles)} articles, {len(retriever.passages)} passages"
              + (f"; {missing} questions name an article that is not in {args.source_texts}" if missing else "") + ")")
        return 0
    hits = retriever.search(args.question, top_k=args.top_k)
    for number, hit in enumerate(hits, start=1):
        if args.json:
            print(json.dumps(hit.as_json(), ensure_ascii=False))
        else:
            print(f"[{number}] {hit.title}{' > ' + hit.section if hit.section else ''}  (score {hit.score:.2f})\n"
                  f"    revision {hit.revid if hit.revid is not None else '-'}  {revision_url(hit.url, hit.revid) or '-'}\n"
                  + "".join(f"    {line}\n" for line in hit.text.splitlines()))
    if not hits:
        print("no passage shares a word with the question", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
