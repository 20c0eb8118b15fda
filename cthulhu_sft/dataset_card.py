"""The dataset card (README.md beside the splits) that prepare_data.py writes, from dataset_card.md.

The Hub metadata is huggingface_hub's DatasetCardData. This module computes the values (examples and articles per
split, kinds, token lengths, what the writer's filters rejected, the pages and revisions to attribute) and the
template lays them out, as run_record.py does for the model card. Without a writer, the card says plainly that
the set holds no model-written questions and what to pass to get them.
"""

import re
import statistics
from dataclasses import asdict
from pathlib import Path
from urllib.parse import quote

from huggingface_hub import DatasetCard, DatasetCardData

from .retrieval import NOT_FOUND, RaftStats
from .splits import known_probes
from .synth import REASONS

CARD_TEMPLATE = Path(__file__).with_name("dataset_card.md")
CARD_MARK = "<!-- written by prepare_data.py; a rerun replaces this folder's dataset files -->"
OLD_CARD_MARK = "built by `prepare_data.py`"  # cards of earlier versions
# License first, as in the cards written so far: a rerun on unchanged data gives the same bytes.
METADATA_ORDER = ["license", "language", "pretty_name", "task_categories", "size_categories", "configs"]
SIZE_CATEGORIES = ((1e3, "n<1K"), (1e4, "1K<n<10K"), (1e5, "10K<n<100K"), (float("inf"), "100K<n<1M"))


def render_card(args, splits: dict[str, list[dict]], lengths: list[int], pages: list[dict], build: dict,
                prompt: str | None, report, open_book: RaftStats | None = None) -> str:
    """The card's text.

    args: prepare_data's options (from_json, phrasings, qa_model, tokenizer, max_tokens, api_url); splits: {split:
    rows}, in file order, an empty split has no file; lengths: every example's tokens; pages: the articles used
    (title, url, revid); build: the parameters listed; prompt and report: the writer's prompt and report (read
    through REPORT_FIELDS), or None (or a report whose backend is "none") without a writer; open_book: what
    --open_book_ratio (args.open_book_ratio) made, or None for no open-book examples.
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
        writer=writer_view(args.qa_model, prompt, report),
        known=known_probes(splits),
        tokenizer=args.tokenizer,
        max_tokens=args.max_tokens,
        length=length_stats(lengths),
        parameters=build,
        pages=attribution_rows(args.api_url, pages),
        adapted_by_model=has_writer(report),
        open_book=open_book and {**open_book_view(open_book), "ratio": args.open_book_ratio},
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


# The writer's report is read through these attributes only, each from the first name it has (synth.Report's
# current names, then earlier ones); any may be missing (None), and the card and the summary show "-" for it.
REPORT_FIELDS = {
    "backend": ("backend",),
    "model": ("model",),
    "judge_model": ("judge_model",),
    "passages": ("passages",),
    "cached": ("cached",),  # answers read from the cache, and
    "generated": ("generated",),  # answers the writer made in this run
    "requests": ("requests",),  # sent, retries included
    "prompt_tokens": ("prompt_tokens",),
    "completion_tokens": ("completion_tokens",),
    "offered": ("offered", "facts_offered"),
    "kept": ("kept", "facts_kept"),
    "rejected": ("rejected",),  # {reason: count}
    "verify_votes": ("verify_votes", "verify"),  # votes per verdict; 0: no verification
    "verify_agreement": ("verify_agreement", "agreement"),  # share of verdicts whose votes all agreed
    "rewrites_offered": ("rewrites_offered",),
    "rewrites_kept": ("rewrites_kept",),
    "served_by": ("served_by",),  # every model name the backend reported
}


def report_values(report) -> dict:
    """{field of REPORT_FIELDS: value or None} of the writer's report (None: no writer)."""
    values = {}
    for name, attributes in REPORT_FIELDS.items():
        values[name] = next((getattr(report, a) for a in attributes if getattr(report, a, None) is not None), None)
    if values["offered"] is None and values["kept"] is not None and values["rejected"] is not None:
        values["offered"] = values["kept"] + sum(values["rejected"].values())
    return values


def open_book_view(stats: RaftStats) -> dict:
    """What the card and the summary say of the open-book examples (retrieval.raft_examples' counts)."""
    examples = stats.with_passage + stats.distractors_only
    return {**asdict(stats), "examples": examples, "share": percent(examples / stats.facts if stats.facts else 0.0),
            "not_found": NOT_FOUND}


def percent(share) -> str:
    return f"{share:.0%}" if isinstance(share, float) else "-"


def has_writer(report) -> bool:
    return report is not None and getattr(report, "backend", None) != "none"


def writer_view(model: str | None, prompt: str | None, report) -> dict | None:
    """The writer's section: backend and model (and every name the backend reported, when another answered),
    requests, facts offered and kept, each reason's rejections, the verification's votes and agreement, rewrites,
    the prompt; None without a writer."""
    if not has_writer(report):
        return None
    values = report_values(report)
    model = values["model"] or model
    rejected = dict(values["rejected"] or {})
    reasons = [(reason, why, rejected.get(reason, 0)) for reason, why in REASONS.items()]
    reasons += [(reason, "", count) for reason, count in sorted(rejected.items()) if reason not in REASONS]
    return {
        **{name: "-" if value is None else value for name, value in values.items()},
        "model": model,
        "served_by": sorted(values["served_by"] or set()) if set(values["served_by"] or set()) - {model} else [],
        # what the set was made from, the same on a rerun from the cache (the run's own requests vary: the summary)
        "answers": "-" if None in (values["cached"], values["generated"]) else values["cached"] + values["generated"],
        "judge": values["judge_model"] if values["judge_model"] not in (None, "", model) else None,
        "rejected": sum(rejected.values()),
        "reasons": reasons,
        "verify_off": values["verify_votes"] == 0,
        "agreement": percent(values["verify_agreement"]),
        "prompt": (prompt or "").rstrip("\n"),
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
