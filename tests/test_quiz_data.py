"""The curated quiz (data/quiz/cthulhu_quiz_ja.jsonl): shape, accepted answers and the counts its card states."""

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from cthulhu_sft.data import load_records

QUIZ_DIR = Path(__file__).resolve().parent.parent / "data" / "quiz"
QUIZ = QUIZ_DIR / "cthulhu_quiz_ja.jsonl"
CARD = QUIZ_DIR / "README.md"
KINDS = ("person", "work", "year", "place", "being", "book", "other")
FIELDS = {"instruction": str, "response": str, "answers": list, "title": str, "kind": str}
QUESTION_ENDINGS = ("？", "?", "ください。", "ください", "教えて。", "教えて")


def nfkc(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def loose(text: str) -> str:
    """NFKC, case, spaces, the ・ and ＝ separators and long-vowel marks removed: close to what evaluate.py compares."""
    return re.sub(r"[\s・･=ー\-‐]", "", nfkc(text).casefold())


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    with QUIZ.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def describe(row: dict) -> str:
    return f"{row.get('instruction')!r}"


def test_at_least_150_questions(rows):
    assert len(rows) >= 150


def test_every_row_has_its_fields_with_the_right_types(rows):
    problems = []
    for number, row in enumerate(rows, 1):
        for field, kind in FIELDS.items():
            value = row.get(field)
            if not isinstance(value, kind):
                problems.append(f"line {number}: {field} is {type(value).__name__}, expected {kind.__name__}")
            elif not value or (kind is str and not value.strip()):
                problems.append(f"line {number}: {field} is empty")
        answers = row.get("answers")
        if isinstance(answers, list) and not all(isinstance(a, str) and a.strip() for a in answers):
            problems.append(f"line {number}: answers must be non-empty strings: {answers!r}")
        extra = set(row) - set(FIELDS)
        if extra:
            problems.append(f"line {number}: unexpected fields {sorted(extra)}")
    assert not problems, "\n".join(problems)


def test_kinds_come_from_the_set(rows):
    assert {row["kind"] for row in rows} <= set(KINDS)


def test_every_kind_is_used(rows):
    assert set(KINDS) <= {row["kind"] for row in rows}


def test_no_duplicate_questions(rows):
    keys = Counter(re.sub(r"\s", "", nfkc(row["instruction"])) for row in rows)
    assert [key for key, count in keys.items() if count > 1] == []


def test_every_question_is_a_question_or_a_request(rows):
    assert [describe(r) for r in rows if not r["instruction"].strip().endswith(QUESTION_ENDINGS)] == []


def test_no_accepted_answer_is_shorter_than_two_characters(rows):
    short = [(describe(r), a) for r in rows for a in r["answers"] if len(nfkc(a).strip()) < 2]
    assert short == []


def test_no_duplicate_accepted_answers_in_a_row(rows):
    """Spelling variants that normalise alike are kept on purpose (the evaluator's long-vowel rule may differ)."""
    assert [describe(r) for r in rows if len({nfkc(a).casefold() for a in r["answers"]}) != len(r["answers"])] == []


def test_every_reference_response_contains_an_accepted_answer(rows):
    missing = [describe(r) for r in rows if not any(nfkc(a) in nfkc(r["response"]) for a in r["answers"])]
    assert missing == []


def test_no_question_gives_away_its_own_answer(rows):
    """An answer that merely repeats the question must not score."""
    giveaways = [(describe(r), a) for r in rows for a in r["answers"] if loose(a) in loose(r["instruction"])]
    assert giveaways == []


def test_reference_responses_are_one_sentence(rows):
    """One sentence: a single 「。」, at the end (a 。 inside quotes or brackets would be a second sentence too)."""
    assert [describe(r) for r in rows if r["response"].count("。") != 1 or not r["response"].endswith("。")] == []


def card_counts() -> dict[str, int]:
    counts = {}
    for line in CARD.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^\|\s*(\w+)\s*\|\s*(\d+)\s*\|\s*$", line)
        if match and match.group(1) in (*KINDS, "total"):
            counts[match.group(1)] = int(match.group(2))
    return counts


def test_card_counts_match_the_file(rows):
    counts = card_counts()
    actual = Counter(row["kind"] for row in rows)
    assert counts == {**{kind: actual[kind] for kind in KINDS}, "total": len(rows)}


def test_the_project_reader_accepts_the_quiz(rows):
    records = load_records(QUIZ)
    assert [r["instruction"] for r in records] == [row["instruction"].strip() for row in rows]
    assert all(r["answers"] and r["title"] and r["kind"] for r in records)


def test_loose_normalisation_is_what_the_checks_assume():
    assert loose("ヨグ＝ソトース") == loose("ヨグ・ソトース") == loose("ヨグソトース")
    assert loose("Ｌｏｖｅｃｒａｆｔ") == loose("lovecraft")
    assert loose("クトゥルー") == loose("クトゥル")
    assert loose("1928") in loose("1928年2月号")


def test_every_reference_response_is_graded_correct(rows):
    """The grader agrees with the quiz's own answer sentences: each reference is correct for its row (a grader
    that refused them would refuse the same answer from a model)."""
    from cthulhu_sft.grading import grade_answer

    wrong = [(describe(row), grade.reason) for row in rows
             if (grade := grade_answer(row["response"], row["answers"], row["instruction"])).grade != "correct"]
    assert not wrong, wrong
