"""The dataset card rendered from cthulhu_sft/dataset_card.md, on hand-made splits (prepare_data's runs: test_prepare_data)."""

from argparse import Namespace
from collections import Counter
from types import SimpleNamespace

import pytest
from huggingface_hub import DatasetCard

from cthulhu_sft.dataset_card import CARD_MARK, length_stats, render_card
from cthulhu_sft.retrieval import NOT_FOUND, RaftStats
from cthulhu_sft.synth import REASONS

API_URL = "https://ja.wikipedia.org/w/api.php"
PAGES = [{"title": "ダゴン (クトゥルフ神話)", "url": "https://ja.wikipedia.org/wiki/ダゴン", "revid": 101},
         {"title": "R&D?", "url": "https://ja.wikipedia.org/wiki/R%26D", "revid": None}]


def options(**changes) -> Namespace:
    values = {"from_json": None, "phrasings": 2, "qa_model": None, "tokenizer": "tok", "max_tokens": 256, "api_url": API_URL}
    return Namespace(**{**values, **changes})


def rows(count: int, kind: str, titles: int = 1) -> list[dict]:
    return [{"kind": kind, "title": f"記事{i % titles}"} for i in range(count)]


def writer_report(**changes) -> SimpleNamespace:
    """A writer's report as synth.Report has it (the card reads it through REPORT_FIELDS only)."""
    values = {"backend": "openai", "model": "a-7b", "judge_model": "a-7b", "passages": 4, "cached": 1, "generated": 20, "requests": 23,
              "facts_offered": 8, "kept": 3, "rejected": Counter({"malformed": 4, "a_reason_synth_does_not_describe": 1}),
              "verify": 3, "agreement": 0.75, "rewrites_offered": 4, "rewrites_kept": 2, "served_by": {"a-7b", "b-7b"}}
    return SimpleNamespace(**{**values, **changes})


def test_a_crawl_with_a_writer_has_the_hub_metadata_the_tables_the_prompt_and_the_revisions():
    splits = {"train": rows(6, "recitation", 3) + rows(2, "synthesized"), "eval": [], "eval_known": rows(1, "synthesized")}
    text = render_card(options(qa_model="a-7b"), splits, [30, 10, 20], PAGES, {"seed": 42, "depth": 2},
                       "文章:\n<passage>\n{passage}\n</passage>\n\n", writer_report())

    card = DatasetCard(text)
    assert text.startswith("---\nlicense: cc-by-sa-4.0\nlanguage:\n- ja\n") and text.endswith(" |\n")
    assert card.data.pretty_name and card.data.size_categories == ["n<1K"]
    assert card.data.task_categories == ["question-answering", "text-generation"]
    assert card.data.configs == [{"config_name": "default", "data_files": [
        {"split": "train", "path": "train.jsonl"}, {"split": "eval_known", "path": "eval_known.jsonl"}]}]  # no empty file
    assert card.text.startswith(CARD_MARK + "\n\n# Cthulhu-mythos instruction dataset\n")
    assert "| train.jsonl | 8 | 3 | trained: each passage under 2 question wording(s) |" in text
    assert "| eval.jsonl | 0 | 0 |" in text
    assert "| recitation | 6 | 0 | 0 |\n| synthesized | 2 | 0 | 1 |\n\n- `recitation`:" in text
    assert "written by `a-7b` (backend `openai`) (it reported `a-7b`, `b-7b`), from each passage" in text
    assert "verified by" not in text  # the writer is its own judge
    assert "- requests: 21 (facts, rewrites and verdicts, each cached: a rerun asks nothing); passages: 4\n" in text
    assert "- facts offered: 8; kept: 3; rejections: 5 (each check below, counted per answer, fact, question or " \
           "rewrite as it says)\n" in text
    assert "3 vote(s) for each question/answer and rewrite, at temperature 0, kept on a majority of true; the votes " \
           "of a verdict all agreed in 75% of them" in text
    assert "- rewrites offered: 4; kept: 2\n" in text
    assert f"| `malformed` | {REASONS['malformed']} | 4 |" in text and "| `duplicate` |" in text
    assert "| `a_reason_synth_does_not_describe` |  | 1 |" in text  # counted though not described
    assert "No model-written questions" not in text
    assert "~~~~text\n文章:\n<passage>\n{passage}\n</passage>\n~~~~" in text
    assert "min 10, median 20, p90 30, max 30, total 60\n\n## Parameters\n\n- `seed`: 42\n- `depth`: 2\n\n## License and" in text
    assert "asked as questions, rewritten as question/answer pairs by a model)." in text
    index = "https://ja.wikipedia.org/w/index.php?title="
    assert (f"| [ダゴン (クトゥルフ神話)](https://ja.wikipedia.org/wiki/ダゴン) | [101]({index}%E3%83%80%E3%82%B4%E3%83%B3_"
            f"%28%E3%82%AF%E3%83%88%E3%82%A5%E3%83%AB%E3%83%95%E7%A5%9E%E8%A9%B1%29&oldid=101) |") in text
    assert f"| [R&D?](https://ja.wikipedia.org/wiki/R%26D) | - | [history]({index}R%26D%3F&action=history) |" in text
    assert DatasetCard(card.content).content == text  # the Hub's own round trip keeps the bytes


def test_known_probes_are_counted_per_trained_article():
    splits = {"train": rows(6, "recitation", 3), "eval": rows(2, "recitation"),
              "eval_known": rows(4, "synthesized", 2) + [{"kind": "synthesized", "title": "記事0"}]}
    text = render_card(options(), splits, [5], PAGES, {}, None, None)
    assert "5 probes for 2 of 3 trained articles.\n\n| article | probes |\n| --- | --- |\n" \
           "| 記事0 | 3 |\n| 記事1 | 2 |\n| 記事2 | 0 |\n" in text


def test_a_report_missing_fields_shows_dashes_and_verification_off_is_said():
    report = SimpleNamespace(backend="transformers", model="tiny-mistral", verify_votes=0, kept=0,
                             rejected=Counter({"malformed": 6}))
    text = render_card(options(), {"train": rows(2, "recitation"), "eval": [], "eval_known": []}, [5], PAGES, {}, "p",
                       report)
    assert "written by `tiny-mistral` (backend `transformers`), from each passage" in text
    assert "- requests: - (facts, rewrites and verdicts, each cached: a rerun asks nothing); passages: -\n" \
           "- facts offered: 6; kept: 0; rejections: 6" in text
    assert "- verification: off (`--qa_verify 0`): facts were kept on the checks alone\n" in text
    assert "- rewrites offered: -; kept: -\n" in text and "| `malformed` |" in text


@pytest.mark.parametrize("report", [None, SimpleNamespace(backend="none", model="", note="none")])
def test_without_a_writer_the_card_says_it_holds_no_model_written_questions_and_how_to_get_them(report):
    text = render_card(options(), {"train": rows(3, "recitation"), "eval": [], "eval_known": rows(1, "cloze")}, [5],
                       PAGES, {}, None, report)
    assert "## No model-written questions\n\nThis set holds no model-written questions:" in text
    assert "`--qa_api_url URL --qa_model NAME`" in text and "on a CUDA" in text
    assert "## Written by a model" not in text and "rewritten as question/answer pairs" not in text


def test_a_converted_file_names_its_source_and_has_no_writer_section_nor_attribution():
    splits = {"train": rows(3, "converted"), "eval": rows(1, "converted"), "eval_known": []}
    text = render_card(options(from_json="old/data_lora_formatted.json"), splits, [5], [], {"records": 4}, None, None)
    assert "`data_lora_formatted.json`（元ノートブックの形式）から" in text
    assert "from `old/data_lora_formatted.json` (the old notebook's file). Each line is" in text
    assert "## Written by a model" not in text and "<details>" not in text
    assert text.endswith("- `records`: 4\n\n## License\n\nSee the source file's own terms; each record's `source` names its item.\n")


def test_size_category_and_length_statistics():
    text = render_card(options(), {"train": rows(10_000, "recitation"), "eval": [], "eval_known": []}, [], PAGES, {}, None, None)
    assert DatasetCard(text).data.size_categories == ["10K<n<100K"]
    assert "min 0, median 0, p90 0, max 0, total 0" in text and "rewritten as question" not in text
    assert length_stats(list(range(1, 11))) == {"min": 1, "median": 5, "p90": 10, "max": 10, "total": 55}


def test_open_book_examples_are_counted_with_the_distractor_only_ones_and_said_nowhere_without_them():
    splits = {"train": rows(6, "recitation", 3) + rows(5, "synthesized") + rows(3, "open_book") + rows(1, "open_book_absent"),
              "eval": [], "eval_known": rows(2, "synthesized")}
    stats = RaftStats(facts=10, chosen=6, with_passage=3, distractors_only=1, held_out=0, too_long=1, no_distractor=2)
    text = render_card(options(open_book_ratio=0.5), splits, [5], PAGES, {}, "p", writer_report(), stats)
    assert "| open_book | 3 | 0 | 0 |\n| open_book_absent | 1 | 0 | 0 |" in text
    flat = " ".join(text.split())  # the paragraph's words, whatever its line breaks
    assert "## Open book (RAFT) 4 rows of train.jsonl (40% of its 10 facts, `--open_book_ratio 0.5`) also ask a fact" in flat
    assert "question. 3 show the fact's own passage among those retrieved" in flat
    assert f"; 1 show retrieved passages only (none of the fact's article, none holding the answer), answered 「{NOT_FOUND}」" in flat
    assert "Every fact still trains closed-book" in flat
    assert "Chosen but not made: 1 (too long for 256 tokens), 2 (no other passage found)." in flat
    assert "## Open book" not in render_card(options(open_book_ratio=0.0), splits, [5], PAGES, {}, "p", writer_report())
