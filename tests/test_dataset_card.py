"""The dataset card rendered from cthulhu_sft/dataset_card.md, on hand-made splits (prepare_data's runs: test_prepare_data)."""

from argparse import Namespace
from collections import Counter

from huggingface_hub import DatasetCard

from cthulhu_sft.dataset_card import CARD_MARK, length_stats, render_card
from cthulhu_sft.synth import Report

API_URL = "https://ja.wikipedia.org/w/api.php"
PAGES = [{"title": "ダゴン (クトゥルフ神話)", "url": "https://ja.wikipedia.org/wiki/ダゴン", "revid": 101},
         {"title": "R&D?", "url": "https://ja.wikipedia.org/wiki/R%26D", "revid": None}]


def options(**changes) -> Namespace:
    values = {"from_json": None, "phrasings": 2, "qa_model": None, "tokenizer": "tok", "max_tokens": 256, "api_url": API_URL}
    return Namespace(**{**values, **changes})


def rows(count: int, kind: str, titles: int = 1) -> list[dict]:
    return [{"kind": kind, "title": f"記事{i % titles}"} for i in range(count)]


def test_a_crawl_with_a_writer_has_the_hub_metadata_the_tables_the_prompt_and_the_revisions():
    splits = {"train": rows(6, "recitation", 3) + rows(2, "synthesized"), "eval": [], "eval_known": rows(1, "synthesized")}
    report = Report(backend="openai", passages=4, facts_kept=3, rejected=Counter({"answer_ungrounded": 5, "duplicate": 1}),
                    served_by={"a-7b", "b-7b"})
    text = render_card(options(qa_model="a-7b"), splits, [30, 10, 20], PAGES, {"seed": 42, "depth": 2},
                       "文章:\n<passage>\n{passage}\n</passage>\n\n", report)

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
    assert "`a-7b` (the endpoint reported `a-7b`, `b-7b`), from each passage" in text
    assert "Passages asked: 4; pairs kept: 3; rejected: 6." in text
    assert "| `answer_ungrounded` | a key term of the answer is in neither the evidence nor the title (per fact) | 5 |" in text
    assert "| `malformed` |" in text
    assert "~~~~text\n文章:\n<passage>\n{passage}\n</passage>\n~~~~" in text
    assert "min 10, median 20, p90 30, max 30, total 60\n\n## Parameters\n\n- `seed`: 42\n- `depth`: 2\n\n## License and" in text
    assert "asked as questions, rewritten as question/answer pairs by a model)." in text
    index = "https://ja.wikipedia.org/w/index.php?title="
    assert (f"| [ダゴン (クトゥルフ神話)](https://ja.wikipedia.org/wiki/ダゴン) | [101]({index}%E3%83%80%E3%82%B4%E3%83%B3_"
            f"%28%E3%82%AF%E3%83%88%E3%82%A5%E3%83%AB%E3%83%95%E7%A5%9E%E8%A9%B1%29&oldid=101) |") in text
    assert f"| [R&D?](https://ja.wikipedia.org/wiki/R%26D) | - | [history]({index}R%26D%3F&action=history) |" in text
    assert DatasetCard(card.content).content == text  # the Hub's own round trip keeps the bytes


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
    assert "min 0, median 0, p90 0, max 0, total 0" in text and "rewritten" not in text
    assert length_stats(list(range(1, 11))) == {"min": 1, "median": 5, "p90": 10, "max": 10, "total": 55}
