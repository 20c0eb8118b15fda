"""Measure what models know: short-answer accuracy, made-up facts and abstention, per question set, model and temperature.

Sets are named data files (--sets NAME=PATH ...; default: those of these that exist):
    known   data/eval_known.jsonl             held-out questions about facts of trained articles: did it learn them?
    unseen  data/eval.jsonl                   never-trained articles: what does it make up about what it was not taught?
    quiz    data/quiz/cthulhu_quiz_ja.jsonl   curated short-answer questions on well-known facts of the mythos
For each model (the base alone, base + adapter, several adapters, a merged model) and each set:
  1. loss and perplexity of the reference answers (answer tokens and the closing </s>, as in training);
  2. answers at each --temperatures value (max_new_tokens from the set's longest reference answer unless given),
     scored per answer and per set: accuracy with its 95 % interval, hallucination rate, unsupported-term rate,
     abstention and non-Japanese rates, ROUGE-L, fact recall, EOS-stop and truncated rates. The definitions are
     in cthulhu_sft/evaluation.py and cthulhu_sft/metrics.py.
Answers made elsewhere (another model, an API, a person) are scored the same way with --answers, no model loaded:
a JSONL of {"set", "instruction", "answer"}, matched to the set's rows by question, named in the report by --label.
Rows with accepted answers whose titled article's text (--source_texts, --cache_dir) does not contain any of them
are left out of the score and listed in the report; --check_quiz lists them and exits (1 if there are any).

    # base alone vs base + adapter on every set, the default sweep 0 / 0.3 / 0.7 / 1.0
    python evaluate.py --models base tuned=output/cthulhu-mistral-7b-lora --load_in_8bit
    # another system's answers on the quiz, in the same table
    python evaluate.py --sets quiz=data/quiz/cthulhu_quiz_ja.jsonl --answers gpt_answers.jsonl --label gpt
    # the quiz's facts against the crawled articles
    python evaluate.py --check_quiz

Writes to --output_dir: report.json (configuration, sets, `results`), report.md (a table per set), report.png (a
panel per set) and generations.jsonl (every answer with its scores).
"""

import gc
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cthulhu_sft import evaluation
from cthulhu_sft.config import CACHE_DIR, SOURCE_TEXTS, LoadArguments, from_sft_config, parse_script_args
from cthulhu_sft.data import DataError
from cthulhu_sft.inference import model_location_problem


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
        "help": f"JSONL of {{'title', 'text'}}: the articles' text, for the hallucination measures and the quiz "
                f"check (default: {SOURCE_TEXTS} if present)"})
    cache_dir: str | None = field(default=None, metadata={
        "help": f"prepare_data.py's --cache_dir, whose pages are read for articles --source_texts lacks (default: "
                f"{CACHE_DIR} if present)"})
    limit: int | None = field(default=None, metadata={"aliases": ["--num_samples"],
                                                      "help": "evaluate the first N rows of each set"})
    temperatures: list[float] = field(default_factory=lambda: [0.0, 0.3, 0.7, 1.0], metadata={"help": "0 means greedy"})
    top_p: float = from_sft_config("sample_top_p", "sample from the most likely tokens that hold this probability")
    repetition_penalty: float = from_sft_config("sample_repetition_penalty", "1.0 switches it off")
    max_new_tokens: int | None = field(default=None, metadata={
        "help": "default: per set, its longest reference answer in tokens plus a quarter and 16"})
    seed: int = field(default=0, metadata={"help": "each model, set and temperature starts from it"})
    batch_size: int = 8
    output_dir: str = "output/eval"


def parse_model_spec(spec: str) -> dict:
    """'base', 'PATH_OR_HUB_ID' or 'LABEL=PATH_OR_HUB_ID' -> {'label', 'path'} (path None for the base alone)."""
    label, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
    if path == "base":
        return {"label": label or "base", "path": None}
    return {"label": label or path.rstrip("/").split("/")[-1], "path": path}


def parse_set_spec(spec: str) -> tuple[str, str]:
    """'NAME=PATH' or 'PATH' (named by its file name without extension) -> (name, path)."""
    name, _, path = spec.partition("=") if "=" in spec else (Path(spec).stem, "", spec)
    return name.strip(), path


def parse_args(argv=None):
    parser, args = parse_script_args((EvaluateArguments, LoadArguments), argv, __doc__)

    # Everything that can be checked without a model is checked here, before minutes of loading.
    if not (args.models or args.answers or args.check_quiz):
        parser.error("nothing to evaluate: give --models, --answers FILE or --check_quiz")
    if args.label is not None and not args.answers:
        parser.error("--label names the system of --answers; give --answers FILE")
    if any(t < 0 for t in args.temperatures) or len(set(args.temperatures)) != len(args.temperatures):
        parser.error("--temperatures must be distinct and >= 0")
    if args.max_new_tokens is not None and args.max_new_tokens < 1:
        parser.error("--max_new_tokens must be >= 1")
    if not 0 < args.top_p <= 1 or min(args.batch_size, 1 if args.limit is None else args.limit) < 1:
        parser.error("need 0 < --top_p <= 1, --batch_size >= 1, --limit >= 1")
    args.specs = [parse_model_spec(spec) for spec in args.models]
    args.label = args.label or (Path(args.answers).stem if args.answers else None)
    labels = [spec["label"] for spec in args.specs] + ([args.label] if args.answers else [])
    if len(set(labels)) != len(labels):
        parser.error(f"--models / --label: names must be distinct, got {labels}; name them: label=path")
    for spec in args.specs:
        problem = spec["path"] and model_location_problem(spec["path"], f"--models {spec['label']}")
        if problem:
            parser.error(problem)
    if args.base_model and (problem := model_location_problem(args.base_model, "--base_model")):
        parser.error(problem)
    args.set_paths = resolve_sets(parser, args.sets)
    args.source_texts = args.source_texts or (SOURCE_TEXTS if os.path.isfile(SOURCE_TEXTS) else None)
    args.cache_dir = args.cache_dir or (CACHE_DIR if os.path.isdir(CACHE_DIR) else None)
    if args.cache_dir and not os.path.isdir(args.cache_dir):
        parser.error(f"--cache_dir {args.cache_dir}: no such folder")
    try:
        args.texts = evaluation.article_texts(args.source_texts, args.cache_dir)
        full = {name: evaluation.read_set(path) for name, path in args.set_paths.items()}
        args.sets = {name: prepare_set(path, full[name][: args.limit], args.texts) for name, path in args.set_paths.items()}
        if args.answers:
            args.matched, args.ignored_sets, args.unmatched = evaluation.match_answers(
                args.answers, evaluation.read_answers(args.answers), full)
    except DataError as error:
        parser.error(str(error))
    return args


def resolve_sets(parser, specs: list[str] | None) -> dict[str, str]:
    """{name: path} of --sets, or of the default sets that exist."""
    if specs is None:
        sets = {name: path for name, path in evaluation.DEFAULT_SETS.items() if os.path.isfile(path)}
        if not sets:
            parser.error(f"none of the default sets exists ({', '.join(evaluation.DEFAULT_SETS.values())}); give --sets NAME=PATH")
        return sets
    sets = {}
    for spec in specs:
        name, path = parse_set_spec(spec)
        if not name or not path:
            parser.error(f"--sets {spec}: expected NAME=PATH")
        if name in sets:
            parser.error(f"--sets: the name '{name}' is given twice")
        sets[name] = path
    return sets


def prepare_set(path: str, rows: list[dict], texts: dict[str, str]) -> dict:
    """A set's rows, the indices of those to score, and those left out because their accepted answers are not in
    their article's text."""
    problems = evaluation.quiz_problems(rows, texts)
    excluded = {id(row) for row in problems}
    with_answers = [row for row in rows if row.get("answers")]
    return {
        "path": path,
        "rows": rows,
        "scored": [index for index, row in enumerate(rows) if id(row) not in excluded],
        "excluded": [{key: row.get(key) for key in ("line", "instruction", "answers", "title")} for row in problems],
        "with_answers": len(with_answers),
        "with_text": sum(bool(texts.get(row.get("title") or "")) for row in rows),
        "unchecked": sum(not evaluation.has_source_text(row, texts) for row in with_answers),
    }


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


def check_quiz(args) -> int:
    """Prints each set's rows whose accepted answers are not in their article's text; 1 if there are any."""
    if not args.texts:
        print("No article text to check against: run prepare_data.py (it writes data/source_texts.jsonl), or give "
              "--source_texts or --cache_dir.")
    problems = 0
    for name, info in args.sets.items():
        checked = info["with_answers"] - info["unchecked"]
        print(f"{name} ({info['path']}): {info['with_answers']} rows with accepted answers, {checked} checked against "
              f"their article's text, {len(info['excluded'])} not found there, {info['unchecked']} unchecked (no text)")
        for row in info["excluded"]:
            print(f"  {info['path']}:{row['line']}: {row['instruction']} — none of {row['answers']} is in the "
                  f"article '{row['title']}'")
        problems += len(info["excluded"])
    return 1 if problems else 0


def item_row(name: str, label: str, temperature, row: dict, answer: str, scores: dict) -> dict:
    """One line of generations.jsonl."""
    return {
        "set": name, "model": label, "temperature": temperature, "line": row["line"], "title": row.get("title"),
        "kind": row.get("kind"), "instruction": row["instruction"], "reference": row["response"],
        "accepted": row.get("answers"), "answer": answer, **scores,
    }


def score_answers(args, report: dict, generations: list) -> None:
    """Scores the answers of --answers on every set, as one more system of the report."""
    entry = {"label": args.label, "answers_file": args.answers, "unanswered": {}, "unmatched": len(args.unmatched)}
    for line in args.unmatched[:20]:
        print(f"{line}; left out", file=sys.stderr)
    if len(args.unmatched) > 20:
        print(f"... and {len(args.unmatched) - 20} more answers that match no question; left out", file=sys.stderr)
    for name, info in args.sets.items():
        answered = [index for index in info["scored"] if index in args.matched[name]]
        entry["unanswered"][name] = len(info["scored"]) - len(answered)
        if entry["unanswered"][name]:
            print(f"{args.answers}: {entry['unanswered'][name]} of {len(info['scored'])} questions of set '{name}' "
                  "have no answer; they are not scored", file=sys.stderr)
        items = []
        for index in answered:
            row, answer = info["rows"][index], args.matched[name][index]
            scores = evaluation.score_item(row, answer, None, args.texts.get(row.get("title") or "", ""))
            items.append(scores)
            generations.append(item_row(name, args.label, None, row, answer, scores))
        report["results"].append({"set": name, "model": args.label, "temperature": None, **evaluation.aggregate(items)})
    for name, count in args.ignored_sets.items():
        print(f"{args.answers}: {count} answers to set '{name}', which is not evaluated, are ignored", file=sys.stderr)
    report["models"].append(entry)


def resolve_models(args) -> None:
    """Fills each model spec's base and adapter: the base alone, base + adapter, or a full (merged) model."""
    from cthulhu_sft.inference import resolve_base

    first_adapter = next((spec["path"] for spec in args.specs if spec["path"] and is_adapter(spec["path"])), None)
    base_model = resolve_base(args.base_model, first_adapter)
    for spec in args.specs:
        if spec["path"] is None:
            spec["base"], spec["adapter"] = base_model, None
        elif is_adapter(spec["path"]):
            spec["base"], spec["adapter"] = resolve_base(args.base_model, spec["path"]), spec["path"]
        else:
            spec["base"], spec["adapter"] = spec["path"], None
        spec["revision"] = args.revision if args.base_model and spec["base"] == args.base_model else None


def evaluate_models(args, report: dict, generations: list) -> None:
    """Per model: load once; per set, the reference answers' loss, then answers at each temperature."""
    import torch
    from tqdm.auto import tqdm

    from cthulhu_sft.evaluation import answer_losses, default_max_new_tokens
    from cthulhu_sft.inference import generate, load_format, load_model

    resolve_models(args)
    total = len(args.specs) * sum(len(info["scored"]) for info in args.sets.values()) * (1 + len(args.temperatures))
    with tqdm(total=total, desc="evaluating", unit="example", file=sys.stderr) as bar:
        for spec in args.specs:
            bar.set_description(f"{spec['label']}: loading")
            fmt = load_format(spec["base"], spec["adapter"], spec["revision"])
            model = load_model(
                spec["base"], spec["adapter"], load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit,
                dtype=args.dtype, trust_remote_code=args.trust_remote_code, revision=spec["revision"],
            )
            entry = {"label": spec["label"], "base_model": spec["base"], "adapter": spec["adapter"],
                     "max_new_tokens": {}, "losses": {}}
            for name, info in args.sets.items():
                rows = [info["rows"][index] for index in info["scored"]]
                if not rows:  # every row left out: the set is still reported, with n 0
                    report["results"] += [{"set": name, "model": spec["label"], "temperature": temperature,
                                           **evaluation.aggregate([])} for temperature in args.temperatures]
                    continue
                sources = [args.texts.get(row.get("title") or "", "") for row in rows]
                max_new_tokens = args.max_new_tokens or default_max_new_tokens(rows, fmt)
                entry["max_new_tokens"][name] = max_new_tokens
                bar.set_description(f"{spec['label']} {name}: loss")
                losses = answer_losses(model, fmt, [(row["instruction"], row["response"]) for row in rows],
                                       batch_size=args.batch_size, progress=bar)
                answer_tokens = sum(n for _, n in losses)
                loss = sum(nll for nll, _ in losses) / answer_tokens
                entry["losses"][name] = {"loss": loss, "perplexity": math.exp(loss), "answer_tokens": answer_tokens}
                for temperature in args.temperatures:
                    bar.set_description(f"{spec['label']} {name}: T={temperature:g}")
                    answers = generate(
                        model, fmt, [[{"role": "user", "content": row["instruction"]}] for row in rows],
                        temperature=temperature, top_p=args.top_p, max_new_tokens=max_new_tokens,
                        repetition_penalty=args.repetition_penalty, seed=args.seed, batch_size=args.batch_size,
                        progress=bar,
                    )
                    items = [evaluation.score_item(row, a.text, a.stopped, source) for row, a, source in zip(rows, answers, sources)]
                    report["results"].append({"set": name, "model": spec["label"], "temperature": temperature,
                                              **evaluation.aggregate(items)})
                    for row, answer, scores, (nll, n) in zip(rows, answers, items, losses):
                        generations.append({
                            **item_row(name, spec["label"], temperature, row, answer.text, scores),
                            "new_tokens": len(answer.token_ids), "reference_loss": nll / n,
                        })
            report["models"].append(entry)
            # Written after every model, so that a failure in a later one keeps what was measured so far
            evaluation.write_report(args.output_dir, report, generations)
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()


def main(args) -> None:
    if args.check_quiz:
        sys.exit(check_quiz(args))
    report = {
        "config": {
            "sets": args.set_paths, "source_texts": args.source_texts, "cache_dir": args.cache_dir,
            "articles_with_text": len(args.texts), "limit": args.limit, "temperatures": args.temperatures,
            "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, "repetition_penalty": args.repetition_penalty,
            "seed": args.seed, "load_in_8bit": args.load_in_8bit, "load_in_4bit": args.load_in_4bit,
            "dtype": args.dtype, "batch_size": args.batch_size, "answers": args.answers,
        },
        "sets": {
            name: {key: value for key, value in info.items() if key not in ("rows", "scored")}
            | {"rows": len(info["rows"]), "scored": len(info["scored"])}
            for name, info in args.sets.items()
        },
        "models": [],
        "results": [],
    }
    generations = []
    if args.answers:
        score_answers(args, report, generations)
    if args.specs:
        evaluate_models(args, report, generations)
    markdown = evaluation.write_report(args.output_dir, report, generations)
    print(markdown)
    print(f"Wrote report.json, report.md, report.png and generations.jsonl to {args.output_dir}", file=sys.stderr)


if __name__ == "__main__":
    main(parse_args())
