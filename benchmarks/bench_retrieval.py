"""Retrieval cost (cthulhu_sft/retrieval.py): index build time, cached load, query latency, added prompt tokens.

    python benchmarks/bench_retrieval.py                      # 1,500 synthetic articles of ~6,000 characters
    python benchmarks/bench_retrieval.py --articles 300 --queries 100

No crawled corpus ships with the repository, so the corpus is synthetic: each article is a lead and five sections
drawn from the texts that do ship (data/sample/train.jsonl's answers, tests/test_retrieval.py's articles and the
test wiki's extracts), with every katakana name replaced by a random one of the same length, so that the
vocabulary grows with the corpus as a real one does. 1,500 articles of ~6,000 characters is more than
Category:クトゥルフ神話 and its subcategories hold on ja.wikipedia (prepare_data.py prints the real count).

It measures, on this machine's CPU (one process, one thread; wall and CPU time, since the machine may be shared): building the index (passages, Sudachi analysis, bm25s) and writing the cache
(`open_retriever` on a new file), loading the cache (`open_retriever` again), the latency of `search` (top 3)
over `--queries` questions, and the prompt tokens that open-book answering adds to a question (the
open-book user turn minus the plain one, Mistral tokens) for the shipped sample's eval_known questions over the
sample's texts and for the synthetic corpus.

Recall (`--recall_only` runs just this), for the retriever's variants (VARIANTS: module settings changed for the
run): the tests' sets (tests/test_retrieval.py's written corpus and test wiki, the shipped sample's eval_known over
its training answers), and the quiz. No crawled text ships, so the quiz (data/quiz/cthulhu_quiz_ja.jsonl:
215 questions, 72 article titles) is made into a corpus, one article per title whose text is its rows' reference
answers. "with the fact": every row's answer is in its article (the question's words are there, as in a real
article that states the fact); "fact held out": the asked row's own answer is left out of its article (the
article must be found by its name and its other facts; rows whose title has one row are skipped). recall@k: the
share of questions whose titled article is among the top k hits.
"""

import argparse
import json
import random
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from mediawiki_server import cthulhu_wiki  # noqa: E402
from test_retrieval import ARTICLES, QUESTIONS, WIKI_QUESTIONS  # noqa: E402

from cthulhu_sft import metrics, retrieval  # noqa: E402
from cthulhu_sft.examples import clean_text, split_sentences  # noqa: E402
from cthulhu_sft.format import MistralFormat  # noqa: E402
from cthulhu_sft.tiny import sentencepiece_v1_file  # noqa: E402

KATAKANA_NAME = re.compile(r"[ァ-ヺ][ァ-ヺー]{2,}")
KATAKANA = [chr(code) for code in range(ord("ァ"), ord("ヺ") + 1)]


def pool_of_texts() -> list[str]:
    texts = [json.loads(line)["response"] for line in (REPO / "data/sample/train.jsonl").read_text(encoding="utf-8").splitlines()]
    texts += [clean_text(text) for text in ARTICLES.values()]
    texts += [clean_text(page.extract) for page in cthulhu_wiki().pages.values() if page.extract]
    return [sentence for text in texts for sentence in split_sentences(text.replace("== ", "").replace(" ==", ""))
            if len(sentence.strip()) > 10]


def synthetic_rows(articles: int, chars: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    sentences = pool_of_texts()

    def renamed(sentence):
        return KATAKANA_NAME.sub(lambda match: "".join(rng.choice(KATAKANA) for _ in match.group()), sentence)

    def paragraph(length):
        text = ""
        while len(text) < length:
            text += renamed(rng.choice(sentences).strip())
        return text

    rows = []
    for number in range(articles):
        size = max(600, int(rng.lognormvariate(0, 0.8) * chars / 1.4))  # stubs and long articles
        title = "".join(rng.choice(KATAKANA) for _ in range(rng.randint(3, 8))) + f"{number}"
        text = paragraph(size // 6) + "".join(f"\n\n== 節{s} ==\n" + paragraph(size // 6) for s in range(5))
        rows.append({"title": title, "text": text, "source": f"https://ja.wikipedia.org/wiki/{title}",
                     "revid": 10_000 + number, "split": "train"})
    return rows


def recall_sets() -> dict[str, list[tuple]]:
    """{set: [(corpus key, question, title)]} and the corpora, as articles, under "corpora"."""
    rows = [json.loads(line) for line in (REPO / "data/quiz/cthulhu_quiz_ja.jsonl").read_text(encoding="utf-8").splitlines()]
    by_title: dict[str, list[int]] = {}
    for number, row in enumerate(rows):
        by_title.setdefault(row["title"], []).append(number)

    def quiz_corpus(left_out=None):
        return [retrieval.Article(title, "\n".join(rows[n]["response"] for n in numbers if n != left_out))
                for title, numbers in by_title.items()]

    corpora = {"quiz": quiz_corpus(), "written": [retrieval.Article(title, clean_text(text)) for title, text in ARTICLES.items()],
               "wiki": [retrieval.Article(page.title, clean_text(page.extract)) for page in cthulhu_wiki().pages.values()
                        if page.ns == 0 and page.extract and not page.redirect],
               "sample": [retrieval.Article(title, "\n".join(texts)) for title, texts in sample_texts().items()]}
    sets = {"quiz, with the fact": [("quiz", row["instruction"], row["title"]) for row in rows],
            "quiz, fact held out": [],
            "written corpus (tests)": [("written", question, title) for question, title in QUESTIONS],
            "test wiki (tests)": [("wiki", question, title) for question, title in WIKI_QUESTIONS],
            "sample eval_known": [("sample", json.loads(line)["instruction"], json.loads(line)["title"]) for line in
                                  (REPO / "data/sample/eval_known.jsonl").read_text(encoding="utf-8").splitlines()]}
    for number, row in enumerate(rows):
        if len(by_title[row["title"]]) > 1:
            corpora[f"quiz-{number}"] = quiz_corpus(number)
            sets["quiz, fact held out"].append((f"quiz-{number}", row["instruction"], row["title"]))
    return sets, corpora


def sample_texts() -> dict[str, list[str]]:
    texts: dict[str, list[str]] = {}
    for line in (REPO / "data/sample/train.jsonl").read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        texts.setdefault(row["title"], []).append(row["response"])
    return texts


def with_name_bigrams(analyze):
    """The analysis plus the character bigrams of the text's katakana names (the variant measured and left out)."""
    def analysis(text, passage=True):
        folded = metrics.NAME_SEPARATORS.sub("", metrics.normalize(text))
        names = [metrics.fold_kana(name) for name in metrics.KATAKANA.findall(folded)]
        return analyze(text, passage) + ["\x01" + gram for name in names for gram in sorted(retrieval.bigrams(name))]
    return analysis


def with_kanji_stems(analyze):
    """The analysis plus the kanji of each word with okurigana (the variant measured and left out)."""
    stem = re.compile(r"^([\u3005\u4E00-\u9FFF]+)[\u3041-\u309F]+$")

    def analysis(text, passage=True):
        terms = analyze(text, passage)
        return terms + [match.group(1) for term in terms if (match := stem.match(term))]
    return analysis


def recall_table(variants: dict[str, dict]) -> list[str]:
    """A markdown table: recall@1 / recall@3 of each set under each variant (module settings to change)."""
    sets, corpora = recall_sets()
    lines = ["| variant | " + " | ".join(f"{name} ({len(items)})" for name, items in sets.items()) + " |",
             "|---" * (len(sets) + 1) + "|"]
    for label, settings in variants.items():
        saved = {name: getattr(retrieval, name) for name in settings}
        try:
            for name, value in settings.items():
                setattr(retrieval, name, value)
            built = {key: retrieval.Retriever.build(articles) for key, articles in corpora.items()}
            cells = []
            for items in sets.values():
                ranks = [rank for key, question, title in items for rank in retrieval.ranks_of(built[key], [(question, title)], 3)]
                cells.append("/".join(f"{sum(r is not None and r <= k for r in ranks) / len(ranks):.3f}" for k in (1, 3)))
        finally:
            for name, value in saved.items():
                setattr(retrieval, name, value)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


VARIANTS = {
    "BM25 alone (no name boost)": {"TITLE_BOOST": 0.0},
    "default": {},
    "name boost 1.0": {"TITLE_BOOST": 1.0},
    "surname at full weight (no rarity)": {"NAME_IDF_POWER": 0.0},
    "one hit per article": {"MAX_PER_ARTICLE": 1},
    "no topic weight (a name followed by は counts once)": {"TOPIC_WEIGHT": 1.0},
    "plus the kanji of words with okurigana (眠り, 眠る → 眠)": {"analyze": with_kanji_stems(retrieval.analyze)},
    "plus katakana-name bigrams in the index": {"analyze": with_name_bigrams(retrieval.analyze)},
}


def added_tokens(retriever, fmt, questions) -> list[int]:
    added = []
    for question in questions:
        prompt, _ = retrieval.open_book_prompt(question, retriever.search(question), fmt)
        added.append(len(fmt.encode_user(prompt)) - len(fmt.encode_user(question)))
    return added


def summary(values) -> str:
    values = sorted(values)
    return (f"median {statistics.median(values):.4g}, p90 {values[int(0.9 * (len(values) - 1))]:.4g}, "
            f"max {values[-1]:.4g} (n={len(values)})")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--articles", type=int, default=1500)
    parser.add_argument("--chars", type=int, default=6000, help="mean characters per article")
    parser.add_argument("--queries", type=int, default=200)
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--recall_only", action="store_true", help="only the recall table")
    only.add_argument("--cost_only", action="store_true", help="only the cost figures")
    args = parser.parse_args(argv)
    if not args.cost_only:
        print("recall@1/recall@3 (questions):")
        print("\n".join(recall_table(VARIANTS)))
    if args.recall_only:
        return
    fmt = MistralFormat(str(sentencepiece_v1_file()))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "source_texts.jsonl"
        rows = synthetic_rows(args.articles, args.chars)
        path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
        characters = sum(len(row["text"]) for row in rows)
        started, cpu = time.perf_counter(), time.process_time()
        retriever = retrieval.open_retriever(path)
        built, built_cpu = time.perf_counter() - started, time.process_time() - cpu
        started = time.perf_counter()
        retriever = retrieval.open_retriever(path)
        loaded = time.perf_counter() - started
        cache = retrieval.cache_folder(path)
        size = sum(file.stat().st_size for file in cache.rglob("*") if file.is_file())
        questions = [question for question, _ in QUESTIONS]
        questions = [questions[index % len(questions)] for index in range(args.queries)]
        retriever.search(questions[0])  # Sudachi's dictionary is loaded by now; the first query pays nothing more
        latencies = []
        for question in questions:
            started = time.perf_counter()
            retriever.search(question)
            latencies.append((time.perf_counter() - started) * 1000)
        synthetic_added = added_tokens(retriever, fmt, questions[:len(QUESTIONS)])

        sample = Path(folder) / "sample" / "source_texts.jsonl"
        sample.parent.mkdir()
        sample.write_text("".join(json.dumps({"title": title, "text": "\n".join(parts)}, ensure_ascii=False) + "\n"
                                  for title, parts in sample_texts().items()), encoding="utf-8")
        known = [json.loads(line)["instruction"] for line in
                 (REPO / "data/sample/eval_known.jsonl").read_text(encoding="utf-8").splitlines()]
        sample_added = added_tokens(retrieval.open_retriever(sample), fmt, known)

    print(f"corpus: {len(rows)} synthetic articles, {characters / 1e6:.1f} M characters, "
          f"{len(retriever.passages)} passages")
    print(f"index build + cache write: {built:.1f} s wall, {built_cpu:.1f} s CPU ({characters / built_cpu / 1e3:.0f} k "
          f"characters per CPU second); cache {size / 2**20:.1f} MiB")
    print(f"cached load: {loaded:.2f} s")
    print(f"query latency (top 3, ms): {summary(latencies)}, mean {statistics.mean(latencies):.1f}")
    print(f"added prompt tokens, sample eval_known over the sample's texts: {summary(sample_added)}")
    print(f"added prompt tokens, synthetic corpus: {summary(synthetic_added)}")


if __name__ == "__main__":
    main()
