"""Over a set, for one model and temperature: the measures, their intervals, and the report files.

`aggregate` pools the per-answer scores of evaluation.score_item:
    accuracy              correct / answers to rows with accepted answers, with its 95 % Wilson interval
                          `accuracy_ci`, so that a difference between models is read against its noise;
    incorrect_rate, not_attempted_rate
                          the other two grades, over the same answers (the three rates sum to 1);
    accuracy_given_attempted
                          correct / (correct + incorrect): how often it is right when it answers (SimpleQA);
    empty, empty_rate     answers with no letter or digit, over all answers; they are not attempted, and never
                          part of the hallucination rate;
    hallucination_rate    share of the answers that neither abstain nor are empty and state at least one
                          unsupported key term: every answer weighs the same, one that states no checkable term
                          counts as clean;
    unsupported_term_rate pooled over the same answers: unsupported terms / claimed terms;
    abstention_rate       answers that say they do not know, over all answers (empty ones are not abstentions);
    non_japanese_rate, eos_stop_rate, truncated_rate: shares of the answers; rouge_l_f1: mean; fact_recall:
                          recalled reference terms / reference terms, pooled;
    judge_accuracy, judge_agreement
                          with a model grader (evaluate.py --judge_model): its accuracy, and the share of answers
                          that it grades as the rules do.
Open book (rows answered with retrieved passages in the prompt, evaluation.open_book_item):
    citation_accuracy     correct answers whose citations are all right / correct answers: they cite at least
                          one passage, only passages that were shown, and only passages that contain an accepted
                          answer (a right answer credited to the wrong passage, to none, or to every passage, is
                          not);
    citation_rate         answers that cite a shown passage / answers that neither abstain nor are empty;
    passages_hold_answer_rate
                          rows with accepted answers whose shown passages contain one (retrieval's ceiling);
    abstention_when_absent, abstention_when_present
                          answers that abstain (retrieval.NOT_FOUND is one) among the rows whose passages do not
                          / do contain an accepted answer: the first is right (higher is better), the second a miss;
    closed_share_of_open  (add_gaps) the closed-book accuracy of the same set, model and temperature over this
                          open-book accuracy: how much of what the model can answer with the article in front of
                          it, it answers from memory (EntiGraph reports closed-book results so).
A measure that does not apply is None (null): accuracy without `answers`, fact recall without reference terms,
the stop rates of answers made elsewhere, the judge's without one, the open-book measures of closed-book rows.
"""

import math
import os
from pathlib import Path

from .files import write_json_atomic, write_text_atomic
from .grading import CORRECT, INCORRECT, NOT_ATTEMPTED

# (report key, column title, whether higher is better); None: neither (abstaining is right when the model
# does not know, wrong when it does)
MEASURES = [
    ("accuracy", "correct", True),
    ("incorrect_rate", "incorrect", False),
    ("not_attempted_rate", "not attempted", None),
    ("hallucination_rate", "hallucination", False),
    ("unsupported_term_rate", "unsupported terms", False),
    ("empty_rate", "empty", False),
    ("non_japanese_rate", "non-Japanese", False),
    ("rouge_l_f1", "ROUGE-L F1", True),
    ("fact_recall", "fact recall", True),
    ("eos_stop_rate", "EOS stop", True),
    ("truncated_rate", "truncated", False),
]
OPEN_BOOK_MEASURES = [
    ("closed_share_of_open", "closed / open", True),
    ("citation_accuracy", "citation accuracy", True),
    ("citation_rate", "cites", True),
    ("passages_hold_answer_rate", "passages hold answer", True),
    ("abstention_when_absent", "abstains, answer not in passages", True),
    ("abstention_when_present", "abstains, answer in passages", False),
]
JUDGE_MEASURES = [("judge_accuracy", "judge: correct", None), ("judge_agreement", "judge agrees", None)]
EXPLANATION = (
    "**Grades** (rows with accepted short answers, as SimpleQA grades): *correct* — the answer commits to an accepted "
    "answer (named whole, not negated, not one candidate among several, in Japanese); *incorrect* — it names another "
    "answer, negates or hedges the accepted one; *not attempted* — it says it does not know without offering a "
    "candidate, gives no answer at all (nothing for or against the accepted one), or is *empty* (no letter or digit; "
    "counted on its own). Correct has its 95 % Wilson interval: two "
    "models differ only where their intervals barely overlap or not at all. **Hallucination**: share of the answers "
    "that neither abstain nor are empty and state a key term (katakana or Latin name, number, kanji proper noun, "
    "title in 『』「」, kanji place or organisation name) that neither the question, the reference, its article nor "
    "any crawled article states. It cannot see a wrong fact made of true terms (a year the corpus states for "
    "something else, a real name in the wrong role), an invention in common words, or anything when no article "
    "text was given; and a true fact the crawl lacks counts as invented. Truncated: answers cut at max_new_tokens. "
    "A good adapter raises known and quiz accuracy over the base without raising unseen hallucination. Definitions: "
    "cthulhu_sft/grading.py, cthulhu_sft/report.py and cthulhu_sft/metrics.py."
)
OPEN_BOOK_EXPLANATION = (
    "**Open book** (`--open_book`): each question is asked twice, closed-book (the question alone) and open-book "
    "(the retriever's top passages of the crawled articles, numbered, in the prompt; the model is asked to cite "
    "them as [1] and to answer 「資料からは分かりません。」 when they do not hold the answer), graded the same way. "
    "*closed / open* is the closed-book accuracy as a share of the open-book accuracy of the same model: how much of "
    "what it can answer with the article in front of it, it answers from memory (1.0: all; EntiGraph reports "
    "closed-book results so). Read it with *passages hold answer*, the share of questions whose shown passages "
    "contain an accepted answer: open-book accuracy cannot exceed it by honest means, and a low value is the "
    "retriever's fault, not the model's (recall@k under each set's heading: its own article among the top k "
    "passages). *Citation accuracy*: of the correct open-book answers, the share whose citations are all right: "
    "at least one, only passages that were shown, and each of them containing an accepted answer (citing every "
    "passage is not right). Citation marks are removed before grading: [1] is neither a number the answer claims "
    "nor a second candidate. *Cites*: answers (not abstaining, not empty) that cite a shown passage. "
    "*Abstains, answer not in passages*: where no shown passage holds an accepted answer, the share of answers "
    "that abstain, which is the right reply (on the unseen set, whose articles were never trained, this is the "
    "open-book abstention to look at); *abstains, answer in passages*: abstaining where the answer was shown."
)


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


def aggregate(items: list[dict]) -> dict:
    """The report's measures over score_item results (see the module docstring)."""
    grades = [item["grade"] for item in items if item["grade"] is not None]
    correct = grades.count(CORRECT)
    attempted = correct + grades.count(INCORRECT)
    answering = [item for item in items if not item["abstained"] and not item["empty"]]
    reference_terms = sum(item["reference_terms"] for item in items)
    claimed = sum(item["claimed_terms"] for item in answering)
    stops = [item["stopped"] for item in items if item["stopped"] is not None]
    judged = [item for item in items if item.get("judge_grade") and item["grade"] is not None]
    return {
        "n": len(items),
        "accuracy": _share([grade == CORRECT for grade in grades]),
        "accuracy_ci": list(wilson_interval(correct, len(grades))) if grades else None,
        "incorrect_rate": _share([grade == INCORRECT for grade in grades]),
        "not_attempted_rate": _share([grade == NOT_ATTEMPTED for grade in grades]),
        "accuracy_given_attempted": correct / attempted if attempted else None,
        "empty": sum(item["empty"] for item in items),
        "empty_rate": _share([item["empty"] for item in items]),
        "rouge_l_f1": sum(item["rouge_l_f1"] for item in items) / len(items) if items else None,
        "fact_recall": sum(item["recalled_terms"] for item in items) / reference_terms if reference_terms else None,
        "hallucination_rate": _share([item["hallucinated"] for item in answering]),
        "unsupported_term_rate": sum(len(item["unsupported_terms"]) for item in answering) / claimed if claimed else None,
        "abstention_rate": _share([item["abstained"] for item in items]),
        "non_japanese_rate": _share([not item["japanese"] for item in items]),
        "eos_stop_rate": _share(stops),
        "truncated_rate": _share([not stopped for stopped in stops]),
        "judge_accuracy": _share([item["judge_grade"] == CORRECT for item in judged]),
        "judge_agreement": _share([item["judge_grade"] == item["grade"] for item in judged]),
        **open_book_measures(items, answering),
    }


def open_book_measures(items: list[dict], answering: list[dict]) -> dict:
    """The open-book measures (see the module docstring); None for closed-book items."""
    held = [item.get("passages_hold_answer") for item in items]
    return {
        "citation_accuracy": _share([item["citation_correct"] for item in items if item.get("citation_correct") is not None]),
        "citation_rate": _share([item["cites"] for item in answering if "cites" in item]),
        "passages_hold_answer_rate": _share([flag for flag in held if flag is not None]),
        "abstention_when_absent": _share([item["abstained"] for item, flag in zip(items, held) if flag is False]),
        "abstention_when_present": _share([item["abstained"] for item, flag in zip(items, held) if flag is True]),
        "closed_share_of_open": None,
    }


def add_gaps(results: list[dict]) -> None:
    """Sets each open-book result's closed_share_of_open: the closed-book accuracy of its set, model and
    temperature over its own accuracy (None without both, or when the open-book accuracy is 0)."""
    closed = {(r["set"], r["model"], r["temperature"]): r for r in results if r.get("book") == "closed"}
    for result in results:
        twin = closed.get((result["set"], result["model"], result["temperature"]))
        if result.get("book") == "open" and twin is not None and twin["accuracy"] is not None and result["accuracy"]:
            result["closed_share_of_open"] = twin["accuracy"] / result["accuracy"]


def _share(flags: list[bool]) -> float | None:
    return sum(map(bool, flags)) / len(flags) if flags else None


def fmt_number(value, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _arrow(up: bool | None) -> str:
    return {True: " ↑", False: " ↓", None: ""}[up]


def console_table(results: list[dict]) -> str:
    """One line per set, model and temperature: n, correct with its interval, not attempted, hallucination."""
    lines = [f"{'set':<10} {'model':<14} {'book':<6} {'T':>4} {'n':>5}  {'correct (95 % interval)':<26} {'not att.':>8} "
             f"{'halluc.':>8} {'empty':>6}"]
    for result in results:
        low, high = result["accuracy_ci"] or (None, None)
        interval = f"{fmt_number(result['accuracy'])} ({fmt_number(low)}–{fmt_number(high)})" if low is not None else "–"
        temperature = "–" if result["temperature"] is None else f"{result['temperature']:g}"
        lines.append(f"{result['set']:<10} {result['model']:<14} {result.get('book', 'closed'):<6} {temperature:>4} "
                     f"{result['n']:>5}  {interval:<26} "
                     f"{fmt_number(result['not_attempted_rate']):>8} {fmt_number(result['hallucination_rate']):>8} "
                     f"{result['empty']:>6}")
    return "\n".join(lines)


def markdown_report(report: dict) -> str:
    """A table per set: one line per model (or answers file), book and temperature."""
    lines = ["# Evaluation", ""]
    if report.get("missing_sets"):
        lines += ["Not found, so not scored: " + ", ".join(f"{name} (`{path}`)" for name, path in report["missing_sets"].items()), ""]
    losses = {(model["label"], name): loss for model in report["models"] for name, loss in model.get("losses", {}).items()}
    judge = any(result.get("judge_accuracy") is not None for result in report["results"])
    open_book = any(result.get("book") == "open" for result in report["results"])
    measures = MEASURES + (OPEN_BOOK_MEASURES if open_book else []) + (JUDGE_MEASURES if judge else [])
    for name, info in report["sets"].items():
        lines += [f"## {name}", "", set_summary(info), ""]
        titles = [f"{title}{_arrow(up)}" for _, title, up in measures]
        lines.append("| model | book | temperature | n | " + " | ".join(titles) + " | reference loss ↓ |")
        lines.append("|---|---|---:|---:|" + "---:|" * (len(titles) + 1))
        for result in (result for result in report["results"] if result["set"] == name):
            cells = [result["model"], result.get("book", "closed"),
                     "–" if result["temperature"] is None else f"{result['temperature']:g}", str(result["n"])]
            for key, _, _ in measures:
                cells.append(fmt_number(result.get(key)))
                if key == "accuracy" and result["accuracy_ci"]:
                    cells[-1] += " ({:.3f}–{:.3f})".format(*result["accuracy_ci"])
                if key == "empty_rate" and result["empty"]:
                    cells[-1] += f" ({result['empty']})"
            loss = (losses.get((result["model"], name)) or {}).get("loss") if result.get("book") != "open" else None
            cells.append(fmt_number(loss))
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    lines += [EXPLANATION, ""] + ([OPEN_BOOK_EXPLANATION, ""] if open_book else [])
    return "\n".join(lines)


def recall_text(recall: dict | None) -> str:
    """'recall@1 0.500, recall@3 1.000, recall@5 1.000 (2 questions)' of OpenBook.recall."""
    if not recall:
        return "no question names its article (`title`)"
    values = ", ".join(f"{key} {value:.3f}" for key, value in recall.items() if key.startswith("recall@"))
    return f"{values} ({recall['questions']} questions)"


def set_summary(info: dict) -> str:
    text = (
        f"{info['rows']} questions from `{info['path']}`, {info['with_answers']} with accepted short answers, "
        f"{info['with_text']} with the source article's text."
    )
    if info["excluded"]:
        text += (f" {len(info['excluded'])} left out of the score: their article's text names none of their accepted "
                 "answers (listed in report.json).")
    if info.get("not_taught"):
        text += (f" {len(info['not_taught'])} not taught by this data: no crawled article names their answer "
                 "(scored; listed in report.json).")
    if info["unchecked"]:
        text += f" {info['unchecked']} with accepted answers unchecked (no article text)."
    if "retrieval" in info:
        text += f" Open book: the question's own article among the top k passages: {recall_text(info['retrieval'])}."
    return text


def plot_report(report: dict, path: str | os.PathLike) -> None:
    """report.png (report_figure), written atomically."""
    import matplotlib.pyplot as plt

    figure = report_figure(report)
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    figure.savefig(temporary, format="png", dpi=100)
    os.replace(temporary, path)
    plt.close(figure)


def report_figure(report: dict):
    """A panel per set, a group of bars per measure, a bar per model and temperature; the legend beside the
    panel, a value over every bar ("n/a" where a measure does not apply, not 0), a visible stub for a 0."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["sets"])
    figure, axes = plt.subplots(len(names), 1, figsize=(15, 3.9 * len(names)), squeeze=False)
    for axis, name in zip(axes[:, 0], names):
        results = [result for result in report["results"] if result["set"] == name]
        width = 0.8 / max(1, len(results))
        for offset, result in enumerate(results):
            xs = [index + (offset - (len(results) - 1) / 2) * width for index in range(len(MEASURES))]
            values = [result[key] for key, _, _ in MEASURES]
            temperature = "" if result["temperature"] is None else f" T={result['temperature']:g}"
            book = " open book" if result.get("book") == "open" else ""
            bars = axis.bar(xs, [value or 0.0 for value in values], width, label=f"{result['model']}{book}{temperature}",
                            edgecolor="black", linewidth=0.6)
            tops = [value or 0.0 for value in values]
            if result["accuracy_ci"]:
                low, high = result["accuracy_ci"]
                axis.errorbar(xs[0], result["accuracy"], yerr=[[result["accuracy"] - low], [high - result["accuracy"]]],
                              color="black", capsize=3, linewidth=1)
                tops[0] = high
            for x, value, top, bar in zip(xs, values, tops, bars):
                axis.text(x, top + 0.015, "n/a" if value is None else f"{value:.2f}", ha="center", va="bottom",
                          fontsize=6, rotation=90)
                if value == 0:
                    axis.plot([x - width / 2, x + width / 2], [0.006, 0.006], color=bar.get_facecolor(), linewidth=3)
        axis.set_xticks(range(len(MEASURES)), [f"{title}{_arrow(up)}" for _, title, up in MEASURES], fontsize=8)
        axis.set_ylim(0, 1.3)
        axis.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        axis.set_title(f"{name}: {report['sets'][name]['scored']} questions", fontsize=10)
        axis.grid(axis="y", alpha=0.3)
        if results:
            axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0), borderaxespad=0)
    figure.tight_layout()
    return figure


def write_report(output_dir: str | os.PathLike, report: dict, generations: list[dict]) -> str:
    """Writes report.json, generations.jsonl, report.md and report.png; returns the markdown."""
    from .data import write_jsonl_atomic

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(output_dir / "report.json", report)
    write_jsonl_atomic(output_dir / "generations.jsonl", generations)
    markdown = markdown_report(report)
    write_text_atomic(output_dir / "report.md", markdown)
    plot_report(report, output_dir / "report.png")
    return markdown
