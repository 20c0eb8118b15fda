"""Knowledge evaluation: question sets, one answer's scores, their aggregation with intervals, and the report.

A set is a JSONL file of rows {"instruction", "response", optional "answers" (accepted short forms), "title"
(the ja.wikipedia article that states the fact), "kind" (the quiz's person / work / year / place / being / book /
other, or the data's recitation / synthesized / cloze ...)}; adding a set needs no code. The shipped sets:
    known   data/eval_known.jsonl              held-out questions about facts of trained articles
    unseen  data/eval.jsonl                    questions about never-trained articles
    quiz    data/quiz/cthulhu_quiz_ja.jsonl    curated short-answer questions on well-known facts

One answer (`score_item`), from the per-answer measures of cthulhu_sft/metrics.py:
    correct         rows with `answers` only (else None): the answer contains an accepted form and, that form left
                    out, is in Japanese ("De Vermis Mysteriisです。" is correct, an English sentence is not).
    abstained       the answer says it does not know (metrics.is_abstention), and neither contains an accepted
                    form nor states an unsupported term: a hedge followed by a guess is scored as an answer.
    japanese        metrics.is_japanese. An answer not in Japanese is not correct, and its Latin words are not
                    counted as claims (metrics.claimed_terms).
    unsupported_terms
                    the answer's claimed key terms that neither the question, nor the reference answer, nor the
                    source article's text (when known) supports.
    hallucinated    at least one unsupported term.
    truncated       the answer was cut at max_new_tokens (did not end with </s>); None when unknown (answers
                    made elsewhere).
    rouge_l_f1, fact_recall, and the term counts that `aggregate` pools.

Over a set (`aggregate`), for one model and temperature:
    accuracy              correct / rows with `answers` (abstentions count as not correct), with its 95 % Wilson
                          interval `accuracy_ci`, so that a difference between models is read against its noise;
    rouge_l_f1            mean over answers;
    fact_recall           pooled: recalled reference terms / reference terms;
    hallucination_rate    share of the non-abstaining answers that state at least one unsupported term: every
                          answer weighs the same, and one that states no checkable term counts as clean;
    unsupported_term_rate pooled over the non-abstaining answers: unsupported terms / claimed terms;
    abstention_rate, non_japanese_rate, eos_stop_rate, truncated_rate: shares of the answers.
A measure that does not apply is None (null): accuracy without `answers`, fact recall without reference terms,
the stop rates of answers made elsewhere.

Quiz items are facts written from memory. `quiz_problems` lists the rows whose accepted answers appear nowhere in
the crawled text of their titled article (`data/source_texts.jsonl`, or prepare_data.py's page cache); evaluate.py
leaves them out of the score and counts them in the report. A row whose article text is not available is
unchecked, not a problem.
"""

import json
import math
import os
import re
from pathlib import Path

from . import metrics
from .data import DataError, load_items, load_records
from .files import write_json_atomic, write_text_atomic

DEFAULT_SETS = {
    "known": "data/eval_known.jsonl",
    "unseen": "data/eval.jsonl",
    "quiz": "data/quiz/cthulhu_quiz_ja.jsonl",
}
# Room beyond the longest reference answer: a model's paraphrase may be longer than the reference.
MAX_NEW_TOKENS_MARGIN = 1.25
MAX_NEW_TOKENS_SLACK = 16
# (report key, column title, whether higher is better); None: neither (abstaining is right when the model
# does not know, wrong when it does)
MEASURES = [
    ("accuracy", "accuracy", True),
    ("hallucination_rate", "hallucination", False),
    ("unsupported_term_rate", "unsupported terms", False),
    ("abstention_rate", "abstention", None),
    ("non_japanese_rate", "non-Japanese", False),
    ("rouge_l_f1", "ROUGE-L F1", True),
    ("fact_recall", "fact recall", True),
    ("eos_stop_rate", "EOS stop", True),
    ("truncated_rate", "truncated", False),
]


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a proportion (95 % for z = 1.96); (0.0, 1.0) when n is 0.

    Unlike the normal approximation it stays inside [0, 1] and is not empty at 0 or n successes.
    """
    if not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------------------------------------
# Sets, source texts, answers made elsewhere


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
    texts: dict[str, str] = {}
    for item in load_items(path, _to_source_text):
        if item["text"]:
            texts[item["title"]] = f"{texts[item['title']]}\n{item['text']}" if item["title"] in texts else item["text"]
    return texts


def _to_source_text(item) -> tuple[dict | None, str | None]:
    if not isinstance(item, dict):
        return None, f"expected a JSON object, got {type(item).__name__}"
    if not isinstance(item.get("title"), str):
        return None, "field 'title': missing or not a string"
    if not isinstance(item.get("text"), str | None):
        return None, "field 'text': not a string"
    return {"title": item["title"], "text": item.get("text") or ""}, None


def cached_source_texts(cache_dir: str | os.PathLike) -> dict[str, str]:
    """{title: text} of the pages in prepare_data.py's crawl cache, `<cache_dir>/<site>/pages/*.json`.

    Pages without text and unreadable files are skipped. A redirect file {"key": asked title, "redirect": target}
    makes the asked title another name of its target's text, so a quiz row may name either.
    """
    texts, redirects = {}, {}
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
            texts[page["title"]] = page["text"]
    for title, target in redirects.items():
        if isinstance(title, str) and target in texts:
            texts.setdefault(title, texts[target])
    return texts


def article_texts(source_texts: str | None, cache_dir: str | None) -> dict[str, str]:
    """{title: text} of the crawled articles: the pages of prepare_data.py's cache (`cache_dir`, pages under
    wiki/), then source_texts.jsonl over them; either may be None."""
    pages = os.path.join(cache_dir, "wiki") if cache_dir else None
    texts = cached_source_texts(pages) if pages and os.path.isdir(pages) else {}
    return texts | (read_source_texts(source_texts) if source_texts else {})


def quiz_problems(rows: list[dict], texts: dict[str, str]) -> list[dict]:
    """The rows (as given) whose accepted answers appear nowhere in the text of their titled article.

    Rows without `answers`, and rows whose article text is not in `texts` (unchecked), are not problems.
    "Appear" is metrics.answer_is_correct on the article's text: the same normalisation as the scoring.
    """
    return [row for row in rows if has_source_text(row, texts) and not metrics.answer_is_correct(texts[row["title"]], row["answers"])]


def has_source_text(row: dict, texts: dict[str, str]) -> bool:
    """Whether a row with accepted answers can be checked: its titled article's text is known."""
    return bool(row.get("answers")) and bool(texts.get(row.get("title") or ""))


def read_answers(path: str | os.PathLike) -> list[dict]:
    """Answers made elsewhere: JSONL of {"set", "instruction", "answer"} (other fields ignored)."""
    return load_items(path, _to_answer)


def _to_answer(item) -> tuple[dict | None, str | None]:
    if not isinstance(item, dict):
        return None, f"expected a JSON object, got {type(item).__name__}"
    for field in ("set", "instruction"):
        if not isinstance(item.get(field), str) or not item[field].strip():
            return None, f"field '{field}': missing, empty or not a string"
    if not isinstance(item.get("answer"), str):
        return None, "field 'answer': missing or not a string"
    return {"set": item["set"].strip(), "instruction": item["instruction"], "answer": item["answer"]}, None


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


def default_max_new_tokens(rows: list[dict], fmt) -> int:
    """The longest reference answer of the rows in tokens (MistralFormat), times 1.25, plus 16."""
    longest = max(len(fmt.encode_text(row["response"])) for row in rows)
    return int(longest * MAX_NEW_TOKENS_MARGIN) + MAX_NEW_TOKENS_SLACK


# ---------------------------------------------------------------------------------------------------
# Scores


def score_item(row: dict, answer: str, stopped: bool | None, source_text: str = "") -> dict:
    """One answer's scores against its set row (see the module docstring); `stopped` None when unknown."""
    reference = row["response"]
    accepted = row.get("answers")
    japanese = metrics.is_japanese(answer)
    claims = metrics.claimed_terms(answer)
    unsupported = sorted(metrics.unsupported_terms(answer, row["instruction"], reference, source_text) & claims)
    contains = bool(accepted) and metrics.answer_is_correct(answer, accepted)
    reference_terms = metrics.key_terms(reference)
    return {
        # a Latin accepted form (De Vermis Mysteriis) does not make the answer around it non-Japanese
        "correct": (contains and metrics.is_japanese(without_forms(answer, accepted))) if accepted else None,
        "abstained": metrics.is_abstention(answer) and not contains and not unsupported,
        "japanese": japanese,
        "unsupported_terms": unsupported,
        "hallucinated": bool(unsupported),
        "stopped": stopped,
        "truncated": None if stopped is None else not stopped,
        "rouge_l_f1": metrics.rouge_l_f1(answer, reference),
        "fact_recall": metrics.fact_recall(answer, reference),
        "reference_terms": len(reference_terms),
        "recalled_terms": len(reference_terms & metrics.key_terms(answer)),
        "claimed_terms": len(claims),
    }


def without_forms(answer: str, accepted: list[str]) -> str:
    """The answer with the accepted forms it spells out removed (case-insensitively)."""
    for form in sorted(accepted, key=len, reverse=True):
        answer = re.sub(re.escape(form), "", answer, flags=re.I)
    return answer


def aggregate(items: list[dict]) -> dict:
    """The report's measures over `score_item` results (see the module docstring)."""
    graded = [item["correct"] for item in items if item["correct"] is not None]
    answering = [item for item in items if not item["abstained"]]
    reference_terms = sum(item["reference_terms"] for item in items)
    claimed = sum(item["claimed_terms"] for item in answering)
    stops = [item["stopped"] for item in items if item["stopped"] is not None]
    return {
        "n": len(items),
        "accuracy": _share(graded),
        "accuracy_ci": list(wilson_interval(sum(graded), len(graded))) if graded else None,
        "rouge_l_f1": sum(item["rouge_l_f1"] for item in items) / len(items) if items else None,
        "fact_recall": sum(item["recalled_terms"] for item in items) / reference_terms if reference_terms else None,
        "hallucination_rate": _share([item["hallucinated"] for item in answering]),
        "unsupported_term_rate": sum(len(item["unsupported_terms"]) for item in answering) / claimed if claimed else None,
        "abstention_rate": _share([item["abstained"] for item in items]),
        "non_japanese_rate": _share([not item["japanese"] for item in items]),
        "eos_stop_rate": _share(stops),
        "truncated_rate": _share([not stopped for stopped in stops]),
    }


def _share(flags: list[bool]) -> float | None:
    return sum(map(bool, flags)) / len(flags) if flags else None


def answer_losses(model, fmt, pairs: list[tuple[str, str]], batch_size: int = 8, progress=None) -> list[tuple[float, int]]:
    """Summed negative log-likelihood (nats) and token count of each reference answer, as in training.

    The loss covers the answer's tokens and its closing </s> (the labels of `fmt.encode_example`). Returns
    [(nll_sum, n_tokens), ...] in the input order; `progress` (a tqdm bar) advances by each batch's size.
    """
    import torch

    from .format import IGNORE_INDEX

    examples = [fmt.encode_example(instruction, response) for instruction, response in pairs]
    order = sorted(range(len(examples)), key=lambda index: -len(examples[index].input_ids))  # longest first: OOM early
    results: list[tuple[float, int] | None] = [None] * len(examples)
    device = model.get_input_embeddings().weight.device
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                batch = [examples[index] for index in order[start : start + batch_size]]
                width = max(len(example.input_ids) for example in batch)
                input_ids = torch.full((len(batch), width), fmt.eos_id, dtype=torch.long)
                labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
                attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, example in enumerate(batch):
                    input_ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
                    labels[row, : len(example.labels)] = torch.tensor(example.labels)
                    attention_mask[row, : len(example.input_ids)] = 1
                logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
                targets = labels[:, 1:].to(logits.device)
                nll = torch.nn.functional.cross_entropy(
                    logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
                )
                for row, index in enumerate(order[start : start + batch_size]):
                    mask = targets[row] != IGNORE_INDEX
                    results[index] = (float(nll[row][mask].sum()), int(mask.sum()))
                if progress is not None:
                    progress.update(len(batch))
    finally:
        model.train(was_training)
    return results


# ---------------------------------------------------------------------------------------------------
# The report: report.json (written by the caller), report.md, report.png


def fmt_number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _arrow(up: bool | None) -> str:
    return {True: " ↑", False: " ↓", None: ""}[up]


def markdown_report(report: dict) -> str:
    """A table per set: one line per model (or answers file) and temperature."""
    lines = ["# Evaluation", ""]
    losses = {(model["label"], name): loss for model in report["models"] for name, loss in model.get("losses", {}).items()}
    for name, info in report["sets"].items():
        lines += [f"## {name}", "", _set_summary(info), ""]
        lines.append("| model | temperature | n | " + " | ".join(f"{title}{_arrow(up)}" for _, title, up in MEASURES) + " | reference loss ↓ |")
        lines.append("|---|---:|---:|" + "---:|" * (len(MEASURES) + 1))
        for result in (result for result in report["results"] if result["set"] == name):
            cells = [result["model"], "–" if result["temperature"] is None else f"{result['temperature']:g}", str(result["n"])]
            for key, _, _ in MEASURES:
                cells.append(fmt_number(result[key]))
                if key == "accuracy" and result["accuracy_ci"]:
                    cells[-1] += " ({:.3f}–{:.3f})".format(*result["accuracy_ci"])
            cells.append(fmt_number((losses.get((result["model"], name)) or {}).get("loss")))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Accuracy: share of the questions with accepted short answers whose answer (in Japanese) contains one, with its "
        "95 % Wilson interval: two models differ only where their intervals barely overlap or not at all. Hallucination: "
        "share of the answers that do not abstain and state at least one key term (name, number, kanji proper noun) "
        "that neither the question, the reference nor the source article supports; unsupported terms: the same pooled "
        "over terms. Abstention: answers that say they do not know. Truncated: answers cut at max_new_tokens. A good "
        "adapter raises known and quiz accuracy over the base without raising unseen hallucination. Definitions: "
        "cthulhu_sft/evaluation.py and cthulhu_sft/metrics.py.",
        "",
    ]
    return "\n".join(lines)


def _set_summary(info: dict) -> str:
    text = (
        f"{info['rows']} questions from `{info['path']}`, {info['with_answers']} with accepted short answers, "
        f"{info['with_text']} with the source article's text."
    )
    if info["excluded"]:
        text += (f" {len(info['excluded'])} left out of the score: their accepted answers are not in their article's "
                 "text (listed in report.json).")
    if info["unchecked"]:
        text += f" {info['unchecked']} with accepted answers unchecked (no article text)."
    return text


def plot_report(report: dict, path: str | os.PathLike) -> None:
    """report.png: a panel per set, a group of bars per measure, a bar per model and temperature."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["sets"])
    figure, axes = plt.subplots(len(names), 1, figsize=(13, 3.6 * len(names)), squeeze=False)
    for axis, name in zip(axes[:, 0], names):
        results = [result for result in report["results"] if result["set"] == name]
        width = 0.8 / max(1, len(results))
        for offset, result in enumerate(results):
            xs = [index + (offset - (len(results) - 1) / 2) * width for index in range(len(MEASURES))]
            values = [result[key] for key, _, _ in MEASURES]
            temperature = "" if result["temperature"] is None else f" T={result['temperature']:g}"
            axis.bar(xs, [value or 0.0 for value in values], width, label=f"{result['model']}{temperature}")
            for x, value in zip(xs, values):
                if value is None:  # does not apply: marked, so that it is not read as 0
                    axis.text(x, 0.01, "n/a", ha="center", va="bottom", fontsize=7)
            if result["accuracy_ci"]:
                low, high = result["accuracy_ci"]
                axis.errorbar(xs[0], result["accuracy"], yerr=[[result["accuracy"] - low], [high - result["accuracy"]]],
                              color="black", capsize=3, linewidth=1)
        axis.set_xticks(range(len(MEASURES)), [f"{title}{_arrow(up)}" for _, title, up in MEASURES], fontsize=8)
        axis.set_ylim(0, 1.05)
        axis.set_title(f"{name}: {report['sets'][name]['scored']} questions", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
        if results:
            axis.legend(fontsize=7, ncol=min(4, len(results)))
    figure.tight_layout()
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png", dpi=100)
    os.replace(temporary, path)
    plt.close(figure)


def write_report(output_dir: str | os.PathLike, report: dict, generations: list[dict]) -> str:
    """Writes report.json, generations.jsonl, report.md and report.png; returns the markdown."""
    from .data import write_jsonl_atomic

    output_dir = Path(output_dir)
    write_json_atomic(output_dir / "report.json", report)
    write_jsonl_atomic(output_dir / "generations.jsonl", generations)
    markdown = markdown_report(report)
    write_text_atomic(output_dir / "report.md", markdown)
    plot_report(report, output_dir / "report.png")
    return markdown
