"""Measure how well models answer held-out questions, and how much they make up, over a temperature sweep.

For each model (the base alone, base + adapter, several adapters, a merged model) on data/eval.jsonl (split
by article, so its articles were never trained on):
  1. loss and perplexity of the reference answers (answer tokens and the closing </s>, as in training);
  2. answers generated at each --temperatures value, scored against the references: character ROUGE-L F1,
     fact recall (reference key terms found in the answer) and the unsupported-term rate (answer key terms
     found neither in the reference nor in the source article: our hallucination measure);
  3. the EOS-stop rate: the share of answers that ended with </s> before --max_new_tokens.
Key terms (katakana names, Latin words, numbers) and the measures are defined in cthulhu_sft/metrics.py.

    # base alone vs base + adapter, the default sweep 0 / 0.3 / 0.7 / 1.0
    python evaluate.py --models base tuned=output/cthulhu-mistral --load_in_8bit
    # two adapters on the first 50 questions, with the articles' text for the unsupported-term rate
    python evaluate.py --models r8=output/r8 r16=output/r16 --limit 50 --source_texts data/source_texts.jsonl

Writes to --output_dir: report.json (configuration and numbers), report.md (a table), report.png (a chart
of each measure by temperature and model) and generations.jsonl (every answer with its scores).
"""

import argparse
import gc
import math
import os
import sys
from pathlib import Path

from cthulhu_sft.data import DataError, load_items, load_records, write_jsonl_atomic
from cthulhu_sft.files import write_json_atomic, write_text_atomic
from cthulhu_sft.inference import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_SEED,
    DEFAULT_TOP_P,
    DTYPES,
    model_location_problem,
)

DEFAULT_TEMPERATURES = [0.0, 0.3, 0.7, 1.0]
# (report key, column title, whether higher is better)
MEASURES = [
    ("rouge_l_f1", "ROUGE-L F1 (char)", True),
    ("fact_recall", "fact recall", True),
    ("unsupported_term_rate", "unsupported-term rate", False),
    ("eos_stop_rate", "EOS-stop rate", True),
]


def parse_model_spec(spec: str) -> dict:
    """'base', 'PATH_OR_HUB_ID' or 'LABEL=PATH_OR_HUB_ID' -> {'label', 'path'} (path None for the base alone)."""
    label, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
    if path == "base":
        return {"label": label or "base", "path": None}
    return {"label": label or path.rstrip("/").split("/")[-1], "path": path}


def read_source_texts(path: str) -> dict[str, str]:
    """JSONL of {"title": ..., "text": ...} -> {title: text}; texts of a repeated title are joined."""
    texts = {}
    for item in load_items(path, _to_source_text):
        texts[item["title"]] = texts[item["title"]] + "\n" + item["text"] if item["title"] in texts else item["text"]
    return texts


def _to_source_text(item) -> tuple[dict | None, str | None]:
    if not isinstance(item, dict):
        return None, f"expected a JSON object, got {type(item).__name__}"
    for field in ("title", "text"):
        if not isinstance(item.get(field), str):
            return None, f"field '{field}': missing or not a string"
    return item, None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, metavar="SPEC",
                        help="'base' (the base model alone), or an adapter / merged model folder or Hub id, "
                             "optionally labelled: tuned=output/cthulhu-mistral")
    parser.add_argument("--base_model", help="base of 'base' and of the adapters (default: the first adapter's "
                        "recorded base, else sft_config.yaml's model_name_or_path)")
    parser.add_argument("--eval_file", default="data/eval.jsonl", help="held-out instruction/response JSONL")
    parser.add_argument("--source_texts", help="JSONL of {'title', 'text'}: the source articles (default: "
                        "source_texts.jsonl beside --eval_file, as prepare_data.py writes it, if present); records "
                        "whose title is missing here are checked against their reference only")
    parser.add_argument("--limit", "--num_samples", dest="limit", type=int, help="evaluate the first N records")
    parser.add_argument("--temperatures", nargs="+", type=float, default=DEFAULT_TEMPERATURES, help="0 means greedy")
    parser.add_argument("--top_p", type=float, default=DEFAULT_TOP_P)
    parser.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    parser.add_argument("--repetition_penalty", type=float, default=DEFAULT_REPETITION_PENALTY)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="each model and temperature starts from it")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--output_dir", default="output/eval")
    parser.add_argument("--load_in_8bit", action="store_true")
    parser.add_argument("--load_in_4bit", action="store_true")
    parser.add_argument("--dtype", default="auto", choices=list(DTYPES))
    parser.add_argument("--revision", help="revision of --base_model on the Hub")
    parser.add_argument("--trust_remote_code", action="store_true")
    args = parser.parse_args(argv)

    # Everything that can be checked without a model is checked here, before minutes of loading.
    if args.load_in_8bit and args.load_in_4bit:
        parser.error("give --load_in_8bit or --load_in_4bit, not both")
    if any(t < 0 for t in args.temperatures) or len(set(args.temperatures)) != len(args.temperatures):
        parser.error("--temperatures must be distinct and >= 0")
    if not 0 < args.top_p <= 1 or min(args.max_new_tokens, args.batch_size, 1 if args.limit is None else args.limit) < 1:
        parser.error("need 0 < --top_p <= 1, --max_new_tokens >= 1, --batch_size >= 1, --limit >= 1")
    args.specs = [parse_model_spec(spec) for spec in args.models]
    labels = [spec["label"] for spec in args.specs]
    if len(set(labels)) != len(labels):
        parser.error(f"--models: labels must be distinct, got {labels}; name them: label=path")
    for spec in args.specs:
        problem = spec["path"] and model_location_problem(spec["path"], f"--models {spec['label']}")
        if problem:
            parser.error(problem)
    if args.base_model and (problem := model_location_problem(args.base_model, "--base_model")):
        parser.error(problem)
    if args.source_texts is None:
        beside = Path(args.eval_file).with_name("source_texts.jsonl")
        args.source_texts = str(beside) if beside.is_file() else None
    try:
        args.records = load_records(args.eval_file)[: args.limit]
        args.sources = read_source_texts(args.source_texts) if args.source_texts else {}
    except DataError as error:
        parser.error(str(error))
    return args


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


def fmt_number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def markdown_report(report: dict) -> str:
    config = report["config"]
    lines = [
        "# Evaluation",
        "",
        f"{config['records']} held-out questions from `{config['eval_file']}` "
        f"({config['records_with_source']} with their source article's text); "
        f"top_p {config['top_p']}, repetition_penalty {config['repetition_penalty']}, "
        f"max_new_tokens {config['max_new_tokens']}, seed {config['seed']}.",
        "",
        "| model | temperature | loss | perplexity | "
        + " | ".join(f"{title} {'↑' if up else '↓'}" for _, title, up in MEASURES)
        + " | mean new tokens |",
        "|---|---:|---:|---:|" + "---:|" * len(MEASURES) + "---:|",
    ]
    for model in report["models"]:
        for run in model["runs"]:
            cells = [model["label"], f"{run['temperature']:g}"]
            cells += [fmt_number(model["loss"]), fmt_number(model["perplexity"], 2)]
            cells += [fmt_number(run[key]) for key, _, _ in MEASURES] + [f"{run['mean_new_tokens']:.1f}"]
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Temperature 0 is greedy decoding. Loss and perplexity are of the reference answers (they do not depend on "
        "the temperature). ROUGE-L is over characters; fact recall is the share of the references' key terms "
        "(katakana names, Latin words, numbers) found in the answers; the unsupported-term rate is the share of the "
        "answers' key terms found neither in the reference nor in the source article; the EOS-stop rate is the share "
        "of answers that ended with </s> before max_new_tokens. Definitions: cthulhu_sft/metrics.py.",
        "",
    ]
    return "\n".join(lines)


def plot_report(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(MEASURES), figsize=(4.2 * len(MEASURES), 3.8), squeeze=False)
    for axis, (key, title, up) in zip(axes[0], MEASURES):
        for model in report["models"]:
            points = [(run["temperature"], run[key]) for run in model["runs"] if run[key] is not None]
            label = f"{model['label']} (ppl {fmt_number(model['perplexity'], 1)})"
            axis.plot([t for t, _ in points], [v for _, v in points], marker="o", label=label)
        axis.set_title(f"{title} ({'higher' if up else 'lower'} is better)", fontsize=10)
        axis.set_xlabel("temperature")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    config = report["config"]
    figure.suptitle(f"{config['records']} held-out questions, max_new_tokens {config['max_new_tokens']}")
    figure.tight_layout()
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png", dpi=110)
    os.replace(temporary, path)
    plt.close(figure)


def main(args) -> None:
    import torch
    from tqdm.auto import tqdm

    from cthulhu_sft.inference import answer_losses, generate, load_format, load_model, resolve_base
    from cthulhu_sft.metrics import score, summarize

    records = args.records
    conversations = [[{"role": "user", "content": record["instruction"]}] for record in records]
    source_texts = [args.sources.get(record.get("title"), "") for record in records]
    output_dir = Path(args.output_dir)

    # 1. Resolve what each model spec is: the base alone, base + adapter, or a full (merged) model.
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

    # 2. Per model: load once, loss of the references, then answers at each temperature.
    report = {
        "config": {
            "eval_file": args.eval_file, "records": len(records), "source_texts": args.source_texts,
            "records_with_source": sum(bool(text) for text in source_texts), "temperatures": args.temperatures,
            "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, "repetition_penalty": args.repetition_penalty,
            "seed": args.seed, "load_in_8bit": args.load_in_8bit, "load_in_4bit": args.load_in_4bit,
            "dtype": args.dtype, "batch_size": args.batch_size,
        },
        "models": [],
    }
    generations = []
    total = len(args.specs) * len(records) * (1 + len(args.temperatures))
    with tqdm(total=total, desc="evaluating", unit="example", file=sys.stderr) as bar:
        for spec in args.specs:
            bar.set_description(f"{spec['label']}: loading")
            fmt = load_format(spec["base"], spec["adapter"], spec["revision"])
            model = load_model(
                spec["base"], spec["adapter"], load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit,
                dtype=args.dtype, trust_remote_code=args.trust_remote_code, revision=spec["revision"],
            )
            bar.set_description(f"{spec['label']}: loss")
            pairs = [(record["instruction"], record["response"]) for record in records]
            losses = answer_losses(model, fmt, pairs, batch_size=args.batch_size, progress=bar)
            answer_tokens = sum(n for _, n in losses)
            loss = sum(nll for nll, _ in losses) / answer_tokens
            entry = {
                "label": spec["label"], "base_model": spec["base"], "adapter": spec["adapter"],
                "loss": loss, "perplexity": math.exp(loss), "answer_tokens": answer_tokens, "runs": [],
            }
            for temperature in args.temperatures:
                bar.set_description(f"{spec['label']}: T={temperature:g}")
                answers = generate(
                    model, fmt, conversations, temperature=temperature, top_p=args.top_p,
                    max_new_tokens=args.max_new_tokens, repetition_penalty=args.repetition_penalty, seed=args.seed,
                    batch_size=args.batch_size, progress=bar,
                )
                scores = [score(a.text, r["response"], src) for a, r, src in zip(answers, records, source_texts)]
                entry["runs"].append({
                    "temperature": temperature,
                    **summarize(scores, [a.stopped for a in answers]),
                    "mean_new_tokens": sum(len(a.token_ids) for a in answers) / len(answers),
                })
                for record, answer, scored, (nll, n) in zip(records, answers, scores, losses):
                    generations.append({
                        "model": spec["label"], "temperature": temperature, "line": record["line"],
                        "title": record.get("title"), "instruction": record["instruction"],
                        "reference": record["response"], "answer": answer.text, "stopped": answer.stopped,
                        "new_tokens": len(answer.token_ids), "reference_loss": nll / n, **scored,
                    })
            report["models"].append(entry)
            # Written after every model, so that a failure in a later one keeps what was measured so far
            write_json_atomic(output_dir / "report.json", report)
            write_jsonl_atomic(output_dir / "generations.jsonl", generations)
            del model
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    # 3. The table and the chart (report.json and generations.jsonl are already written).
    markdown = markdown_report(report)
    write_text_atomic(output_dir / "report.md", markdown)
    plot_report(report, output_dir / "report.png")
    print(markdown)
    print(f"Wrote report.json, report.md, report.png and generations.jsonl to {output_dir}", file=sys.stderr)


if __name__ == "__main__":
    main(parse_args())
