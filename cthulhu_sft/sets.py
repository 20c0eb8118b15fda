"""The evaluation's inputs: question sets, the crawled articles (text and other names), answers made elsewhere.

A set is a JSONL file of rows {"instruction", "response", optional "answers" (accepted short forms), "title"
(the ja.wikipedia article that states the fact), "kind" (the quiz's person / work / year / place / being / book /
other, or the data's recitation / synthesized / cloze ...)}; adding a set needs no code. The shipped sets:
    known   data/eval_known.jsonl              held-out questions about facts of trained articles
    unseen  data/eval.jsonl                    questions about never-trained articles
    quiz    data/quiz/cthulhu_quiz_ja.jsonl    curated short-answer questions on well-known facts

The crawled articles (`Corpus`) come from data/source_texts.jsonl (rows {"title", "text", optional "aliases"})
and from prepare_data.py's page cache (a redirect is another name of its target). They give the hallucination
measures their support (any article may support a term) and the accepted answers their other spellings: an
accepted answer that is an article's title (without its "(…)" qualifier) or one of its aliases accepts all of
that article's names.

The quiz self-check (`check_rows`) sorts the rows with accepted answers by what the corpus says of them:
    wrong        their titled article is crawled and names none of the accepted answers: left out of the score
    not_taught   their titled article is not crawled, and no crawled article names an accepted answer: "not
                 taught by this data" (scored: it measures what the base knew)
    elsewhere    their titled article is not crawled, but another article names an accepted answer
    checked      their titled article names an accepted answer
"""

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from . import grading, metrics
from .data import DataError, load_items, load_records

DEFAULT_SETS = {
    "known": "data/eval_known.jsonl",
    "unseen": "data/eval.jsonl",
    "quiz": "data/quiz/cthulhu_quiz_ja.jsonl",
}
QUALIFIER = re.compile(r"\s*[(（][^()（）]*[)）]\s*$")  # クトゥルフの呼び声 (小説) → クトゥルフの呼び声


@dataclass
class Corpus:
    """The crawled articles: {title: text} and {title: [title, aliases...]}."""

    texts: dict[str, str] = field(default_factory=dict)
    names: dict[str, list[str]] = field(default_factory=dict)
    _support: metrics.SupportIndex | None = field(default=None, repr=False)
    _groups: dict[str, list[str]] | None = field(default=None, repr=False)

    def text(self, title: str | None) -> str:
        return self.texts.get(title or "", "")

    def support(self) -> metrics.SupportIndex:
        """Every article's text, indexed once for the hallucination measures."""
        if self._support is None:
            names = ("。".join(names) for names in self.names.values())  # an alias the text does not use is no invention
            self._support = metrics.SupportIndex([*self.texts.values(), *names])
        return self._support

    def accepted(self, answers: list[str] | None) -> list[str] | None:
        """The row's accepted answers and every name of an article that one of them names."""
        if not answers:
            return answers
        if self._groups is None:
            self._groups = {}
            for title, names in self.names.items():
                group = list(dict.fromkeys(QUALIFIER.sub("", name) for name in [title, *names]))
                for name in group:
                    self._groups.setdefault(grading.fold(name).text, []).extend(group)
        extra = [name for answer in answers for name in self._groups.get(grading.fold(answer).text, [])]
        return list(dict.fromkeys([*answers, *extra]))

    def names_answer(self, answers: list[str], title: str | None = None) -> bool:
        """Whether the article `title` (any article when None) names one of the accepted answers."""
        texts = [self.text(title)] if title else self.texts.values()
        forms = grading.accepted_forms(answers)
        return any(grading.occurrences(grading.fold(text), forms) for text in texts if text)


def read_set(path: str | os.PathLike) -> list[dict]:
    """The validated rows of a set: instruction and response (non-empty strings), optional answers (a non-empty
    list of non-empty strings), title and kind (strings); other fields are kept. Raises DataError
    naming file:line:field."""
    rows = load_records(path)
    problems = [f"{path}:{row['line']}: {problem}" for row in rows if (problem := _set_row_problem(row))]
    if problems:
        raise DataError("\n".join(problems))
    return rows


def _set_row_problem(row: dict) -> str | None:
    answers = row.get("answers")
    if answers is not None and (
        not isinstance(answers, list) or not answers
        or not all(isinstance(answer, str) and answer.strip() for answer in answers)
    ):
        return "field 'answers': expected a non-empty list of non-empty strings"
    if row.get("title") is not None and not isinstance(row["title"], str):
        return f"field 'title': expected a string, got {type(row['title']).__name__}"
    if row.get("kind") is not None and not isinstance(row["kind"], str):
        return f"field 'kind': expected a string, got {type(row['kind']).__name__}"
    return None


def read_source_texts(path: str | os.PathLike) -> dict[str, str]:
    """JSONL of {"title", "text", ...} -> {title: text}; texts of a repeated title are joined, null texts skipped."""
    return read_corpus(path).texts


def read_corpus(path: str | os.PathLike) -> Corpus:
    """source_texts.jsonl as a Corpus: texts of a repeated title joined, null texts skipped, aliases kept."""
    corpus = Corpus()
    for item in load_items(path, _to_source_text):
        title = item["title"]
        if item["text"]:
            corpus.texts[title] = f"{corpus.texts[title]}\n{item['text']}" if title in corpus.texts else item["text"]
        names = corpus.names.setdefault(title, [title])
        names += [alias for alias in item["aliases"] if alias not in names]
    return corpus


def _to_source_text(item) -> tuple[dict | None, str | None]:
    if not isinstance(item, dict):
        return None, f"expected a JSON object, got {type(item).__name__}"
    if not isinstance(item.get("title"), str):
        return None, "field 'title': missing or not a string"
    if not isinstance(item.get("text"), str | None):
        return None, "field 'text': not a string"
    aliases = item.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(alias, str) for alias in aliases):
        return None, "field 'aliases': expected a list of strings"
    return {"title": item["title"], "text": item.get("text") or "", "aliases": [a for a in aliases if a.strip()]}, None


def cached_corpus(cache_dir: str | os.PathLike) -> Corpus:
    """The pages of prepare_data.py's crawl cache, `<cache_dir>/<site>/pages/*.json`, as a Corpus.

    Pages without text and unreadable files are skipped. A redirect file {"key": asked title, "redirect": target}
    makes the asked title another name of its target, so a quiz row may name either.
    """
    corpus, redirects = Corpus(), {}
    for path in sorted(Path(cache_dir).glob("*/pages/*.json")):
        try:
            page = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # the crawler rewrites a broken file on its next run; it holds no text we can use
        if not isinstance(page, dict):
            continue
        if "redirect" in page:
            redirects[page.get("key")] = page["redirect"]
        elif isinstance(page.get("title"), str) and isinstance(page.get("text"), str) and page["text"]:
            corpus.texts[page["title"]] = page["text"]
            aliases = page.get("aliases") if isinstance(page.get("aliases"), list) else []
            corpus.names[page["title"]] = [page["title"], *(a for a in aliases if isinstance(a, str) and a.strip())]
    for title, target in redirects.items():
        if isinstance(title, str) and target in corpus.texts:
            corpus.texts.setdefault(title, corpus.texts[target])
            corpus.names[target].append(title)
    return corpus


def cached_source_texts(cache_dir: str | os.PathLike) -> dict[str, str]:
    """{title: text} of the pages in prepare_data.py's crawl cache (see cached_corpus)."""
    return cached_corpus(cache_dir).texts


def article_corpus(source_texts: str | None, cache_dir: str | None) -> Corpus:
    """The crawled articles: the pages of prepare_data.py's cache (`cache_dir`, pages under wiki/), then
    source_texts.jsonl over them; either may be None."""
    pages = os.path.join(cache_dir, "wiki") if cache_dir else None
    corpus = cached_corpus(pages) if pages and os.path.isdir(pages) else Corpus()
    if source_texts:
        read = read_corpus(source_texts)
        corpus.texts |= read.texts
        for title, names in read.names.items():
            known = corpus.names.setdefault(title, [title])
            known += [name for name in names if name not in known]
    return corpus


def article_texts(source_texts: str | None, cache_dir: str | None) -> dict[str, str]:
    return article_corpus(source_texts, cache_dir).texts


def check_rows(rows: list[dict], corpus: Corpus) -> dict[str, list[dict]]:
    """The rows with accepted answers by what the corpus says of them (see the module docstring)."""
    found = {"wrong": [], "not_taught": [], "elsewhere": [], "checked": []}
    for row in rows:
        if not row.get("answers"):
            continue
        accepted = corpus.accepted(row["answers"])
        if corpus.text(row.get("title")):
            found["checked" if corpus.names_answer(accepted, row["title"]) else "wrong"].append(row)
        elif corpus.texts:
            found["elsewhere" if corpus.names_answer(accepted) else "not_taught"].append(row)
    return found


def quiz_problems(rows: list[dict], corpus: Corpus) -> list[dict]:
    """The rows (as given) whose titled article is crawled and names none of their accepted answers."""
    return check_rows(rows, corpus)["wrong"]


BOOKS = ("closed", "open")


def read_answers(path: str | os.PathLike) -> list[dict]:
    """Answers made elsewhere: JSONL of {"set", "instruction", "answer", optional "book"} ("closed", the default:
    the question alone; "open": asked with the passages evaluate.py --open_book shows); other fields ignored."""
    return load_items(path, _to_answer)


def _to_answer(item) -> tuple[dict | None, str | None]:
    if not isinstance(item, dict):
        return None, f"expected a JSON object, got {type(item).__name__}"
    for name in ("set", "instruction"):
        if not isinstance(item.get(name), str) or not item[name].strip():
            return None, f"field '{name}': missing, empty or not a string"
    if not isinstance(item.get("answer"), str):
        return None, "field 'answer': missing or not a string"
    book = item.get("book", "closed")
    if book not in BOOKS:
        return None, f"field 'book': expected 'closed' or 'open', got {json.dumps(book, ensure_ascii=False)}"
    return {"set": item["set"].strip(), "instruction": item["instruction"], "answer": item["answer"], "book": book}, None


def question_key(question: str) -> str:
    """Questions match when equal after normalisation and without whitespace."""
    return "".join(metrics.normalize(question).split())


def match_answers(path, answers: list[dict], sets: dict[str, list[dict]]):
    """Pairs answers made elsewhere with the rows of the sets they name, by question.

    Returns ({set: {row index: answer}}, {set name not evaluated: number of its answers, which are ignored},
    [file:line: why, for each answer that matches no row]). A question asked n times in a set takes up to n
    answers, in order; an answer to a question its set does not ask, or one answer too many, is left out (and
    reported), not a reason to score nothing.
    """
    matched: dict[str, dict[int, str]] = {name: {} for name in sets}
    waiting = {name: {} for name in sets}  # set -> question key -> row indices not yet answered
    for name, rows in sets.items():
        for index, row in enumerate(rows):
            waiting[name].setdefault(question_key(row["instruction"]), []).append(index)
    ignored: dict[str, int] = {}
    unmatched = []
    for answer in answers:
        name = answer["set"]
        if name not in sets:
            ignored[name] = ignored.get(name, 0) + 1
            continue
        key = question_key(answer["instruction"])
        if key not in waiting[name]:
            unmatched.append(f"{path}:{answer['line']}: field 'instruction': not a question of set '{name}'")
        elif not waiting[name][key]:
            unmatched.append(f"{path}:{answer['line']}: field 'instruction': one answer too many to this question of set '{name}'")
        else:
            matched[name][waiting[name][key].pop(0)] = answer["answer"]
    return matched, ignored, unmatched
