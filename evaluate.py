"""Measure what models know: correct / incorrect / not attempted, made-up facts, per question set, model and temperature.

Sets are named data files (--sets NAME=PATH ...; default: those of these that exist, and it says which it skipped):
    known   data/eval_known.jsonl             held-out questions about facts of trained articles: did it learn them?
    unseen  data/eval.jsonl                   never-trained articles: what does it make up about what it was not taught?
    quiz    data/quiz/cthulhu_quiz_ja.jsonl   curated short-answer questions on well-known facts of the mythos
For each model (the base alone, base + adapter, several adapters, a merged model) and each set:
  1. loss and perplexity of the reference answers (answer tokens and the closing </s>, as in training);
  2. answers at each --temperatures value (max_new_tokens from the set's longest reference answer unless given),
     graded as SimpleQA grades (correct, incorrect, not attempted; empty answers apart) with the 95 % interval of
     accuracy, and scored for made-up facts (hallucination rate against the question, the reference and every
     crawled article), ROUGE-L, fact recall, EOS-stop and truncated rates. Definitions: cthulhu_sft/grading.py,
     cthulhu_sft/evaluation.py, cthulhu_sft/report.py.
Answers made elsewhere (another model, an API, a person) are scored the same way with --answers, no model loaded:
a JSONL of {"set", "instruction", "answer", optional "book"}, matched to the set's rows by question, named in the
report by --label.
With --open_book every question is also asked open-book: the retriever's --top_k passages of --source_texts in the
prompt (cthulhu_sft/retrieval.py), the model asked to cite them or to say 「資料からは分かりません。」; both books are
graded the same way and reported side by side, with citation accuracy, citation rate, abstention where the
passages lack the answer, and closed-book accuracy as a share of open-book accuracy (cthulhu_sft/report.py). The
sets' retrieval recall@1/3/5 of their own articles is printed first (no GPU needed for it). An --answers line
with "book": "open" answers the question as asked with the passages that this retriever shows for it (`python -m
cthulhu_sft.retrieval --json --top_k K "QUESTION"`), and needs --open_book.
With --judge_api_url and --judge_model, a model grader (any OpenAI-compatible endpoint; its key in the environment
variable --judge_api_key_env) also grades every answer (prompts/grade_ja.md), beside the rules.
Rows with accepted answers whose titled article's text (--source_texts, --cache_dir) names none of them are left
out of the score and listed in the report; --check_quiz lists them and exits (1 if there are any).

    # base alone vs base + adapter on every set, the default sweep 0 / 0.3 / 0.7 / 1.0
    python evaluate.py --models base tuned=output/cthulhu-mistral-7b-lora --load_in_8bit
    # another system's answers on the quiz, in the same table
    python evaluate.py --sets quiz=data/quiz/cthulhu_quiz_ja.jsonl --answers gpt_answers.jsonl --label gpt
    # closed book and open book side by side, greedy
    python evaluate.py --models base tuned=output/cthulhu-mistral-7b-lora --load_in_8bit --open_book --temperatures 0
    # the quiz's facts against the crawled articles
    python evaluate.py --check_quiz

Writes to --output_dir: report.json (configuration, sets, `results`), report.md (a table per set), report.png (a
panel per set) and generations.jsonl (every answer with its grade and scores).
"""

import gc
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cthulhu_sft import evaluation, report, retrieval
from cthulhu_sft.config import CACHE_DIR, SOURCE_TEXTS, LoadArguments, from_sft_config
from cthulhu_sft.data import DataError
from cthulhu_sft.evaluation import Decoding, EvalSet, OpenBook
from cthulhu_sft.inference import model_location_problem
from cthulhu_sft.judge import JudgeError, JudgeSettings
from cthulhu_sft.sets import Corpus


@dataclass
class EvaluateArguments:
    models: list[str] = field(default_factory=list, metadata={
        "metavar": "SPEC", "help": "'base' (the base model alone), or an adapter / merged model folder or Hub id, "
                                   "optionally labelled: tuned=output/cthulhu-mistral"})
    answers: str | None = field(default=None, metadata={
        "metavar": "FILE", "help": "score answers made elsewhere: JSONL of {'set', 'instruction', 'answer'}; no "
                                   "model is loaded for them"})
    label: str | None = field(default=None, metadata={"help": "the name of --answers' system in the report "
                                                              "(default: the file's name)"})
    check_quiz: bool = field(default=False, metadata={"help": "list the rows whose accepted answers are not in their "
                                                              "article's text, and exit (status 1 if there are any)"})
    sets: list[str] | None = field(default=None, metadata={
        "metavar": "NAME=PATH", "help": "question sets (default: " + ", ".join(
            f"{name}={path}" for name, path in evaluation.DEFAULT_SETS.items()) + ", those that exist)"})
    source_texts: str | None = field(default=None, metadata={
        "help": f"JSONL of {{'title', 'text', 'aliases'}}: the articles' text, for the hallucination measures, the "
                f"accepted answers' other names and the quiz check (default: {SOURCE_TEXTS} if present; '' for none)"})
    open_book: bool = field(default=False, metadata={
        "help": "also ask every question open-book: the retriever's top passages of --source_texts in the prompt"})
    top_k: int = field(default=retrieval.DEFAULT_TOP_K, metadata={"help": "passages an open-book prompt shows"})
    cache_dir: str | None = field(default=None, metadata={
        "help": f"prepare_data.py's --cache_dir, whose pages are read for articles --source_texts lacks (default: "
                f"{CACHE_DIR} if present; '' for none)"})
    limit: int | None = field(default=None, metadata={"aliases": ["--num_samples"],
                                                      "help": "evaluate the first N rows of each set"})
    temperatures: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.7, 1.0], metadata={"help": "0 means greedy"})
    top_p: float = from_sft_config("sample_top_p", "sample from the most likely tokens that hold this probability")
    repetition_penalty: float = from_sft_config("sample_repetition_penalty", "1.0 switches it off")
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "default: per set, its longest reference answer in tokens plus a quarter and 16"})
    seed: int = field(default=0, metadata={"help": "each model, set and temperature starts from it"})
    batch_size: int | None = field(default=None, metadata={
        "help": f"answers per batch (default: sized to the GPU's free memory; {evaluation.CPU_BATCH_SIZE} on the CPU)"})
    judge_api_url: str | None = field(default=None, metadata={
        "help": "an OpenAI-compatible endpoint (…/v1) whose model also grades every answer (needs --judge_model)"})
    judge_model: str | None = field(default=None, metadata={"help": "the grading model's name at --judge_api_url"})
    judge_api_key_env: str = field(default="JUDGE_API_KEY", metadata={
        "help": "the environment variable that holds the judge's API key (never written or printed)"})
    judge_cache: str = field(default=os.path.join(CACHE_DIR, "judge.jsonl"), metadata={
        "help": "JSONL of the judge's verdicts, by the hash of what it was asked"})
    output_dir: str = "output/eval"


@dataclass
class ModelSpec:
    label: str
    path: str | None  # None: the base model alone
    base: str | None = None
    adapter: str | None = None
    revision: str | None = None


@dataclass
class AnswersInput:
    """Answers made elsewhere, matched to the sets' rows."""

    path: str
    label: str
    matched: dict[str, dict[str, dict[int, str]]]  # book -> set -> row index -> answer
    ignored: dict[str, int]
    unmatched: list[str]
    fmt: object = None  # open-book answers: the MistralFormat that measures their prompts (answers_format)


@dataclass
class Plan:
    """Everything evaluate.py does, checked before any model loads."""

    options: EvaluateArguments
    load: LoadArguments
    sets: list[EvalSet]
    missing_sets: dict[str, str]
    corpus: Corpus
    source_texts: str | None
    cache_dir: str | None
    specs: list[ModelSpec]
    answers: AnswersInput | None
    judge: JudgeSettings | None
    open_book: OpenBook | None


def parse_model_spec(spec: str) -> ModelSpec:
    """'base', 'PATH_OR_HUB_ID' or 'LABEL=PATH_OR_HUB_ID' -> a ModelSpec (path None for the base alone)."""
    label, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
    if path == "base":
        return ModelSpec(label or "base", None)
    return ModelSpec(label or path.rstrip("/").split("/")[-1], path)


def parse_set_spec(spec: str) -> tuple[str, str]:
    """'NAME=PATH' or 'PATH' (named by its file name without extension) -> (name, path)."""
    name, _, path = spec.partition("=") if "=" in spec else (Path(spec).stem, "", spec)
    return name.strip(), path


def parse_args(argv=None) -> Plan:
    import argparse

    from transformers import HfArgumentParser

    parser = HfArgumentParser((EvaluateArguments, LoadArguments), description=__doc__, allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    options, load = parser.parse_args_into_dataclasses(args=argv)

    # Everything that can be checked without a model is checked here, before minutes of loading.
    if load.load_in_8bit and load.load_in_4bit:
        parser.error("give --load_in_8bit or --load_in_4bit, not both")
    if not (options.models or options.answers or options.check_quiz):
        parser.error("nothing to evaluate: give --models, --answers FILE or --check_quiz")
    if options.label is not None and not options.answers:
        parser.error("--label names the system of --answers; give --answers FILE")
    if any(t < 0 for t in options.temperatures) or len(set(options.temperatures)) != len(options.temperatures):
        parser.error("--temperatures must be distinct and >= 0")
    if options.max_new_tokens is not None and options.max_new_tokens < 1:
        parser.error("--max_new_tokens must be >= 1")
    if not 0 < options.top_p <= 1 or min(options.batch_size or 1, 1 if options.limit is None else options.limit) < 1:
        parser.error("need 0 < --top_p <= 1, --batch_size >= 1, --limit >= 1")
    if options.top_k < 1:
        parser.error(f"--top_k must be at least 1, got {options.top_k}")
    if bool(options.judge_api_url) != bool(options.judge_model):
        parser.error("a model grader needs both --judge_api_url URL and --judge_model NAME")
    specs = [parse_model_spec(spec) for spec in options.models]
    label = options.label or (Path(options.answers).stem if options.answers else None)
    labels = [spec.label for spec in specs] + ([label] if options.answers else [])
    if len(set(labels)) != len(labels):
        parser.error(f"--models / --label: names must be distinct, got {labels}; name them: label=path")
    for spec in specs:
        problem = spec.path and model_location_problem(spec.path, f"--models {spec.label}")
        if problem:
            parser.error(problem)
    if load.base_model and (problem := model_location_problem(load.base_model, "--base_model")):
        parser.error(problem)
    set_paths, missing = resolve_sets(parser, options.sets)
    source_texts = _default(options.source_texts, SOURCE_TEXTS, os.path.isfile)
    cache_dir = _default(options.cache_dir, CACHE_DIR, os.path.isdir)
    if cache_dir and not os.path.isdir(cache_dir):
        parser.error(f"--cache_dir {cache_dir}: no such folder")
    try:
        corpus = evaluation.article_corpus(source_texts, cache_dir)
        full = {name: evaluation.read_set(path) for name, path in set_paths.items()}
        sets = [evaluation.prepare_set(name, path, full[name][: options.limit], corpus) for name, path in set_paths.items()]
        answers = read_answers_input(options, label, sets)
        if answers and any(answers.matched["open"].values()):
            answers.fmt = answers_format(parser, load)
        open_book = None
        if options.open_book:
            if not source_texts:
                parser.error(f"--open_book retrieves from the crawled articles: run prepare_data.py (it writes "
                             f"{SOURCE_TEXTS}), or give --source_texts FILE")
            open_book = OpenBook(retrieval.open_retriever(source_texts), top_k=options.top_k)
            for evaluated in sets:
                evaluated.retrieval = open_book.recall(evaluated.scored)
    except DataError as error:
        parser.error(str(error))
    if options.check_quiz and not corpus.texts:
        parser.error("--check_quiz needs the crawled articles' text to check against: run prepare_data.py (it writes "
                     f"{SOURCE_TEXTS} and its page cache under {CACHE_DIR}/), or give --source_texts FILE or "
                     "--cache_dir DIR")
    judge = None
    if options.judge_api_url:
        judge = JudgeSettings(options.judge_api_url, options.judge_model, options.judge_api_key_env,
                              cache_file=options.judge_cache)
        try:
            from cthulhu_sft.judge import load_prompt

            load_prompt(judge.prompt_file)
        except DataError as error:
            parser.error(str(error))
    return Plan(options, load, sets, missing, corpus, source_texts, cache_dir, specs, answers, judge, open_book)


def read_answers_input(options: EvaluateArguments, label: str | None, sets: list[EvalSet]) -> AnswersInput | None:
    """--answers matched to the sets' rows, book by book; DataError for an open-book answer without --open_book."""
    if not options.answers:
        return None
    lines = evaluation.read_answers(options.answers)
    if not options.open_book and (line := next((a for a in lines if a["book"] == "open"), None)):
        raise DataError(f"{options.answers}:{line['line']}: field 'book': an open-book answer needs --open_book (its "
                        "citations are checked against the passages that the retriever shows)")
    rows = {evaluated.name: evaluated.rows for evaluated in sets}
    matched, ignored, unmatched = {}, {}, []
    for book in ("closed", "open"):
        own = [answer for answer in lines if answer["book"] == book]
        matched[book], book_ignored, book_unmatched = evaluation.match_answers(options.answers, own, rows)
        for name, count in book_ignored.items():
            ignored[name] = ignored.get(name, 0) + count
        unmatched += book_unmatched
    return AnswersInput(options.answers, label, matched, ignored, unmatched)


def answers_format(parser, load: LoadArguments):
    """The tokenizer that measures the open-book prompts of answers made elsewhere, as evaluate.py would show them
    to a model: that of --base_model, else sft_config.yaml's base (its tokenizer.model only, no weights)."""
    from cthulhu_sft.config import sft_defaults
    from cthulhu_sft.inference import load_format

    base = load.base_model or sft_defaults()["model_name_or_path"]
    try:
        return load_format(base, None, load.revision)
    except OSError as error:
        parser.error(f"open-book --answers: the prompt's passages are cut to fit the tokenizer of {base}, which could "
                     f"not be read ({type(error).__name__}); give --base_model FOLDER with its tokenizer.model")


def _default(given: str | None, default: str, exists) -> str | None:
    """A path option: as given ('' for none), else the default where it exists."""
    if given is not None:
        return given or None
    return default if exists(default) else None


def resolve_sets(parser, specs: list[str] | None) -> tuple[dict[str, str], dict[str, str]]:
    """({name: path} of --sets, or of the default sets that exist; {name: path} of the default sets missing)."""
    if specs is None:
        sets = {name: path for name, path in evaluation.DEFAULT_SETS.items() if os.path.isfile(path)}
        missing = {name: path for name, path in evaluation.DEFAULT_SETS.items() if name not in sets}
        if not sets:
            parser.error(f"none of the default sets exists ({', '.join(evaluation.DEFAULT_SETS.values())}): run "
                         "prepare_data.py to build them, or give --sets NAME=PATH")
        return sets, missing
    sets = {}
    for spec in specs:
        name, path = parse_set_spec(spec)
        if not name or not path:
            parser.error(f"--sets {spec}: expected NAME=PATH")
        if name in sets:
            parser.error(f"--sets: the name '{name}' is given twice")
        sets[name] = path
    return sets, {}


def announce_sets(plan: Plan) -> None:
    """Which sets are scored, and which default sets were not found (so none is skipped silently)."""
    scored = ", ".join(f"{evaluated.name} ({evaluated.path}, {len(evaluated.scored)} questions)" for evaluated in plan.sets)
    print(f"Scoring: {scored}", file=sys.stderr)
    if plan.open_book:
        for evaluated in plan.sets:
            print(f"Retrieval, {evaluated.name}: the question's own article among the top k passages: "
                  f"{report.recall_text(evaluated.retrieval)}", file=sys.stderr)
    if plan.missing_sets:
        missing = ", ".join(f"{name} ({path})" for name, path in plan.missing_sets.items())
        print(f"Not found, so not scored: {missing}; prepare_data.py builds them, or give --sets NAME=PATH",
              file=sys.stderr)


def is_adapter(path: str) -> bool:
    """Whether a folder or Hub repository holds a PEFT adapter (else it is a full, e.g. merged, model)."""
    if os.path.isdir(path):
        return os.path.isfile(os.path.join(path, "adapter_config.json"))
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import RemoteEntryNotFoundError

    try:
        hf_hub_download(path, "adapter_config.json")
        return True
    except RemoteEntryNotFoundError:  # absent on the Hub; being offline is an error, not absence
        return False


def check_quiz(plan: Plan) -> int:
    """Prints each set's rows whose accepted answers are not in their article's text; 1 if there are any."""
    problems = 0
    for evaluated in plan.sets:
        info = evaluated.summary()
        checks = evaluated.checks
        checked = len(checks["checked"]) + len(checks["wrong"])
        print(f"{evaluated.name} ({evaluated.path}): {info['with_answers']} rows with accepted answers, {checked} checked "
              f"against their article's text, {len(checks['wrong'])} not found there, {info['unchecked']} unchecked "
              f"(no text: {len(checks['elsewhere'])} named by another crawled article, {len(checks['not_taught'])} "
              "not taught by this data)")
        for row in checks["wrong"]:
            print(f"  {evaluated.path}:{row['line']}: {row['instruction']} — none of {row['answers']} is in the "
                  f"article '{row['title']}'")
        for row in checks["not_taught"]:
            print(f"  {evaluated.path}:{row['line']}: not taught by this data: no crawled article names any of "
                  f"{row['answers']} (article '{row.get('title')}' not crawled)")
        problems += len(checks["wrong"])
    return 1 if problems else 0


def resolve_models(plan: Plan) -> None:
    """Fills each model spec's base and adapter: the base alone, base + adapter, or a full (merged) model."""
    from cthulhu_sft.inference import resolve_base

    load = plan.load
    first_adapter = next((spec.path for spec in plan.specs if spec.path and is_adapter(spec.path)), None)
    base_model = resolve_base(load.base_model, first_adapter)
    for spec in plan.specs:
        if spec.path is None:
            spec.base, spec.adapter = base_model, None
        elif is_adapter(spec.path):
            spec.base, spec.adapter = resolve_base(load.base_model, spec.path), spec.path
        else:
            spec.base, spec.adapter = spec.path, None
        spec.revision = load.revision if load.base_model and spec.base == load.base_model else None


def decoding(plan: Plan, batch_size: int) -> Decoding:
    options = plan.options
    return Decoding(temperatures=options.temperatures, top_p=options.top_p, repetition_penalty=options.repetition_penalty,
                    max_new_tokens=options.max_new_tokens, seed=options.seed, batch_size=batch_size)


def evaluate_models(plan: Plan, results: dict, generations: list, judge) -> None:
    """Per model: load once, then evaluation.evaluate_model on every set."""
    import torch

    from cthulhu_sft.inference import load_format, load_model

    resolve_models(plan)
    books = 2 if plan.open_book else 1
    per_model = sum(len(evaluated.scored) for evaluated in plan.sets) * (1 + books * len(plan.options.temperatures))
    load = plan.load
    with evaluation.progress_bar(len(plan.specs) * per_model, "evaluating") as bar:
        for spec in plan.specs:
            bar.set_description(f"{spec.label}: loading")
            fmt = load_format(spec.base, spec.adapter, spec.revision)
            model = load_model(spec.base, spec.adapter, load_in_8bit=load.load_in_8bit, load_in_4bit=load.load_in_4bit,
                               dtype=load.dtype, trust_remote_code=load.trust_remote_code, revision=spec.revision)
            batch_size = plan.options.batch_size or evaluation.device_batch_size(
                model, evaluation.longest_sequence(plan.sets, fmt, plan.options.max_new_tokens, plan.open_book))
            output = evaluation.evaluate_model(model, fmt, spec.label, plan.sets, decoding(plan, batch_size), plan.corpus,
                                               progress=bar, judge=judge, open_book=plan.open_book)
            results["models"].append({"label": spec.label, "base_model": spec.base, "adapter": spec.adapter,
                                      "batch_size": batch_size, "max_new_tokens": output["max_new_tokens"],
                                      "losses": output["losses"]})
            results["results"] += output["results"]
            generations += output["generations"]
            # Written after every model, so that a failure in a later one keeps what was measured so far
            report.write_report(plan.options.output_dir, results, generations)
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def score_answers(plan: Plan, results: dict, generations: list, judge) -> None:
    """Scores the answers of --answers on every set, as one more system of the report."""
    answers = plan.answers
    entry = {"label": answers.label, "answers_file": answers.path, "unanswered": {}, "unmatched": len(answers.unmatched)}
    for line in answers.unmatched[:20]:
        print(f"{line}; left out", file=sys.stderr)
    if len(answers.unmatched) > 20:
        print(f"... and {len(answers.unmatched) - 20} more answers that match no question; left out", file=sys.stderr)
    books = [book for book, matched in answers.matched.items() if any(matched.values())] or ["closed"]
    for book in books:
        for evaluated in plan.sets:
            scored = {id(row) for row in evaluated.scored}
            answered = sum(id(evaluated.rows[index]) in scored for index in answers.matched[book][evaluated.name])
            name = evaluated.name if book == "closed" else f"{evaluated.name} (open book)"
            entry["unanswered"][name] = len(scored) - answered
            if entry["unanswered"][name]:
                print(f"{answers.path}: {entry['unanswered'][name]} of {len(scored)} questions of set "
                      f"'{name}' have no answer; they are not scored", file=sys.stderr)
        set_results, set_generations = evaluation.score_answers(
            answers.label, answers.matched[book], plan.sets, plan.corpus, judge,
            open_book=plan.open_book if book == "open" else None, fmt=answers.fmt)
        results["results"] += set_results
        generations += set_generations
    report.add_gaps(results["results"])
    for name, count in answers.ignored.items():
        print(f"{answers.path}: {count} answers to set '{name}', which is not evaluated, are ignored", file=sys.stderr)
    results["models"].append(entry)


def main(plan: Plan) -> None:
    if plan.options.check_quiz:
        sys.exit(check_quiz(plan))
    announce_sets(plan)
    options = plan.options
    results = {
        "config": {
            "sets": {evaluated.name: evaluated.path for evaluated in plan.sets}, "source_texts": plan.source_texts,
            "cache_dir": plan.cache_dir, "articles_with_text": len(plan.corpus.texts), "limit": options.limit,
            "temperatures": options.temperatures, "top_p": options.top_p, "max_new_tokens": options.max_new_tokens,
            "repetition_penalty": options.repetition_penalty, "seed": options.seed, "load_in_8bit": plan.load.load_in_8bit,
            "load_in_4bit": plan.load.load_in_4bit, "dtype": plan.load.dtype, "batch_size": options.batch_size,
            "answers": options.answers, "open_book": options.open_book,
            "top_k": options.top_k if options.open_book else None,
            "judge": {"api_url": plan.judge.api_url, "model": plan.judge.model} if plan.judge else None,
        },
        "sets": {evaluated.name: evaluated.summary() for evaluated in plan.sets},
        "missing_sets": plan.missing_sets,
        "models": [],
        "results": [],
    }
    generations = []
    try:
        judge = _judge(plan)
        if plan.answers:
            score_answers(plan, results, generations, judge)
        if plan.specs:
            evaluate_models(plan, results, generations, judge)
    except JudgeError as error:
        sys.exit(f"evaluate.py: {error}")
    markdown = report.write_report(options.output_dir, results, generations)
    print(markdown)
    print(report.console_table(results["results"]), file=sys.stderr)
    print(f"Wrote report.json, report.md, report.png and generations.jsonl to {options.output_dir}", file=sys.stderr)


def _judge(plan: Plan):
    if plan.judge is None:
        return None
    from cthulhu_sft.judge import Judge

    return Judge(plan.judge)


if __name__ == "__main__":
    main(parse_args())
