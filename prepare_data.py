"""Builds the Cthulhu-mythos question/answer dataset from Japanese Wikipedia, through the MediaWiki API.

    python prepare_data.py                                        # crawl ja.wikipedia → data/*.jsonl and data/README.md
    python prepare_data.py --depth 2 --titles ネクロノミコン ルルイエ # a deeper crawl, plus pages outside the category
    python prepare_data.py --qa_api_url http://localhost:8000/v1 --qa_model Qwen/Qwen2.5-7B-Instruct
                                                                  # facts written by an endpoint (on a CUDA machine
                                                                  # the base model writes them without this)
    python prepare_data.py --open_book_ratio 0.3                  # a share of the facts also asked open-book (RAFT)
    python prepare_data.py --from_json data_lora_formatted.json   # convert the old notebook's [{"text","output"}] file
    python prepare_data.py --push_to_hub user/cthulhu-qa          # and publish the dataset with its card

Steps: crawl the category tree (every answer cached under --cache_dir, one run per cache, so a rerun makes no
request and an interrupted one resumes; each page with its aliases) → clean each article's text → passages a user
can ask about (sections, long ones cut between sentences), each asked in --phrasings wordings → facts written from
each passage by a model (--qa_backend: endpoint, vLLM or transformers; none without one), kept only when their
evidence is in the passage, every check passes and a verification says the passage states them; rewrites of each
passage, verified → split by article (eval.jsonl: articles never trained); held-out questions about trained facts
in eval_known.jsonl (one wording of each of up to 5 facts of a trained article, its other wordings trained; cloze
probes for an article without one) → optionally open-book examples → write the files and the dataset card
(data/README.md, CC BY-SA 4.0 attribution) as one set → print what it did in numbers. --tokenizer and
--max_tokens default to `model_name_or_path` and `max_length` in sft_config.yaml. The hand-written sample in
data/sample/ is never replaced.
"""

import argparse
import logging
import os
import re
import signal
import sys
import time
from collections import Counter
from pathlib import Path

from tqdm import tqdm

from cthulhu_sft import config
from cthulhu_sft.config import CACHE_DIR, sft_defaults
from cthulhu_sft.data import DataError, jsonl_text
from cthulhu_sft.dataset_card import (
    CARD_MARK,
    OLD_CARD_MARK,
    length_stats,
    open_book_view,
    render_card,
)
from cthulhu_sft.examples import (
    MAX_PHRASINGS,
    BuildStats,
    Passage,
    build_passages,
    example_length,
    normalize_question,
    subjects_of,
)
from cthulhu_sft.files import Busy, one_run_at_a_time, os_error_message, write_temporary
from cthulhu_sft.format import MistralFormat, tokenizer_error
from cthulhu_sft.legacy import converted_passages, read_legacy
from cthulhu_sft.retrieval import RaftStats
from cthulhu_sft.splits import (
    SPLITS,
    alias_groups,
    known_probes,
    make_splits,
    open_book,
    source_texts,
    split_by_article,
)
from cthulhu_sft.synth import (
    FACTS,
    FACTS_PROMPT,
    MAX_TOKENS,
    REWRITES,
    VERIFY,
    Report,
    load_prompts,
    synthesize,
)
from cthulhu_sft.wiki import (
    CONNECT_TIMEOUT,
    DEFAULT_API_URL,
    MAX_PAGE_CHARS,
    MAX_RETRY_AFTER,
    NS_MAIN,
    Cache,
    CategoryError,
    WikiClient,
    WikiError,
    crawl_category_tree,
    fetch_pages,
    normalize_title,
)
from cthulhu_sft.wiki import (
    MAX_ANSWER_BYTES as MAX_WIKI_ANSWER_BYTES,
)
from cthulhu_sft.writers import (
    BACKENDS,
    BATCH_SIZE,
    CONCURRENCY,
    MAX_ANSWER_BYTES,
    RETRIES,
    TIMEOUT,
    AnswerCache,
    WriterError,
    make_writer,
    resolve_backend,
)

REPO = Path(__file__).resolve().parent
SAMPLE = REPO / "data" / "sample"  # the shipped hand-written sample: never an output folder
SOURCE_TEXTS = Path(config.SOURCE_TEXTS).name  # every article's text: evaluation, quiz and chat page read it
OUTPUTS = tuple(f"{split}.jsonl" for split in SPLITS) + (SOURCE_TEXTS, "README.md")  # one run's set
logger = logging.getLogger("prepare_data")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False)
    crawl = parser.add_argument_group("crawl")
    crawl.add_argument("--api_url", default=DEFAULT_API_URL, help="the wiki's api.php (default: %(default)s)")
    crawl.add_argument("--category", default="Category:クトゥルフ神話", help="root category; '' for --titles only")
    crawl.add_argument("--depth", type=int, default=1, help="subcategory levels below --category (default: %(default)s)")
    crawl.add_argument("--titles", nargs="+", action="extend", default=[], metavar="TITLE",
                       help="extra pages (several, or 'A|B'); redirects are followed")
    crawl.add_argument("--cache_dir", default=CACHE_DIR,
                       help="pages under wiki/, the writer's answers under qa/; one run at a time uses it, a second "
                            "is refused (default: %(default)s)")
    crawl.add_argument("--refresh", action="store_true", help="fetch every page again, ignoring the cache")
    crawl.add_argument("--max_page_chars", type=int, default=MAX_PAGE_CHARS,
                       help="longest page text taken; a longer one is cut at a paragraph and counted in the summary "
                            "(default: %(default)s)")
    crawl.add_argument("--user_agent", default=None,
                       help="User-Agent with your contact, as Wikimedia's policy asks (default: the project's)")
    client = parser.add_argument_group("HTTP client (the wiki)")
    client.add_argument("--request_interval", type=float, default=0.5, help="seconds between requests (default: %(default)s)")
    client.add_argument("--retries", type=int, default=5, help="retries of a failed request (default: %(default)s)")
    client.add_argument("--backoff_factor", type=float, default=1.0,
                        help="exponential backoff between retries, unless the server sends Retry-After (default: %(default)s)")
    client.add_argument("--timeout", type=float, default=60.0,
                        help="seconds each try of a request may take, from sending it to the answer's last byte "
                             f"(connecting may take {CONNECT_TIMEOUT:g} s more; answers over {MAX_WIKI_ANSWER_BYTES // 2**20} MiB "
                             "are refused) (default: %(default)s)")
    client.add_argument("--max_retry_after", type=float, default=MAX_RETRY_AFTER,
                        help="longest wait a server may ask for (Retry-After) before a retry; a longer one ends the "
                             "run with what the server asked (default: %(default)s)")
    data = parser.add_argument_group("dataset")
    data.add_argument("--from_json", default=None,
                      help='convert this JSON array of {"text", "output"} (the old notebook\'s file) instead of crawling')
    data.add_argument("--out_dir", default="data", help="where the JSONL files and README.md go (default: %(default)s)")
    data.add_argument("--tokenizer", default=None, help="tokenizer name or folder (default: model_name_or_path in sft_config.yaml)")
    data.add_argument("--max_tokens", type=int, default=None, help="longest example in tokens (default: max_length in sft_config.yaml)")
    data.add_argument("--phrasings", type=int, default=2,
                      help=f"distinct question wordings each passage is trained under, 1 to {MAX_PHRASINGS} (default: %(default)s)")
    data.add_argument("--eval_ratio", type=float, default=0.1, help="share of articles never trained, in eval.jsonl (default: %(default)s)")
    data.add_argument("--probe_ratio", type=float, default=0.2,
                      help="share of the sentences of a trained article without a fact to probe, asked as cloze probes in "
                           "eval_known.jsonl; 0: no eval_known (default: %(default)s)")
    data.add_argument("--open_book_ratio", type=float, default=0.0,
                      help="share of the trained facts also asked open-book (RAFT): over their own passage among "
                           "passages retrieved from the crawled articles, citing it, or over those alone, answering "
                           "that they do not say; every fact still trains closed-book, so one adapter serves both "
                           "ways; 0: none (default: %(default)s)")
    data.add_argument("--seed", type=int, default=42, help="question wording and splits (default: %(default)s)")
    qa = parser.add_argument_group("facts and rewrites written by a model, checked against the passage "
                                   "(an endpoint's key: OPENAI_API_KEY)")
    qa.add_argument("--qa_backend", choices=BACKENDS, default="auto",
                    help="openai: an OpenAI-compatible endpoint (--qa_api_url); vllm or transformers: a local model on "
                         "this machine's GPU; none: no model-written data; auto: openai with --qa_api_url, else a local "
                         "writer on a CUDA machine (vllm when it imports), else none (default: %(default)s)")
    qa.add_argument("--qa_api_url", default=None, help="an OpenAI-compatible endpoint, e.g. http://localhost:8000/v1")
    qa.add_argument("--qa_model", default=None,
                    help="the writer: the name the endpoint serves (needed with --qa_api_url), or a local model "
                         "(default: model_name_or_path in sft_config.yaml)")
    qa.add_argument("--qa_judge_model", default=None, help="the model that gives the verdicts (default: --qa_model)")
    qa.add_argument("--qa_verify", type=int, default=VERIFY,
                    help="verdicts asked per question/answer and per rewrite, kept on a majority of true; "
                         "0: no verification (default: %(default)s)")
    qa.add_argument("--rewrites", type=int, default=REWRITES,
                    help="rewrites of each passage in other words, trained as further recitations (default: %(default)s)")
    qa.add_argument("--qa_prompt", default=str(FACTS_PROMPT),
                    help="the facts prompt, yours to edit; the verdict and rewrite prompts are beside the shipped one "
                         "in prompts/ (default: prompts/qa_synthesis_ja.md)")
    qa.add_argument("--qa_facts", type=int, default=FACTS, help="facts asked per passage at most (default: %(default)s)")
    qa.add_argument("--qa_concurrency", type=int, default=CONCURRENCY, help="requests at a time (default: %(default)s)")
    qa.add_argument("--qa_timeout", type=float, default=TIMEOUT,
                    help="seconds one whole request may take, its answer included (default: %(default)s)")
    qa.add_argument("--qa_retries", type=int, default=RETRIES,
                    help="retries of a request that fails (429, 5xx, timeouts; Retry-After honoured) (default: %(default)s)")
    qa.add_argument("--qa_max_tokens", type=int, default=MAX_TOKENS,
                    help="longest facts or rewrite answer, in tokens; an endpoint's answer over "
                         f"{MAX_ANSWER_BYTES // 1024} KiB is not read but skipped and counted (default: %(default)s)")
    qa.add_argument("--qa_batch_size", type=int, default=BATCH_SIZE,
                    help="prompts a transformers writer generates together (default: %(default)s)")
    hub = parser.add_argument_group("publish")
    hub.add_argument("--push_to_hub", default=None, metavar="USER/NAME", help="publish the dataset to the Hugging Face Hub")
    hub.add_argument("--private", action="store_true", default=None, help="make a new dataset repo private")
    hub.add_argument("--hub_timeout", type=float, default=None,
                     help="seconds each Hub request may wait (default: hub_timeout in sft_config.yaml)")
    args = parser.parse_args(argv)
    args.titles = [title for value in args.titles for title in value.split("|") if title.strip()]
    problems = [
        (not 0 <= args.eval_ratio < 1, f"--eval_ratio must be in [0, 1), got {args.eval_ratio}"),
        (not 0 <= args.probe_ratio < 1, f"--probe_ratio must be in [0, 1), got {args.probe_ratio}"),
        (not 0 <= args.open_book_ratio <= 1, f"--open_book_ratio must be in [0, 1], got {args.open_book_ratio}"),
        (args.open_book_ratio > 0 and args.from_json is not None,
         "--open_book_ratio retrieves from crawled articles: not with --from_json"),
        (args.depth < 0, f"--depth must be >= 0, got {args.depth}"),
        (args.timeout <= 0 or args.max_retry_after < 0, "--timeout must be > 0 and --max_retry_after >= 0"),
        (args.max_page_chars < 1000, f"--max_page_chars must be at least 1000, got {args.max_page_chars}"),
        (args.max_tokens is not None and args.max_tokens < 16, f"--max_tokens must be at least 16, got {args.max_tokens}"),
        (not 1 <= args.phrasings <= MAX_PHRASINGS, f"--phrasings must be 1 to {MAX_PHRASINGS}, got {args.phrasings}"),
        ((args.qa_backend == "openai" or args.qa_backend == "auto" and args.qa_api_url)
         and not (args.qa_api_url and args.qa_model), "--qa_api_url and --qa_model go together"),
        (args.qa_backend in ("vllm", "transformers", "none") and bool(args.qa_api_url),
         f"--qa_api_url is an endpoint's: it needs --qa_backend openai (or auto), not {args.qa_backend}"),
        (min(args.qa_concurrency, args.qa_facts, args.qa_batch_size, args.qa_max_tokens) < 1
         or min(args.qa_retries, args.qa_verify, args.rewrites) < 0 or args.qa_timeout <= 0,
         "--qa_concurrency, --qa_facts, --qa_batch_size and --qa_max_tokens must be >= 1, "
         "--qa_retries, --qa_verify and --rewrites >= 0, --qa_timeout > 0"),
        (args.push_to_hub is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", args.push_to_hub or ""),
         f"--push_to_hub takes USER/NAME, got {args.push_to_hub!r}"),
    ]
    for failed, message in problems:
        if failed:
            parser.error(message)
    chosen, args.qa_backend = args.qa_backend, resolve_backend(args.qa_backend, args.qa_api_url)
    if chosen == "auto" and args.qa_backend == "none" and args.qa_model:
        parser.error(f"--qa_model {args.qa_model} without --qa_api_url is a local writer, which needs a CUDA machine "
                     "(or --qa_backend transformers, to run it on the CPU, slowly)")
    if args.qa_backend in ("vllm", "transformers") and args.qa_model is None:
        args.qa_model = sft_defaults()["model_name_or_path"]  # the base model, which training loads anyway
    if args.qa_backend == "none":
        args.qa_model = args.qa_judge_model = None
    return args


def config_defaults(args: argparse.Namespace) -> None:
    """Fills --tokenizer, --max_tokens and --hub_timeout from sft_config.yaml, the one place these are set."""
    defaults = sft_defaults()
    for option, key in (("tokenizer", "model_name_or_path"), ("max_tokens", "max_length"), ("hub_timeout", "hub_timeout")):
        if getattr(args, option) is None:
            setattr(args, option, defaults[key])
    if not isinstance(args.max_tokens, int) or args.max_tokens < 16:
        raise DataError(f"--max_tokens (sft_config.yaml's max_length) must be an integer >= 16, got {args.max_tokens!r}")


def check_out_dir(out_dir: Path) -> None:
    """Refuses a folder whose dataset files this script did not write: a user's own files are never replaced."""
    if out_dir.resolve() == SAMPLE.resolve():
        raise DataError(f"{out_dir}: the shipped hand-written sample; choose another --out_dir")
    present = [name for name in OUTPUTS if (out_dir / name).exists()]
    card = out_dir / "README.md"
    ours = card.is_file() and any(mark in card.read_text(encoding="utf-8", errors="replace") for mark in (CARD_MARK, OLD_CARD_MARK))
    if present and not ours:
        raise DataError(f"{out_dir} holds {', '.join(present)} not written by prepare_data.py (its README.md is not our "
                        "dataset card); choose another --out_dir, or move them away")


# ---------------------------------------------------------------------------------------------------
# Crawl


def crawl_articles(args) -> tuple[list[dict], dict, dict]:
    """The articles' page records (sorted by title), the crawl's parameters and its request counts."""
    if args.user_agent is None:
        logger.warning("no --user_agent: Wikimedia's User-Agent policy expects one that names you and a contact, e.g. "
                       "--user_agent 'MyCrawl/1.0 (you@example.org)'; sending the project's")
    client = WikiClient(args.api_url, args.user_agent, retries=args.retries, backoff_factor=args.backoff_factor,
                        interval=args.request_interval, timeout=args.timeout, max_retry_after=args.max_retry_after)
    cache = Cache(Path(args.cache_dir) / "wiki", args.api_url, refresh=args.refresh)
    titles, categories = [], []
    try:
        if args.category:
            titles, categories = crawl_category_tree(client, cache, args.category, args.depth)
        titles += [normalize_title(title) for title in args.titles]
        with tqdm(total=len(dict.fromkeys(titles)), desc="pages", unit="page", disable=None) as progress:
            records = fetch_pages(client, cache, titles, progress, max_chars=args.max_page_chars)
    except CategoryError:
        raise
    except WikiError as error:
        if not cache.saved:  # nothing to resume from
            raise
        raise WikiError(f"{error}\n{cache.saved} answer(s) fetched in this run are cached in {cache.root}; "
                        "run again to resume.") from None
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
    cut = {title: record["cut_chars"] for title, record in articles.items() if record.get("cut_chars")}
    for title, chars in cut.items():
        logger.warning("cut: %s (its text is longer than --max_page_chars %d; %d characters left out)", title,
                       args.max_page_chars, chars)
    crawl = {
        "api_url": args.api_url,
        "category": args.category or "(none)",
        "depth": args.depth,
        "titles": " | ".join(args.titles) or "(none)",
        "categories visited": len(categories),
        "pages listed": len(records),
        "articles": len(articles),
        "missing pages": len(missing),
        "pages cut at --max_page_chars": f"{len(cut)} ({sum(cut.values())} characters left out)",
        "fetched": f"{min((a['fetched'] for a in articles.values()), default='-')} – "
                   f"{max((a['fetched'] for a in articles.values()), default='-')}",
    }
    requests = {"requests": client.requests, "retries": client.retries,
                "cut": f"{len(cut)} page(s), {sum(cut.values())} characters left out" if cut else None}
    return [articles[title] for title in sorted(articles)], crawl, requests


def article_passages(pages: list[dict], fmt, args, stats: BuildStats) -> list[Passage]:
    subjects = subjects_of([page["title"] for page in pages])
    passages = []
    for page in pages:
        built, page_stats = build_passages(page["title"], page["text"] or "", fmt, args.max_tokens, args.phrasings,
                                           args.seed, subjects[page["title"]])
        stats.add(page_stats)
        if not built:
            logger.warning("no passages from %s (no text)", page["title"])
        for passage in built:
            passage.source, passage.revid = page["url"], page["revid"]
        passages += built
    return passages


def dedupe(passages: list[Passage]) -> tuple[list[Passage], int, set[str]]:
    """Passages with a text not seen before, each keeping its questions not asked before; how many were
    dropped; the questions kept (normalised). A question is never asked with two answers."""
    texts, questions, kept = set(), set(), []
    for passage in passages:
        text = re.sub(r"\s+", " ", passage.text).strip()
        passage.questions = [q for q in passage.questions if normalize_question(q) not in questions]
        if text in texts or not passage.questions:
            continue
        texts.add(text)
        questions.update(normalize_question(q) for q in passage.questions)
        kept.append(passage)
    return kept, len(passages) - len(kept), questions


# ---------------------------------------------------------------------------------------------------
# The files, as one set


def write_outputs(out_dir: Path, texts: dict[str, str]) -> None:
    """Replaces the previous run's OUTPUTS with `texts` ({file name: content}) as one set.

    Every file is first written in full to a temporary file beside its target; only then are the previous run's
    files that this run does not produce removed and the new ones renamed into place, which takes microseconds.
    A crash or Ctrl-C before that leaves the previous set whole and no temporary file.
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


# ---------------------------------------------------------------------------------------------------


def interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM ends the run like Ctrl-C: temporary files are removed on the way out


def main(argv=None) -> int:
    previous, args = signal.signal(signal.SIGTERM, interrupt), None
    try:
        args = parse_args(argv)
        with one_run_at_a_time(args.cache_dir, "--cache_dir"):  # runs sharing a cache would remove each other's files
            return run(args)
    except Busy as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except OSError as error:  # a full disk, a read-only folder: what was cached before stays, for the rerun
        print(f"error: {os_error_message(error)}; fix that and run again (what is cached is kept)",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        cached = args is not None and next(Path(args.cache_dir).glob("*/**/*.json"), None) is not None
        print(f"interrupted; run again to resume (what was fetched or written by the model is cached in {args.cache_dir})"
              if cached else "interrupted before anything was cached", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def configure_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # its retries are logged by cthulhu_sft.wiki, shorter
    for name in ("httpx", "httpx2", "openai"):  # a line per request would bury the progress bar
        logging.getLogger(name).setLevel(logging.WARNING)


def run(args) -> int:
    started, out_dir = time.monotonic(), Path(args.out_dir)

    # 1. Validate everything cheap before anything expensive: outputs, config defaults, inputs, tokenizer, Hub access.
    try:
        check_out_dir(out_dir)
        config_defaults(args)
        legacy = read_legacy(args.from_json) if args.from_json else None
        prompts = load_prompts(args.qa_prompt) if args.qa_backend != "none" else None
        fmt = load_tokenizer(str(args.tokenizer))
    except DataError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.push_to_hub and not hub_ready(args):
        return 1
    if prompts is None:
        print(f"note: {Report.without_writer().note}", file=sys.stderr)

    # 2. Fetch (cached) and 3. cut each article's text into passages a user can ask about.
    stats, pages, requests = BuildStats(), [], None
    if legacy is not None:
        build = {"from_json": args.from_json, "records": len(legacy)}
        passages = converted_passages(args.from_json, legacy, fmt, args.max_tokens, stats)
    else:
        try:
            pages, build, requests = crawl_articles(args)
        except WikiError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2 if isinstance(error, CategoryError) else 1
        passages = article_passages(pages, fmt, args, stats)
    for note in stats.notes:
        logger.warning(note)
    passages, stats.duplicates, questions = dedupe(passages)
    if not passages:
        print("error: no examples were built (no article had text)", file=sys.stderr)
        return 1

    # 4. Facts and rewrites written by a model from each passage, kept only when checked and verified.
    def fits(question: str, answer: str) -> bool:
        return example_length(fmt, question, answer) <= args.max_tokens

    facts, rewrites, report = [], [], Report.without_writer()
    if prompts is not None:
        try:
            facts, rewrites, report = write_facts(args, passages, prompts, questions, fits,
                                                  {page["title"]: page.get("aliases") or [] for page in pages})
        except WriterError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1

    # 5. Split by article, hold out wordings of trained facts, and 6. write the files and the card as one set.
    titles = list(dict.fromkeys(passage.title for passage in passages))
    held_titles = split_by_article(titles, args.eval_ratio, args.seed)
    splits = make_splits(passages, facts, rewrites, held_titles, fits, probe_ratio=args.probe_ratio, seed=args.seed,
                         writer=getattr(report, "model", None) or args.qa_model, names=alias_groups(pages))
    sources = source_texts(pages, held_titles)
    splits, raft = with_open_book(splits, facts, sources, fmt, args)
    lengths = [example_length(fmt, r["instruction"], r["response"]) for rows in splits.values() for r in rows]
    assert max(lengths) <= args.max_tokens, "an example exceeds --max_tokens"
    if not splits["eval"]:
        print(f"note: no eval split (--eval_ratio {args.eval_ratio}, {len(titles)} article(s)); "
              "train with --eval_file '' --eval_strategy no", file=sys.stderr)
    if not splits["eval_known"]:
        print(f"warning: no eval_known split (--probe_ratio {args.probe_ratio}: no held-out question about a trained "
              "fact); train with --eval_file data/eval.jsonl, and the knowledge check has no known set",
              file=sys.stderr)
    texts = {f"{split}.jsonl": jsonl_text(rows) for split, rows in splits.items() if rows}  # no empty files
    if sources:
        texts[SOURCE_TEXTS] = jsonl_text(sources)
    build.update({"seed": args.seed, "phrasings": args.phrasings, "eval_ratio": args.eval_ratio,
                  "probe_ratio": args.probe_ratio, "open_book_ratio": args.open_book_ratio, "max_tokens": args.max_tokens,
                  "duplicates removed": stats.duplicates,
                  "sentences dropped (too long, or pointing back)": stats.dropped_sentences,
                  "parts with no name to ask by": stats.unaskable_parts})
    used = [page for page in pages if page["title"] in set(titles)]
    texts["README.md"] = render_card(args, splits, lengths, used, build, prompts and prompts.facts, report, raft)
    write_outputs(out_dir, texts)

    # 7. What was done, in numbers, and 8. publish.
    summarize(args, splits, passages, stats, lengths, report, requests, len(pages) or len(titles), raft)
    print(f"wrote {', '.join(str(out_dir / name) for name in texts)} in {time.monotonic() - started:.1f}s")
    return push(out_dir, args) if args.push_to_hub else 0


def write_facts(args, passages, prompts, seen, fits, aliases):
    """Step 4: the writer (and judge) of --qa_backend, asked through the cache; a local one frees the GPU after."""
    settings = dict(url=args.qa_api_url, concurrency=args.qa_concurrency, timeout=args.qa_timeout,
                    retries=args.qa_retries, batch_size=args.qa_batch_size)
    writer = make_writer(args.qa_backend, args.qa_model, **settings)
    judge = writer
    if args.qa_judge_model and args.qa_judge_model != args.qa_model:
        judge = make_writer(args.qa_backend, args.qa_judge_model, **settings)
    print(f"writer: {args.qa_backend} {args.qa_model}" + (f", judge {judge.model}" if judge is not writer else ""),
          file=sys.stderr)
    try:
        return synthesize(passages, writer, prompts, AnswerCache(Path(args.cache_dir) / "qa"), judge=judge,
                          verify=args.qa_verify, rewrites=args.rewrites, facts=args.qa_facts, seen=seen, fits=fits,
                          max_tokens=args.qa_max_tokens, aliases=aliases)
    finally:
        writer.close()
        judge.close()


def with_open_book(splits, facts, sources, fmt, args) -> tuple[dict, RaftStats | None]:
    """Step 5's open book: --open_book_ratio of the trained facts asked over retrieved passages (splits.open_book)."""
    if args.open_book_ratio <= 0:
        return splits, None
    if not facts:
        print(f"warning: --open_book_ratio {args.open_book_ratio}: no facts to ask open-book (they come from the "
              "writer), so no open-book examples", file=sys.stderr)
        return splits, None
    return open_book(splits, facts, sources, args.open_book_ratio, args.seed, fmt, args.max_tokens)


def load_tokenizer(name: str) -> MistralFormat:
    """The tokenizer from a local folder, the Hub's cache (no request), or the Hub; at once when it is out of reach.

    hf_hub_download retries a network failure five times with backoff (24 s of warnings); one HEAD request
    (get_hf_file_metadata does not retry) tells at once that the Hub cannot be reached.
    """
    from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError, OfflineModeIsEnabled

    folder = name
    if not os.path.isdir(name):
        try:
            cached = try_to_load_from_cache(name, "tokenizer.model")
        except HFValidationError:
            cached = "neither a folder nor a Hub id"  # from_pretrained says so
        if isinstance(cached, str) and os.path.isfile(cached):
            folder = os.path.dirname(cached)
        elif cached is None:
            try:
                get_hf_file_metadata(hf_hub_url(name, "tokenizer.model"))
            except Exception as error:  # an HTTP answer (gated, not found) is reported by from_pretrained below
                transport = any(kind.__name__ == "TransportError" for kind in type(error).__mro__)  # httpx's or a fork's
                if isinstance(error, OfflineModeIsEnabled) or transport:
                    raise DataError(f"cannot reach the Hub ({constants.ENDPOINT}) for {name}'s tokenizer.model, and it "
                                    f"is not in the Hub's cache: {(str(error).splitlines() or [''])[0]}\nWithout "
                                    "network, pass --tokenizer with a local folder that holds tokenizer.model") from None
    try:
        return MistralFormat.from_pretrained(folder)
    except (OSError, ValueError, RuntimeError) as error:
        raise DataError(f"{tokenizer_error(name, error)}\n(without access to the Hub, pass --tokenizer with a local "
                        "folder that holds tokenizer.model)") from None


def hub_ready(args) -> bool:
    """Before any long work: a token, accepted, that may write the dataset repo (printing why not)."""
    from cthulhu_sft.hub import PushError, check_access, set_timeout

    set_timeout(args.hub_timeout)
    try:
        check_access(args.push_to_hub, repo_type="dataset", private=args.private)
    except PushError as error:
        print(f"error: {error}", file=sys.stderr)
        return False
    return True


def summarize(args, splits, passages, stats, lengths, report, requests, articles: int, raft: RaftStats | None) -> None:
    counts = {split: Counter(r["kind"] for r in rows) for split, rows in splits.items()}
    titles = {split: len({r["title"] for r in rows}) for split, rows in splits.items()}
    print(f"articles: {articles} (train {titles['train']}, eval {titles['eval']})")
    for split in SPLITS:
        kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(counts[split].items())) or "none"
        print(f"{split}: {len(splits[split])} examples ({kinds})")
    probes = known_probes(splits)
    print(f"known probes: {len(splits['eval_known'])} for {sum(map(bool, probes.values()))} of {len(probes)} trained "
          f"articles (at least {min(probes.values(), default=0)}, at most {max(probes.values(), default=0)} an article)")
    print(f"passages: {len(passages)} from {stats.sections or len(passages)} texts ({stats.split_sections} cut between "
          f"sentences, {stats.dropped_sentences} sentences dropped, {stats.unaskable_parts} parts with no name to ask by, "
          f"{stats.duplicates} duplicates removed), {args.phrasings} wording(s) each in train")
    if report.backend == "none":
        print(f"note: {report.note}")
    else:
        rejected = ", ".join(f"{reason} {count}" for reason, count in report.rejected.most_common()) or "none"
        verified = (f"{report.verdicts} verdicts of {report.verify} vote(s), {report.votes_true}/{report.votes} votes "
                    f"true, {report.agreement:.0%} unanimous" if report.verdicts else
                    "no verification (--qa_verify 0)" if not report.verify else "nothing to verify")
        print(f"Q&A ({report.backend} {args.qa_model}): {report.passages} passages, answers: {report.generated} new "
              f"({report.cached} cached), requests: {report.requests} ({report.retries} retries), tokens: "
              f"{report.prompt_tokens} prompt + {report.completion_tokens} completion; facts kept {report.facts_kept} "
              f"of {report.facts_offered} ({report.questions_kept} questions); {verified}; rewrites kept "
              f"{report.rewrites_kept} of {report.rewrites_offered}; rejected: {rejected}")
        if report.rewrite_error:
            print(f"rewrites: none, the writer failed at them ({report.rewrite_error}); run again to retry")
    if raft is None:
        print(f"open book: none (--open_book_ratio {args.open_book_ratio})")
    else:
        book = open_book_view(raft)
        print(f"open book: {book['examples']} examples ({book['with_passage']} with the fact's passage, "
              f"{book['distractors_only']} with distractors only) for {book['share']} of {book['facts']} trained facts "
              f"(--open_book_ratio {args.open_book_ratio}); chosen but not made: {book['too_long']} too long, "
              f"{book['no_distractor']} without a distractor")
    length = length_stats(lengths)
    print(f"tokens: min {length['min']}, median {length['median']}, p90 {length['p90']}, max {length['max']} "
          f"(limit {args.max_tokens}), total {length['total']}")
    if requests is not None:
        print(f"requests: {requests['requests']} ({requests['retries']} retries, "
              f"{requests['requests'] / max(1, articles):.2f} per article), cache: {args.cache_dir}")
        if requests.get("cut"):
            print(f"pages cut at --max_page_chars {args.max_page_chars}: {requests['cut']}")


def push(out_dir: Path, args) -> int:
    from cthulhu_sft.hub import PushError, push_dataset

    print(f"pushing {out_dir} to the Hub as dataset {args.push_to_hub} ...")
    try:
        print(f"pushed: {push_dataset(str(out_dir), args.push_to_hub, args.private)}\n"
              f"name it in the adapter's model card: train_sft.py ... --card_datasets {args.push_to_hub}")
    except PushError as error:
        print(f"error: {error}\nThe files in {out_dir} are kept; retry with:\n"
              f"  python -m cthulhu_sft.hub --dataset {out_dir} {args.push_to_hub}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    configure_logging()
    sys.exit(main())
