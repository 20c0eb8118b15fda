"""The dataset card (README.md beside the splits) that prepare_data.py writes, from dataset_card.md.

The Hub metadata is huggingface_hub's DatasetCardData. This module computes the values (examples and articles per
split, kinds, token lengths, what the writer's filters rejected, the pages and revisions to attribute) and the
template lays them out, as run_record.py does for the model card.
"""

import re
import statistics
from pathlib import Path
from urllib.parse import quote

from huggingface_hub import DatasetCard, DatasetCardData

from .synth import REASONS

CARD_TEMPLATE = Path(__file__).with_name("dataset_card.md")
CARD_MARK = "<!-- written by prepare_data.py; a rerun replaces this folder's dataset files -->"
OLD_CARD_MARK = "built by `prepare_data.py`"  # cards of earlier versions
# License first, as in the cards written so far: a rerun on unchanged data gives the same bytes.
METADATA_ORDER = ["license", "language", "pretty_name", "task_categories", "size_categories", "configs"]
SIZE_CATEGORIES = ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (float("inf"), "100K<n<1M"))


def render_card(args, splits: dict[str, list[dict]], lengths: list[int], pages: list[dict], build: dict,
                prompt: str | None, report) -> str:
    """The card's text.

    args: prepare_data's options (from_json, phrasings, qa_model, tokenizer, max_tokens, api_url); splits: {split:
    rows}, in file order, an empty split has no file; lengths: every example's tokens; pages: the articles used
    (title, url, revid); build: the parameters listed; prompt and report: the writer's prompt and synth.Report, or
    None without a writer.
    """
    card_data = DatasetCardData(
        license="cc-by-sa-4.0",
        language=["ja"],
        pretty_name="Cthulhu-mythos Q&A from Japanese Wikipedia",
        task_categories=["question-answering", "text-generation"],
        size_categories=[size_category(sum(map(len, splits.values())))],
        configs=[{"config_name": "default",  # not a named argument: it goes through the kwargs
                  "data_files": [{"split": split, "path": f"{split}.jsonl"} for split, rows in splits.items() if rows]}],
    )
    card = DatasetCard.from_template(
        card_data,
        template_path=str(CARD_TEMPLATE),
        metadata=card_data.to_yaml(original_order=METADATA_ORDER),
        mark=CARD_MARK,
        source_file=args.from_json,
        source_name=Path(args.from_json).name if args.from_json else None,
        phrasings=args.phrasings,
        splits={split: {"examples": len(rows), "articles": len({r["title"] for r in rows})}
                for split, rows in splits.items()},
        kinds=[(kind, [sum(r["kind"] == kind for r in rows) for rows in splits.values()])
               for kind in sorted({r["kind"] for rows in splits.values() for r in rows})],
        writer=writer_view(args.qa_model, prompt, report) if report is not None and report.backend != "none" else None,
        no_writer=report.note if report is not None and report.backend == "none" else None,
        tokenizer=args.tokenizer,
        max_tokens=args.max_tokens,
        length=length_stats(lengths),
        parameters=build,
        pages=attribution_rows(args.api_url, pages),
        adapted_by_model=bool(args.qa_model),
    )
    return card.content


def size_category(rows: int) -> str:
    return next(name for limit, name in SIZE_CATEGORIES if rows < limit)


def length_stats(lengths: list[int]) -> dict:
    ordered = sorted(lengths) or [0]
    return {
        "min": ordered[0],
        "median": int(statistics.median(ordered)),
        "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
        "max": ordered[-1],
        "total": sum(lengths),
    }


def writer_view(model: str, prompt: str, report) -> dict:
    """The writer's section: its model (and every name the endpoint reported, when another answered), the counts,
    each filter's rejections, the prompt."""
    return {
        "model": model,
        "served_by": sorted(report.served_by) if report.served_by - {model} else [],
        "passages": report.passages,
        "kept": report.kept,
        "rejected": sum(report.rejected.values()),
        "reasons": [(reason, why, report.rejected.get(reason, 0)) for reason, why in REASONS.items()],
        "prompt": prompt.rstrip("\n"),
    }


def attribution_rows(api_url: str, pages: list[dict]) -> list[dict]:
    """Each page with links to the revision used and to its history (the authors), on the wiki's index.php."""
    index_url = re.sub(r"api\.php$", "index.php", api_url)
    rows = []
    for page in pages:
        title = quote(page["title"].replace(" ", "_"))
        rows.append({"title": page["title"], "url": page["url"], "revid": page["revid"],
                     "revision_url": f"{index_url}?title={title}&oldid={page['revid']}",
                     "history_url": f"{index_url}?title={title}&action=history"})
    return rows
