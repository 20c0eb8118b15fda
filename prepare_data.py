"""Builds the Cthulhu-mythos instruction dataset from Japanese Wikipedia, through the MediaWiki API.

    python prepare_data.py                                        # crawl ja.wikipedia → data/train.jsonl, data/eval.jsonl
    python prepare_data.py --depth 2 --titles ネクロノミコン ルルイエ # a deeper crawl, plus pages outside the category
    python prepare_data.py --from_json data_lora_formatted.json   # convert the old notebook's {"text","output"} file

Steps: crawl the category tree (every answer cached under --cache_dir, so a rerun makes no request and
an interrupted one resumes) → clean each article's plain text → one question per lead and section,
split at sentence ends so every example fits --max_tokens → split by article → write the JSONL files and
a dataset card (data/README.md) carrying the CC BY-SA 4.0 attribution, replaced together → print a summary.
--tokenizer and --max_tokens default to `model_name_or_path` and `max_length` in sft_config.yaml.
"""

import argparse
import logging
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import quote

import yaml
from tqdm import tqdm

from cthulhu_sft.data import DataError, jsonl_text, load_records
from cthulhu_sft.examples import BuildStats, build_examples, clean_text, dedupe, example_length, fit, wikitext_to_text
from cthulhu_sft.files import write_temporary
from cthulhu_sft.format import MistralFormat, tokenizer_error
from cthulhu_sft.wiki import (
    DEFAULT_API_URL,
    NS_MAIN,
    Cache,
    WikiClient,
    WikiError,
    crawl_category_tree,
    fetch_pages,
    normalize_title,
)

REPO = Path(__file__).resolve().parent
SOURCE_TEXTS = "source_texts.jsonl"  # evaluate.py reads it from beside eval.jsonl
OUTPUTS = ("train.jsonl", "eval.jsonl", SOURCE_TEXTS, "README.md")  # one run's set, written together
CONFIG = REPO / "sft_config.yaml"
logger = logging.getLogger("prepare_data")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    crawl = parser.add_argument_group("crawl")
    crawl.add_argument("--api_url", default=DEFAULT_API_URL, help="the wiki's api.php (default: %(default)s)")
    crawl.add_argument("--category", default="Category:クトゥルフ神話", help="root category; '' for --titles only")
    crawl.add_argument("--depth", type=int, default=1, help="subcategory levels below --category (default: %(default)s)")
    crawl.add_argument("--titles", nargs="+", action="extend", default=[], metavar="TITLE",
                       help="extra pages (several, or 'A|B'); redirects are followed")
    crawl.add_argument("--cache_dir", default=".cache/wiki", help="one JSON file per page (default: %(default)s)")
    crawl.add_argument("--refresh", action="store_true", help="fetch everything again, ignoring the cache")
    crawl.add_argument("--user_agent", default=None,
                       help="User-Agent with your contact, as Wikimedia's policy asks (default: the project's)")
    client = parser.add_argument_group("HTTP client")
    client.add_argument("--request_interval", type=float, default=0.5, help="seconds between requests (default: %(default)s)")
    client.add_argument("--retries", type=int, default=5, help="retries of a failed request (default: %(default)s)")
    client.add_argument("--backoff_factor", type=float, default=1.0,
                        help="exponential backoff between retries, unless the server sends Retry-After (default: %(default)s)")
    client.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for an answer (default: %(default)s)")
    data = parser.add_argument_group("dataset")
    data.add_argument("--from_json", default=None, help="convert this {text,output} JSON array or JSONL instead of crawling")
    data.add_argument("--out_dir", default="data", help="where train.jsonl, eval.jsonl and README.md go (default: %(default)s)")
    data.add_argument("--tokenizer", default=None, help="tokenizer name or folder (default: model_name_or_path in sft_config.yaml)")
    data.add_argument("--max_tokens", type=int, default=None, help="longest example in tokens (default: max_length in sft_config.yaml)")
    data.add_argument("--eval_ratio", type=float, default=0.1, help="share of articles held out (default: %(default)s)")
    data.add_argument("--seed", type=int, default=42, help="question wording and split (default: %(default)s)")
    args = parser.parse_args(argv)
    args.titles = [title for value in args.titles for title in value.split("|") if title.strip()]
    if not 0 <= args.eval_ratio < 1:
        parser.error(f"--eval_ratio must be in [0, 1), got {args.eval_ratio}")
    if args.depth < 0:
        parser.error(f"--depth must be >= 0, got {args.depth}")
    if args.max_tokens is not None and args.max_tokens < 16:
        parser.error(f"--max_tokens must be at least 16, got {args.max_tokens}")
    return args


def config_defaults(args: argparse.Namespace) -> None:
    """Fills --tokenizer and --max_tokens from sft_config.yaml, the one place these are set."""
    if args.tokenizer is not None and args.max_tokens is not None:
        return
    if not CONFIG.is_file():
        raise DataError(f"{CONFIG}: not found; it gives the defaults of --tokenizer and --max_tokens (or pass both)")
    config = yaml.safe_load(CONFIG.read_text(encoding="utf-8")) or {}
    for option, key in (("tokenizer", "model_name_or_path"), ("max_tokens", "max_length")):
        if getattr(args, option) is None:
            if key not in config:
                raise DataError(f"{CONFIG}: no top-level key '{key}' (the default of --{option})")
            setattr(args, option, config[key])
    if not isinstance(args.max_tokens, int) or args.max_tokens < 16:
        raise DataError(f"{CONFIG}: max_length must be an integer >= 16, got {args.max_tokens!r}")


def legacy_subject(instruction: str) -> str:
    """What an old notebook question is about ('ネクロノミコンの著者は？' → 'ネクロノミコン'): the split's unit."""
    quoted = re.match(r"\s*[「『](.+?)[」』]", instruction)
    if quoted:
        return quoted.group(1)
    match = re.match(r"\s*(.+?)(?:とは|について|に関して|って|の|は|を)", instruction)
    return (match.group(1) if match else instruction).strip()


def split_by_article(titles: list[str], eval_ratio: float, seed: int) -> set[str]:
    """The titles held out for evaluation: at least one when there are two articles or more, never all of them
    (an empty train split could not be trained on; a single article goes to train)."""
    titles = sorted(titles)
    random.Random(seed).shuffle(titles)
    count = min(round(len(titles) * eval_ratio), len(titles) - 1)
    if eval_ratio > 0 and len(titles) >= 2:
        count = max(count, 1)
    return set(titles[:count])


def length_stats(lengths: list[int]) -> dict:
    ordered = sorted(lengths) or [0]
    return {
        "min": ordered[0],
        "median": int(statistics.median(ordered)),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
        "total": sum(lengths),
    }


def dataset_card(args, splits: dict, lengths: list[int], pages: list[dict], crawl: dict) -> str:
    stats = length_stats(lengths)
    bounds = [64, 128, 256, 512, 768, args.max_tokens]
    bounds = sorted({bound for bound in bounds if bound <= args.max_tokens})
    rows, low = [], 0
    for high in bounds:
        rows.append(f"| {low + 1}–{high} | {sum(low < n <= high for n in lengths)} |")
        low = high
    examples = {name: len(rows_) for name, rows_ in splits.items()}
    articles = {name: len({row["title"] for row in rows_}) for name, rows_ in splits.items()}
    lines = [
        "# Cthulhu-mythos instruction dataset",
        "",
        "Instruction/response pairs in Japanese, built by `prepare_data.py`"
        + (f" from `{args.from_json}`." if args.from_json else " from Japanese Wikipedia articles through the MediaWiki API."),
        "Each line of `train.jsonl` / `eval.jsonl` is `{\"instruction\", \"response\", \"title\", \"source\", \"revid\"}`;",
        "no article has examples in both files.",
        "",
        "## Counts",
        "",
        "| split | examples | articles |",
        "| --- | --- | --- |",
        f"| train | {examples['train']} | {articles['train']} |",
        f"| eval | {examples['eval']} | {articles['eval']} |",
        "",
        f"## Length (tokens, Mistral instruct format, `{args.tokenizer}`; limit {args.max_tokens})",
        "",
        f"min {stats['min']}, median {stats['median']}, p90 {stats['p90']}, max {stats['max']}, total {stats['total']}",
        "",
        "| tokens | examples |",
        "| --- | --- |",
        *rows,
        "",
        "## Parameters",
        "",
        *[f"- `{key}`: {value}" for key, value in crawl.items()],
        "",
    ]
    if pages:
        index_url = re.sub(r"api\.php$", "index.php", args.api_url)
        lines += [
            "## License and attribution",
            "",
            "The text comes from Wikipedia and is licensed under the Creative Commons Attribution-ShareAlike 4.0",
            "License (CC BY-SA 4.0, https://creativecommons.org/licenses/by-sa/4.0/); this dataset, as a derived",
            "work, is shared under the same license. It was adapted (split into sections, rephrased as questions).",
            "The authors of each page are listed in its history. Pages and the revisions used:",
            "",
            "| page | revision | history |",
            "| --- | --- | --- |",
        ]
        for page in pages:
            title = quote(page["title"].replace(" ", "_"))
            revision = f"[{page['revid']}]({index_url}?title={title}&oldid={page['revid']})" if page["revid"] else "-"
            lines.append(f"| [{page['title']}]({page['url']}) | {revision} | [history]({index_url}?title={title}&action=history) |")
        lines.append("")
    else:
        lines += ["## License and attribution", "", "See the source file's own terms; each record's `source` is kept.", ""]
    return "\n".join(lines)


def write_outputs(out_dir: Path, texts: dict[str, str]) -> None:
    """Replaces the previous run's OUTPUTS with `texts` ({file name: content}) as one set.

    Writing the files one by one would let a crash leave this run's train.jsonl beside an earlier run's
    eval.jsonl, with articles in both. So every file is first written in full to a temporary file beside
    its target; only then are the previous run's files that this run does not produce removed and the
    new ones renamed into place, which takes microseconds.
    """
    temporaries = {}
    try:
        for name, text in texts.items():
            temporaries[name] = write_temporary(out_dir / name, text)
        for name in OUTPUTS:
            if name not in texts:  # e.g. eval.jsonl of a run with an eval split, when this one has none
                (out_dir / name).unlink(missing_ok=True)
        for name, temporary in temporaries.items():
            os.replace(temporary, out_dir / name)
    finally:
        for temporary in temporaries.values():
            temporary.unlink(missing_ok=True)  # left only when something failed


def crawl_articles(args) -> tuple[list[dict], dict, dict]:
    """The articles' page records (sorted by title), the crawl's parameters and its request counts."""
    client = WikiClient(args.api_url, args.user_agent, retries=args.retries, backoff_factor=args.backoff_factor,
                        interval=args.request_interval, timeout=args.timeout)
    cache = Cache(args.cache_dir, args.api_url, refresh=args.refresh)
    titles, categories = [], []
    try:
        if args.category:
            titles, categories = crawl_category_tree(client, cache, args.category, args.depth)
        titles += [normalize_title(title) for title in args.titles]
        with tqdm(total=len(dict.fromkeys(titles)), desc="pages", unit="page", disable=None) as progress:
            records = fetch_pages(client, cache, titles, progress)
    except WikiError as error:
        raise WikiError(f"{error}\nWhat was fetched is cached in {cache.root}; run again to resume.") from None
    articles, missing, skipped = {}, [], []
    for requested, record in records.items():
        if record.get("missing"):
            missing.append(f"{requested} ({record.get('reason', 'missing')})")
        elif record.get("ns", NS_MAIN) != NS_MAIN:
            skipped.append(f"{requested} → {record['title']} (not an article)")
        else:
            articles.setdefault(record["title"], record)
    for line in missing:
        logger.warning("missing page: %s", line)
    for line in skipped:
        logger.warning("skipped: %s", line)
    crawl = {
        "api_url": args.api_url,
        "category": args.category or "(none)",
        "depth": args.depth,
        "titles": " | ".join(args.titles) or "(none)",
        "categories visited": len(categories),
        "pages listed": len(records),
        "articles": len(articles),
        "missing pages": len(missing),
        "fetched": f"{min((a['fetched'] for a in articles.values()), default='-')} – "
                   f"{max((a['fetched'] for a in articles.values()), default='-')}",
    }
    requests = {"requests": client.requests, "retries": client.retries}
    return [articles[title] for title in sorted(articles)], crawl, requests


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retries are logged by cthulhu_sft.wiki, shorter
    started = time.monotonic()

    # 1. Validate everything cheap before anything expensive: config defaults, tokenizer, input file.
    try:
        config_defaults(args)
        legacy = load_records(args.from_json) if args.from_json else None
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        fmt = MistralFormat.from_pretrained(str(args.tokenizer))
    except (OSError, ValueError, RuntimeError) as error:
        print(f"error: {tokenizer_error(str(args.tokenizer), error)}\n"
              "(without access to the Hub, pass --tokenizer with a local folder that holds tokenizer.model)", file=sys.stderr)
        return 2

    # 2. Fetch (cached) and 3. turn each article's text into examples.
    stats, examples = BuildStats(), []
    if legacy is not None:
        pages, crawl = [], {"from_json": args.from_json, "records": len(legacy)}
        for record in legacy:
            title = record.get("title") or legacy_subject(record["instruction"])
            pairs, lost = fit(fmt, record["instruction"], record["response"], args.max_tokens)
            stats.dropped_sentences += lost
            stats.split_sections += len(pairs) > 1
            for instruction, response in pairs:
                source = record.get("source") or f"{Path(args.from_json).name}:{record['line']}"
                examples.append({"instruction": instruction, "response": response, "title": str(title),
                                 "source": source, "revid": record.get("revid")})
    else:
        try:
            pages, crawl, requests = crawl_articles(args)
        except WikiError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
        for page in pages:
            text = page["text"] or ""
            if page["text_format"] == "wikitext":
                text = wikitext_to_text(text)
            page["plain_text"] = text
            built, page_stats = build_examples(page["title"], text, fmt, args.max_tokens, args.seed)
            stats.add(page_stats)
            if not built:
                logger.warning("no examples from %s (no text)", page["title"])
            source = page["url"] or f"{re.sub(r'api[.]php$', 'index.php', args.api_url)}?curid={page['pageid']}"
            examples += [{**pair, "title": page["title"], "source": source, "revid": page["revid"]} for pair in built]
    for note in stats.notes:
        logger.warning(note)
    examples, duplicates = dedupe(examples)
    if not examples:
        print("error: no examples were built (no article had text)", file=sys.stderr)
        return 1

    # 4. Split by article (train is never empty), 5. write the files and the dataset card as one set.
    used_titles = {example["title"] for example in examples}
    held_out = split_by_article(list(used_titles), args.eval_ratio, args.seed)
    splits = {"train": [e for e in examples if e["title"] not in held_out], "eval": [e for e in examples if e["title"] in held_out]}
    lengths = [example_length(fmt, e["instruction"], e["response"]) for e in examples]
    assert max(lengths) <= args.max_tokens, "an example exceeds --max_tokens"
    # An empty file would fail train_sft.py's validation: a split without examples has no file.
    texts = {f"{name}.jsonl": jsonl_text(rows) for name, rows in splits.items() if rows}
    if not splits["eval"]:
        print(f"note: no eval split (--eval_ratio {args.eval_ratio}, {len(used_titles)} article(s)); "
              "train with --eval_file '' --eval_strategy no", file=sys.stderr)
    # The held-out articles' text, for evaluate.py's unsupported-term rate (facts found nowhere in the source).
    sources = [{"title": p["title"], "text": clean_text(p["plain_text"]), "source": p["url"], "revid": p["revid"]}
               for p in pages if p["title"] in held_out]
    if sources:
        texts[SOURCE_TEXTS] = jsonl_text(sources)
    crawl.update({"seed": args.seed, "eval_ratio": args.eval_ratio, "max_tokens": args.max_tokens,
                  "duplicates removed": duplicates, "sentences dropped (longer than max_tokens)": stats.dropped_sentences})
    texts["README.md"] = dataset_card(args, splits, lengths, [p for p in pages if p["title"] in used_titles], crawl)
    out_dir = Path(args.out_dir)
    write_outputs(out_dir, texts)

    # 6. Summary.
    length = length_stats(lengths)
    print(f"articles: {len(pages) if legacy is None else len(used_titles)} "
          f"(train {len({e['title'] for e in splits['train']})}, eval {len({e['title'] for e in splits['eval']})})")
    print(f"examples: train {len(splits['train'])}, eval {len(splits['eval'])}; {duplicates} duplicates removed, "
          f"{stats.split_sections} texts split at sentence ends, {stats.dropped_sentences} over-long sentences dropped")
    print(f"tokens: min {length['min']}, median {length['median']}, p90 {length['p90']}, max {length['max']} "
          f"(limit {args.max_tokens}), total {length['total']}")
    if legacy is None:
        per_article = requests["requests"] / max(1, len(pages))
        print(f"requests: {requests['requests']} ({requests['retries']} retries, {per_article:.2f} per article), "
              f"missing pages: {crawl['missing pages']}, cache: {args.cache_dir}")
    written = [str(out_dir / f"{name}.jsonl") for name, rows in splits.items() if rows]
    print(f"wrote {', '.join(written)}, {out_dir / 'README.md'}"
          f"{', ' + str(out_dir / SOURCE_TEXTS) if sources else ''} "
          f"in {time.monotonic() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
