"""What a training run leaves beside its adapter: run.json, config.yaml, samples, the knowledge check, the card.

run.json says what the run used (configuration, data digests, versions, commit) and, once finished, what it
produced (metrics, the knowledge check). The model card (README.md, from model_card.md) is rendered from the
same values, so the two never disagree.
"""

import logging
import os
import subprocess
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData

from .config import CACHE_DIR, SOURCE_TEXTS, recipe
from .data import write_jsonl_atomic
from .files import is_local_path, write_json_atomic, write_text_atomic
from .report import OPEN_BOOK_MEASURES, recall_text

logger = logging.getLogger("train_sft")
PACKAGES = ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "huggingface_hub")
CARD_TEMPLATE = Path(__file__).with_name("model_card.md")
HYPERPARAMETERS = (
    "model_name_or_path", "load_in_8bit", "load_in_4bit", "dtype", "lora_r", "lora_alpha", "lora_dropout",
    "lora_target_modules", "max_length", "num_train_epochs", "max_steps", "per_device_train_batch_size",
    "gradient_accumulation_steps", "learning_rate", "lr_scheduler_type", "warmup_steps", "seed",
)
KIND_DESCRIPTIONS = {
    "recitation": "a question about an article section, answered with the section's own text",
    "synthesized": "a factoid question and answer written by {writers} from a passage, kept only when every key "
                   "term of the answer appears in that passage",
    "cloze": "a fill-in-the-blank sentence from an article",
    "handwritten": "written by hand by the cthulhu-sft project in its own words (not Wikipedia text)",
    "converted": "converted from another file ({sources})",
    None: "no `kind` recorded in the data file",
}


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def package_versions() -> dict:
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return versions


def git_commit(folder: str | Path) -> str | None:
    """The checkout's commit, with "-dirty" when tracked files have uncommitted changes; None outside git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return f"{commit}-dirty" if dirty else commit


def start(output_dir: str, config: dict, data: dict, resumed_from: str | None, code_dir: str) -> dict:
    """Writes run.json with status "running" and returns it."""
    record = {"status": "running", "start_time": now(), "resumed_from": resumed_from,
              "git_commit": git_commit(code_dir), "versions": package_versions(), "data": data, "config": config}
    write_json_atomic(os.path.join(output_dir, "run.json"), record)
    return record


def finish(output_dir: str, record: dict, metrics: dict, knowledge: dict, records: list[dict]) -> None:
    """config.yaml, the model card and run.json (status "finished"), written last so that a finished run.json
    means every other output is in place. A requested publish is recorded as "pending" until hub.push_run records
    its outcome, so that a run stopped during the upload is published by the same command run again."""
    config = record["config"]
    write_named(write_text_atomic, os.path.join(output_dir, "config.yaml"),
                yaml.safe_dump(recipe(config), allow_unicode=True, sort_keys=False))
    write_named(write_text_atomic, os.path.join(output_dir, "README.md"),
                render_card(config, metrics, knowledge, records))
    record.update(status="finished", end_time=now(), metrics=metrics, knowledge_check=knowledge)
    if config.get("push_to_hub"):
        record["publish"] = {"repo_id": config["hub_model_id"], "status": "pending"}
    write_named(write_json_atomic, os.path.join(output_dir, "run.json"), record)


def write_named(write, path: str, value) -> None:
    """write(path, value), whose OSError names `path` (a write that fails, e.g. on a full disk, names no file)."""
    try:
        write(path, value)
    except OSError as error:
        raise OSError(error.errno, error.strerror, error.filename or path) from None


# ---------------------------------------------------------------------------------------------------------------
# After training: the sample prompts and the knowledge check, with the model still loaded


def answer_samples(model, fmt, script_args, output_dir: str) -> list[dict]:
    from .inference import generate

    conversations = [[{"role": "user", "content": prompt}] for prompt in script_args.sample_prompts]
    generations = generate(model, fmt, conversations, temperature=script_args.sample_temperature,
                           top_p=script_args.sample_top_p, repetition_penalty=script_args.sample_repetition_penalty,
                           max_new_tokens=script_args.sample_max_new_tokens, seed=0)
    samples = [{"prompt": prompt, "answer": generation.text, "ended_with_eos": generation.stopped}
               for prompt, generation in zip(script_args.sample_prompts, generations)]
    write_jsonl_atomic(os.path.join(output_dir, "samples.jsonl"), samples)
    return samples


def knowledge_check(model, fmt, files: list[str], limit: int, repetition_penalty: float, output_dir: str,
                    open_book: bool = False) -> dict:
    """Answers the first `limit` rows of each set at temperature 0 with the adapter and with it disabled (PEFT's
    disable_adapter: the base, no second copy in memory), through evaluation.evaluate_model: the pipeline of
    evaluate.py, so that the card's reproduce command (`reproduce_command`) gives the same numbers. The articles'
    text comes from data/source_texts.jsonl and the crawl cache, as evaluate.py reads them by default. With
    `open_book` and data/source_texts.jsonl, each question is also asked open-book (evaluate.py --open_book): the
    closed-book results are each set's `results`, the open-book ones its `open_book_results`, beside its
    retrieval recall.

    A missing or unusable set is reported in its entry, not raised; quiz items whose article names none of their
    accepted answers are left out and counted, as evaluate.py does. Every answer with its grade and scores goes to
    `<output_dir>/knowledge_check.jsonl` (evaluate.py's generations.jsonl lines).
    """
    from .evaluation import (
        Decoding,
        OpenBook,
        article_corpus,
        device_batch_size,
        evaluate_model,
        longest_sequence,
        prepare_set,
        progress_bar,
        read_set,
    )
    from .report import console_table

    started = time.monotonic()
    source_texts = SOURCE_TEXTS if os.path.isfile(SOURCE_TEXTS) else None
    cache_dir = CACHE_DIR if os.path.isdir(CACHE_DIR) else None
    corpus = article_corpus(source_texts, cache_dir)
    books, no_books = None, f"no {SOURCE_TEXTS} to retrieve from"
    if open_book and source_texts:
        from .data import DataError
        from .retrieval import open_retriever

        try:
            books = OpenBook(open_retriever(source_texts))
        except DataError as error:  # e.g. no article with text: the closed-book check still runs
            no_books = str(error)
    entries, sets = [], []
    for path in files:
        entry = {"name": set_name(path), "path": path}
        entries.append(entry)
        try:
            rows = read_set(path) if os.path.isfile(path) else None
        except ValueError as error:
            entry["error"] = f"unreadable: {error}"
            continue
        if rows is None:
            entry["error"] = "file not found"
            continue
        evaluated = prepare_set(entry["name"], path, rows[:limit], corpus)
        entry["excluded_by_quiz_check"] = len(evaluated.checks["wrong"])
        entry["not_taught"] = len(evaluated.checks["not_taught"])
        if not any(row.get("answers") for row in evaluated.scored):
            entry["error"] = "no question with accepted short answers (`answers`)"
            continue
        if books is not None:
            entry["retrieval"] = books.recall(evaluated.scored)
        sets.append(evaluated)
    record = {"status": "done", "temperature": 0, "repetition_penalty": repetition_penalty, "source_texts": source_texts,
              "cache_dir": cache_dir, "articles_with_text": len(corpus.texts), "base_parameters": base_parameters(model),
              "open_book": {"top_k": books.top_k} if books else None, "sets": entries}
    if open_book and not books:
        record["open_book_skipped"] = no_books
    if sets:
        batch_size = device_batch_size(model, longest_sequence(sets, fmt, open_book=books))
        decoding = Decoding(temperatures=[0.0], repetition_penalty=repetition_penalty, batch_size=batch_size)
        logger.info(f"knowledge check: {', '.join(f'{s.name} ({len(s.scored)} questions)' for s in sets)}, each answered "
                    f"by the base and the adapter, {'closed and open book, ' if books else ''}greedy, in batches of "
                    f"{batch_size}")
        answers = 2 * (2 if books else 1) * sum(len(evaluated.scored) for evaluated in sets)
        with progress_bar(answers, "knowledge check") as bar:
            with model.disable_adapter():
                base = evaluate_model(model, fmt, "base", sets, decoding, corpus, progress=bar, losses=False,
                                      open_book=books)
            adapter = evaluate_model(model, fmt, "adapter", sets, decoding, corpus, progress=bar, losses=False,
                                     open_book=books)
        by_set = {(result["model"], result["set"], result["book"]): result
                  for result in base["results"] + adapter["results"]}
        for entry in entries:
            if "error" not in entry:
                entry["results"] = {label: _without_set(by_set[(label, entry["name"], "closed")])
                                    for label in ("base", "adapter")}
                if books:
                    entry["open_book_results"] = {label: _without_set(by_set[(label, entry["name"], "open")])
                                                  for label in ("base", "adapter")}
                entry["max_new_tokens"] = adapter["max_new_tokens"].get(entry["name"])
        record["batch_size"] = batch_size
        write_jsonl_atomic(os.path.join(output_dir, "knowledge_check.jsonl"), base["generations"] + adapter["generations"])
        logger.info("knowledge check (temperature 0):\n" + console_table(base["results"] + adapter["results"]))
    record["seconds"] = round(time.monotonic() - started, 1)
    logger.info(f"knowledge check done in {record['seconds']:.0f}s")
    return record


def _without_set(result: dict) -> dict:
    return {key: value for key, value in result.items() if key not in ("set", "model", "book", "temperature")}


def base_parameters(model) -> int | None:
    """The base model's parameter count (a tiny test model is named as such in the card)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return int(base.num_parameters())
    except (AttributeError, TypeError):
        return None


def set_name(path: str) -> str:
    """evaluate.py's name for a default set's file (known, unseen, quiz), else the file's stem."""
    from .evaluation import DEFAULT_SETS

    return next((name for name, default in DEFAULT_SETS.items() if Path(default).name == Path(path).name), Path(path).stem)


def after_training(model, fmt, script_args, output_dir) -> dict:
    """The sample answers, then the knowledge check; returns the check's record. Neither may lose the saved run:
    a failure is reported, and the exit status stays the training's."""
    from .training import sharded_with_fsdp

    if sharded_with_fsdp():  # a sharded model cannot generate on one process
        logger.info("samples and knowledge check skipped under FSDP: run generate.py / evaluate.py on the adapter")
        return {"status": "skipped", "reason": "the model was sharded with FSDP"}
    try:  # the adapter is saved: a failure here is reported, never fatal
        if script_args.sample_prompts:
            for sample in answer_samples(model, fmt, script_args, output_dir):
                stop = "</s>" if sample["ended_with_eos"] else "(max_new_tokens reached)"
                logger.info(f"\n[INST] {sample['prompt']} [/INST]\n{sample['answer']} {stop}")
    except Exception as error:
        logger.warning(f"the sample answers failed: {type(error).__name__}: {error}")
    if not script_args.knowledge_check:
        return {"status": "skipped", "reason": "knowledge_check is false"}
    try:
        check = knowledge_check(model, fmt, script_args.knowledge_check_files, script_args.knowledge_check_limit,
                                script_args.sample_repetition_penalty, output_dir,
                                open_book=script_args.knowledge_check_open_book)
    except Exception as error:
        logger.warning(f"knowledge check failed: {type(error).__name__}: {error}")
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"}
    return check | {"limit": script_args.knowledge_check_limit}


# ---------------------------------------------------------------------------------------------------------------
# The model card


def render_card(config: dict, metrics: dict, knowledge: dict, records: list[dict]) -> str:
    from .inference import decoding_options

    base_id = config.get("base_model_hub_id") or (None if is_local_path(config["model_name_or_path"])
                                                  else config["model_name_or_path"])
    base = base_id or config["model_name_or_path"]
    repo_id = config.get("hub_model_id")
    provenance = data_provenance(records)
    card_data = ModelCardData(
        base_model=base_id, library_name="peft", license=config["license"], language=["ja"],
        datasets=config.get("card_datasets") or None, pipeline_tag="text-generation",
        tags=["lora", "sft", "trl", "mistral", "cthulhu-mythos", "japanese"],
    )
    decoding = decoding_options(config["sample_temperature"], config["sample_top_p"], config["sample_repetition_penalty"])
    card = ModelCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        name=repo_id or "cthulhu-sft adapter",
        base=base,
        base_link=f"[{base}](https://huggingface.co/{base})" if base_id else f"`{base}`",
        repo_or_path=repo_id or config["output_dir"],
        max_new_tokens=config["sample_max_new_tokens"],
        decoding=", ".join(f"{key}={value}" for key, value in decoding.items()),
        metrics=metric_rows(metrics, config),
        hyperparameters=hyperparameter_rows(config),
        knowledge=knowledge_view(knowledge, config),
        load_flag=" --load_in_8bit" if config.get("load_in_8bit") else " --load_in_4bit" if config.get("load_in_4bit") else "",
        license=config["license"],
        **provenance,
    )
    return card.content


def metric_rows(metrics: dict, config: dict) -> list[dict]:
    """The losses (4 decimals), the training time and the epochs trained; run.json has every metric."""
    rows = []
    for name in sorted(metrics):
        value = metrics[name]
        if name.endswith("loss") and isinstance(value, (int, float)):
            rows.append({"name": name, "value": f"{value:.4f}"})
        elif name == "train_runtime":
            rows.append({"name": "training time (s)", "value": f"{value:.1f}"})
        elif name == "epoch":
            rows.append({"name": "epochs trained (passes over the training data)" + (
                f", set by max_steps {config['max_steps']}" if length_set_by_max_steps(config) else ""),
                "value": f"{value:.2f}"})
    return rows


def length_set_by_max_steps(config: dict) -> bool:
    """The Trainer trains max_steps steps when it is positive, whatever num_train_epochs says."""
    return (config.get("max_steps") or -1) > 0


def hyperparameter_rows(config: dict) -> list[tuple]:
    """HYPERPARAMETERS as set; of num_train_epochs and max_steps only the one that set the run's length."""
    unused = "num_train_epochs" if length_set_by_max_steps(config) else "max_steps"
    return [(key, config[key]) for key in HYPERPARAMETERS if key in config and key != unused]


def data_provenance(records: list[dict]) -> dict:
    """What the card says about the training data: examples per kind, Wikipedia sources, other sources."""
    counts, writers, converted, wikipedia, others = {}, set(), set(), {}, set()
    for record in records:
        kind = record.get("kind")
        counts[kind] = counts.get(kind, 0) + 1
        if record.get("writer"):
            writers.add(str(record["writer"]))
        source = record.get("source")
        if kind == "converted" and source:
            converted.add(str(source).rsplit(":", 1)[0])
        elif source and "wikipedia.org" in str(source) and (kind in ("recitation", "synthesized", "cloze")
                                                            or (kind is None and record.get("revid"))):
            wikipedia.setdefault(source, {"title": record.get("title") or source, "source": source,
                                          "revid": record.get("revid")})
        elif source and kind != "handwritten":
            others.add(str(source))  # e.g. a Wikipedia URL cited by a pair with no revision: not its text
    kinds = [{"name": kind or "(unknown)", "count": count,
              "description": KIND_DESCRIPTIONS.get(kind, KIND_DESCRIPTIONS[None]).format(
                  writers=", ".join(sorted(writers)) or "a model", sources=", ".join(sorted(converted)))}
             for kind, count in sorted(counts.items(), key=lambda item: -item[1])]
    origin_ja = "日本語 Wikipedia の記事から作った質問応答" if wikipedia else "下記のデータ（Wikipedia の文章ではありません）"
    origin_en = "built from Japanese Wikipedia articles" if wikipedia else "not built from Wikipedia: see the data section"
    if writers:
        origin_en += f"; part of the pairs were written by {', '.join(sorted(writers))}"
    return {"examples": len(records), "kinds": kinds, "wikipedia_sources": list(wikipedia.values()),
            "any_revision": any(source["revid"] for source in wikipedia.values()),
            "other_sources": sorted(others), "data_origin_ja": origin_ja, "data_origin_en": origin_en}


TINY_MODEL_PARAMETERS = 100_000_000  # below this a base is a test model: its numbers say nothing about knowledge
QUALIFIERS = (("not_attempted_rate", "not attempted"), ("empty_rate", "empty"), ("non_japanese_rate", "not in Japanese"),
              ("truncated_rate", "cut at max_new_tokens"))


def knowledge_view(knowledge: dict, config: dict | None = None) -> dict:
    """The knowledge check as the card's tables show it: per set and model the grades with the interval, the
    hallucination rate and what qualifies them (not attempted, empty, non-Japanese, truncated); notes on the base
    (a local folder, a tiny test model) and on the support texts; the reproduce command."""
    if knowledge.get("status") != "done":
        return knowledge
    config = config or {}
    view = {"status": "done", "sets": [], "notes": base_notes(knowledge, config),
            "open_book": bool(knowledge.get("open_book"))}
    for entry in knowledge["sets"]:
        card_set = {"name": entry["name"], "path": entry["path"], "error": entry.get("error"), "rows": [], "notes": [],
                    "open_rows": [], "retrieval": None}
        for label, result in entry.get("results", {}).items():
            books = [("closed", result)] + ([("open", entry["open_book_results"][label])]
                                            if "open_book_results" in entry else [])
            for book, measured in books:
                card_set["rows"].append(card_row(label, book, measured))
                note = qualifier_note(label + (" (open book)" if book == "open" else ""), measured)
                if note:
                    card_set["notes"].append(note)
            if "open_book_results" in entry:
                card_set["open_rows"].append({"model": label, **{key: percent(entry["open_book_results"][label][key])
                                                                 for key, _, _ in OPEN_BOOK_MEASURES}})
        if entry.get("retrieval"):
            card_set["retrieval"] = recall_text(entry["retrieval"])
        if entry.get("excluded_by_quiz_check"):
            card_set["notes"].append(f"{entry['excluded_by_quiz_check']} question(s) left out: the crawled text of their "
                                     "article names none of their accepted answers.")
        if entry.get("not_taught"):
            card_set["notes"].append(f"{entry['not_taught']} question(s) not taught by this data: no crawled article "
                                     "names their answer.")
        view["sets"].append(card_set)
    if not any(card_set["rows"] for card_set in view["sets"]):
        return {"status": "skipped", "reason": "none of the knowledge_check_files could be used (" + "; ".join(
            f"{s['path']}: {s['error']}" for s in view["sets"]) + ")" if view["sets"] else
            "no knowledge_check_files were given"}
    view["reproduce"] = reproduce_command(knowledge, config)
    return view


def qualifier_note(label: str, result: dict) -> str | None:
    """What qualifies a row's numbers (not attempted, empty, non-Japanese, truncated answers), if anything does."""
    qualifiers = [f"{percent(result[key])} {what}" for key, what in QUALIFIERS if result.get(key)]
    if not qualifiers:
        return None
    few = (result.get("non_japanese_rate") or 0) >= 0.5 or (result.get("truncated_rate") or 0) >= 0.5
    return f"{label}: {', '.join(qualifiers)} of its answers" + (
        " — its accuracy and hallucination rate describe few real answers." if few else ".")


def card_row(label: str, book: str, result: dict) -> dict:
    """One line of a set's table on the card."""
    low, high = result["accuracy_ci"] or (None, None)
    return {
        "model": label, "book": book, "n": result["n"], "accuracy": percent(result["accuracy"]),
        "interval": f"{percent(low)}–{percent(high)}" if low is not None else "–",
        "incorrect_rate": percent(result["incorrect_rate"]), "not_attempted_rate": percent(result["not_attempted_rate"]),
        "hallucination_rate": percent(result["hallucination_rate"]), "empty": result["empty"],
        "non_japanese_rate": percent(result["non_japanese_rate"]), "truncated_rate": percent(result["truncated_rate"]),
    }


def base_notes(knowledge: dict, config: dict) -> list[str]:
    """What the reader must know about the base and the support texts to read the numbers."""
    notes = []
    base = config.get("model_name_or_path")
    parameters = knowledge.get("base_parameters")
    if parameters is not None and parameters < TINY_MODEL_PARAMETERS:
        notes.append(f"The base is a tiny test model ({parameters:,} parameters), not a language model that knows "
                     "anything: these numbers only show that the pipeline ran.")
    if base and is_local_path(base):
        hub_id = config.get("base_model_hub_id")
        notes.append(f"The base was loaded from the local folder `{base}`" + (
            f" (named {hub_id} in the metadata)." if hub_id else ", not from the Hub."))
    if not knowledge.get("articles_with_text"):
        notes.append(f"No article text was available ({SOURCE_TEXTS}, {CACHE_DIR}/): hallucination was checked against "
                     "the question and the reference answer only, and the quiz's answers were not checked.")
    if knowledge.get("open_book_skipped"):
        notes.append(f"Not asked open-book: {knowledge['open_book_skipped']}.")
    return notes


def reproduce_command(knowledge: dict, config: dict) -> str:
    """The evaluate.py command that gives the card's numbers: same model loading, sets, rows, batches, greedy."""
    import shlex

    published = config.get("push_to_hub") and config.get("hub_model_id")
    adapter = published or config.get("output_dir") or "OUTPUT_DIR"
    parts = ["python", "evaluate.py", "--models", "base", f"adapter={adapter}"]
    if config.get("model_name_or_path"):
        parts += ["--base_model", config["model_name_or_path"]]
    if config.get("model_revision") not in (None, "main"):
        parts += ["--revision", config["model_revision"]]
    if config.get("load_in_8bit"):
        parts.append("--load_in_8bit")
    elif config.get("load_in_4bit"):
        parts.append("--load_in_4bit")
    if config.get("dtype") not in (None, "auto"):
        parts += ["--dtype", str(config["dtype"])]
    parts += ["--temperatures", "0", "--repetition_penalty", str(knowledge["repetition_penalty"]),
              "--batch_size", str(knowledge["batch_size"])]
    if knowledge.get("limit"):
        parts += ["--limit", str(knowledge["limit"])]
    parts += ["--source_texts", knowledge.get("source_texts") or "", "--cache_dir", knowledge.get("cache_dir") or ""]
    if knowledge.get("open_book"):
        parts += ["--open_book", "--top_k", str(knowledge["open_book"]["top_k"])]
    parts += ["--sets", *(f"{entry['name']}={entry['path']}" for entry in knowledge["sets"] if "results" in entry)]
    return " ".join(shlex.quote(part) for part in parts)


def percent(value) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"
