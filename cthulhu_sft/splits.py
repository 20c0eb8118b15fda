"""The splits: which article, passage, fact and question goes to train.jsonl, eval.jsonl or eval_known.jsonl.

    passages + facts + rewrites ──by article──> train (trained articles) | eval (articles never trained)
                                └─held-out wordings of trained facts──> eval_known

* eval.jsonl holds the articles never trained (`split_by_article`): each passage under its first question (a
  converted record's passage under each of its own), and each fact of theirs under its first question.
* train.jsonl holds every other passage under each of its questions (`recitation`, `converted`), every kept
  rewrite of a trained passage under that passage's questions (`rewrite`), and each trained fact under its
  questions (`synthesized`) but one, for the facts that are probes:
* eval_known.jsonl: for each trained article, up to KNOWN_PROBES of its facts (those with two questions or
  more) are asked by ONE of their questions, held out, while their other questions train; so every known
  probe asks a fact the training set teaches, in words it never saw. A trained article without such a probe
  (every article of a run without a writer) gets cloze probes of its sentences instead (examples.cloze_probes).
* Open book (`open_book`, optional): about a share of the trained facts are also asked over their own passage
  among retrieved distractors, or over distractors only (retrieval.raft_examples), by a question no probe holds.
* Every fact and cloze row carries `answers`: its short answer and, when that names an article (its title,
  its subject or one of its aliases: redirects, English title, readings), every other name of that article that
  its question does not hold.
"""

import random
from collections import Counter
from dataclasses import replace

from cthulhu_sft.examples import Fact, Passage, clean_text, cloze_probes, normalize_question, subject_of
from cthulhu_sft.metrics import match_form
from cthulhu_sft.retrieval import Article, RaftStats, Retriever, raft_examples

SPLITS = ("train", "eval", "eval_known")
KNOWN_PROBES = 5  # facts of one trained article asked in eval_known at most


def row(passage: Passage, question: str, answer: str, kind: str, **extra) -> dict:
    return {"instruction": question, "response": answer, "title": passage.title, "source": passage.source,
            "revid": passage.revid, "kind": kind, "section": passage.section, **extra}


def fact_row(fact: Fact, question: str, writer: str | None, names: dict[str, list[str]]) -> dict:
    return row(fact.passage, question, fact.answer, "synthesized", writer=writer,
               answers=accepted(fact.short_answer, names, question), evidence=fact.evidence)


def split_by_article(titles: list[str], eval_ratio: float, seed: int) -> set[str]:
    """The titles held out for evaluation: at least one when there are two articles or more, never all of them
    (an empty train split could not be trained on; a single article goes to train)."""
    titles = sorted(titles)
    random.Random(seed).shuffle(titles)
    count = min(round(len(titles) * eval_ratio), len(titles) - 1)
    if eval_ratio > 0 and len(titles) >= 2:
        count = max(count, 1)
    return set(titles[:count])


def by_title(pairs) -> dict[str, list]:
    """{title: [(passage, value), ...]} in the order given."""
    grouped: dict[str, list] = {}
    for passage, value in pairs:
        grouped.setdefault(passage.title, []).append((passage, value))
    return grouped


# ---------------------------------------------------------------------------------------------------
# Accepted answers


def alias_groups(pages: list[dict]) -> dict[str, list[str]]:
    """{name in match_form: every name of its article}: its title, its subject (the title without the
    disambiguation) and its `aliases` (a page without them has its title and subject only)."""
    groups: dict[str, list[str]] = {}
    for page in pages:
        names = list(dict.fromkeys([page["title"], subject_of(page["title"]), *(page.get("aliases") or [])]))
        for name in names:
            if match_form(name):
                groups.setdefault(match_form(name), names)
    return groups


def accepted(answer: str, groups: dict[str, list[str]], question: str = "") -> list[str]:
    """The answer, and every other name of the article it names, if it names one, but for names the question
    holds (「クトゥルフの英語名は？」→ Cthulhu: an answer that repeats クトゥルフ is not correct)."""
    asked = match_form(question)
    others = [name for name in groups.get(match_form(answer), []) if match_form(name) not in asked]
    return list(dict.fromkeys([answer, *others]))


# ---------------------------------------------------------------------------------------------------
# The splits


def probes_of(facts: list[Fact], key: str) -> dict[int, int]:
    """{index of a fact: index of its held-out question} for up to KNOWN_PROBES of one article's facts that have
    two questions or more (the others still teach the fact), picked in an order fixed by `key`."""
    askable = [index for index, fact in enumerate(facts) if len(fact.questions) >= 2]
    rng = random.Random(key)
    chosen = sorted(rng.sample(askable, min(KNOWN_PROBES, len(askable))))
    return {index: rng.randrange(len(facts[index].questions)) for index in chosen}


def make_splits(passages: list[Passage], facts: list[Fact], rewrites: list[tuple[Passage, str]], held_titles: set[str],
                fits, *, probe_ratio: float, seed: int, writer: str | None = None,
                names: dict[str, list[str]] | None = None) -> dict[str, list[dict]]:
    """{split: rows} (see the module docstring).

    fits(question, answer): whether an example is within the length limit (rows that are not are left out);
    probe_ratio: the share of a fact-less trained article's sentences asked as cloze probes, and 0 for no
    eval_known at all; writer: the model named on the rows it wrote; names: alias_groups() of the articles.
    """
    names = names or {}
    splits: dict[str, list[dict]] = {split: [] for split in SPLITS}
    trained = set()  # normalised questions of train.jsonl: a probe never asks one of them

    def train(example: dict) -> None:
        question = example["instruction"]
        if normalize_question(question) not in trained and fits(question, example["response"]):
            trained.add(normalize_question(question))
            splits["train"].append(example)

    for passage in passages:
        if passage.title in held_titles:
            asked = passage.questions if passage.kind == "converted" else passage.questions[:1]  # a record's own
            splits["eval"] += [row(passage, question, passage.text, passage.kind) for question in asked]
        else:
            for question in passage.questions:
                train(row(passage, question, passage.text, passage.kind))
    for passage, text in rewrites:  # a passage's questions, answered by its text in other words
        if passage.title not in held_titles:
            splits["train"] += [row(passage, question, text, "rewrite", writer=writer) for question in passage.questions
                                if fits(question, text)]

    known = []
    for title, pairs in by_title((fact.passage, fact) for fact in facts).items():
        article = [fact for _, fact in pairs]
        probes = {} if title in held_titles or probe_ratio <= 0 else probes_of(article, f"{seed}\x00{title}")
        for index, fact in enumerate(article):
            if title in held_titles:
                if fits(fact.questions[0], fact.answer):
                    splits["eval"].append(fact_row(fact, fact.questions[0], writer, names))
                continue
            for number, question in enumerate(fact.questions):
                if number == probes.get(index):
                    known.append(fact_row(fact, question, writer, names))
                else:
                    train(fact_row(fact, question, writer, names))
    splits["eval_known"] += [probe for probe in known
                             if normalize_question(probe["instruction"]) not in trained
                             and fits(probe["instruction"], probe["response"])]

    # Cloze probes for every trained article without a fact to probe (all of them without a writer)
    probed = {probe["title"] for probe in splits["eval_known"]}
    fallback = by_title((p, None) for p in passages if p.title not in held_titles | probed)
    for pairs in fallback.values():
        for passage, probe in cloze_probes([passage for passage, _ in pairs], probe_ratio, seed, names):
            if fits(probe["instruction"], probe["response"]) and normalize_question(probe["instruction"]) not in trained:
                splits["eval_known"].append(row(passage, probe["instruction"], probe["response"], "cloze",
                                                answers=accepted(probe["response"], names, probe["instruction"])))
    return splits


def known_probes(splits: dict[str, list[dict]]) -> dict[str, int]:
    """{trained title: its eval_known probes} for every article of train.jsonl, in title order (0 for none)."""
    counts = Counter(r["title"] for r in splits["eval_known"])
    return {title: counts[title] for title in sorted({r["title"] for r in splits["train"]})}


def source_texts(pages: list[dict], held_titles: set[str]) -> list[dict]:
    """source_texts.jsonl: every article with text, its split and its other names (`aliases`, [] without them)."""
    return [{"title": p["title"], "text": clean_text(p["text"] or ""), "source": p["url"], "revid": p["revid"],
             "split": "eval" if p["title"] in held_titles else "train", "aliases": p.get("aliases") or []}
            for p in pages if (p["text"] or "").strip()]


def open_book(splits: dict[str, list[dict]], facts: list[Fact], sources: list[dict], ratio: float, seed: int, fmt,
              max_tokens: int) -> tuple[dict[str, list[dict]], RaftStats]:
    """The splits with about `ratio` of the trained facts also asked open-book (RAFT; retrieval.raft_examples).

    Each chosen fact is asked by its first question that no eval_known probe holds, over its own passage among
    distractors that a retriever over `sources` (source_texts() rows) finds for it, answered with a citation of
    that passage, or over distractors only, answered retrieval.NOT_FOUND. Every closed-book row stays: a probe
    still asks a fact that train.jsonl teaches closed-book, in words it never saw. No fact of an eval article is
    asked, and no eval article's text is ever shown (its source row's split is "eval").
    """
    articles = [Article(s["title"], s["text"], s["source"], s["revid"], s["aliases"], s["split"]) for s in sources]
    unseen = {article.title for article in articles if article.split == "eval"}
    probes = [probe["instruction"] for probe in splits["eval_known"]]
    held = {normalize_question(question) for question in probes}
    askable = [replace(fact, questions=[q for q in fact.questions if normalize_question(q) not in held]) for fact in facts
               if fact.passage.title not in unseen]
    rows, stats = raft_examples([fact for fact in askable if fact.questions], Retriever.build(articles), ratio, seed,
                                probes, fmt, max_tokens)
    return {**splits, "train": splits["train"] + rows}, stats
