"""The old notebook's file (a JSON array of {"text", "output"}) as passages: `prepare_data.py --from_json`.

Every record is carried, short answers included (「1890年です。」: the factoid answers we want; the short-fragment
rule is for crawled text only). A record becomes a passage asked by its own question, split by its subject
(`legacy_subject`); records with the same answer become one passage asked by each of their questions. What is
not carried is named with its item number (from 1): a record that repeats an earlier one, a question already
asked with another answer (a question is trained with one answer), a sentence too long for --max_tokens, a part
of a long answer with no name to ask it by.
"""

import json
import re
from pathlib import Path

from cthulhu_sft.data import DataError
from cthulhu_sft.examples import BuildStats, Passage, fit_passages, normalize_question

MAX_REPORTED_PROBLEMS = 20


def legacy_subject(instruction: str) -> str:
    """What an old notebook question is about ('ネクロノミコンの著者は？' → 'ネクロノミコン'): the split's unit."""
    quoted = re.match(r"\s*[「『](.+?)[」』]", instruction)
    if quoted:
        return quoted.group(1)
    match = re.match(r"\s*(.+?)(?:とは|について|に関して|って|の|は|を)", instruction)
    return (match.group(1) if match else instruction).strip()


def read_legacy(path: str) -> list[dict]:
    """[{"text", "output"}] of the old notebook's JSON array; DataError naming the file and item (from 1)."""
    try:
        with open(path, encoding="utf-8-sig") as file:
            items = json.load(file)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8; the file must be saved as UTF-8") from None
    except json.JSONDecodeError as error:
        raise DataError(f"{path}:{error.lineno}: invalid JSON: {error.msg} (column {error.colno}); "
                        'expected one JSON array of {"text", "output"} objects') from None
    if not isinstance(items, list):
        raise DataError(f'{path}: expected a JSON array of {{"text", "output"}} objects, got a {type(items).__name__}')
    if not items:
        raise DataError(f"{path}: no records")
    problems = []
    for number, item in enumerate(items, start=1):
        if not isinstance(item, dict):
            problems.append(f"{path}: item {number}: expected a JSON object, got {type(item).__name__}")
            continue
        for key in ("text", "output"):
            value = item.get(key)
            problem = ("missing" if key not in item else f"expected a string, got {type(value).__name__}"
                       if not isinstance(value, str) else "empty" if not value.strip() else None)
            if problem:
                problems.append(f"{path}: item {number}: field '{key}': {problem}")
    if problems:
        more = len(problems) - MAX_REPORTED_PROBLEMS
        raise DataError("\n".join(problems[:MAX_REPORTED_PROBLEMS] + ([f"... and {more} more problems"] if more > 0 else [])))
    return items


def records_by_answer(path: str, items: list[dict], stats: BuildStats) -> list[tuple[list[int], list[str], str]]:
    """[(item numbers, their distinct questions, the answer)]: records with the same answer together, in file
    order; a repeated record, or a question already asked with another answer, left out and named."""
    groups: dict[str, tuple[list[int], list[str], str]] = {}
    asked: dict[str, tuple[int, str]] = {}  # normalised question -> (first item, its answer, normalised)
    for number, item in enumerate(items, start=1):
        question, answer = item["text"].strip(), item["output"].strip()
        key, text = normalize_question(question), re.sub(r"\s+", " ", answer)
        if key in asked:
            first, first_text = asked[key]
            why = "repeats item" if first_text == text else "asks the question of item"
            stats.notes.append(f"{path}: item {number}: not carried: it {why} {first}"
                               + ("" if first_text == text else " with another answer (a question is trained with one answer)"))
            continue
        asked[key] = (number, text)
        numbers, questions, _ = groups.setdefault(text, ([], [], answer))
        numbers.append(number)
        questions.append(question)
    return list(groups.values())


def converted_passages(path: str, items: list[dict], fmt, max_tokens: int, stats: BuildStats) -> list[Passage]:
    """One passage per answer, asked by each question it had; several parts where the answer is too long."""
    passages = []
    for numbers, questions, answer in records_by_answer(path, items, stats):
        subject = legacy_subject(questions[0])
        record = BuildStats()
        built = fit_passages(fmt, max_tokens, subject, subject, "", answer, questions, subject, True, len(questions),
                             f"{path}\x00{numbers[0]}", set(), record, min_chars=0)
        items_named = "item " + ", ".join(map(str, numbers))
        if record.dropped_sentences:
            stats.notes.append(f"{path}: {items_named}: {record.dropped_sentences} sentence(s) of the answer not carried "
                               f"(longer than --max_tokens {max_tokens} with the question)")
        if record.unaskable_parts:
            stats.notes.append(f"{path}: {items_named}: {record.unaskable_parts} part(s) of the answer not carried "
                               "(too long for one example, and no name in them to ask them by)")
        record.notes = []
        stats.add(record)
        for passage in built:
            passage.source, passage.kind = f"{Path(path).name}#{','.join(map(str, numbers))}", "converted"
            passages.append(passage)
    return passages
