"""Reading and validating instruction/response records (JSONL or a JSON array).

Two record shapes are accepted:
    {"instruction": ..., "response": ..., other fields allowed}   (this project's format)
    {"text": ..., "output": ...}                                    (the original notebook's format)
Every record is checked before anything expensive runs; a problem is reported with file, line and field.
"""

import codecs
import json
import os
import re
from pathlib import Path

from .files import write_text_atomic

FIELD_SHAPES = (("instruction", "response"), ("text", "output"))
MAX_REPORTED_PROBLEMS = 20
JSON_SPACE = re.compile(r"[ \t\n\r]*")


class DataError(ValueError):
    """Invalid data file; the message names file, line and field of each problem."""


def _json_array_items(text: str):
    """Yields (line number, item) for each element of a top-level JSON array.

    Raises JSONDecodeError unless the text is exactly one array: a missing or doubled ',' or text after the
    closing ']' would otherwise lose records without a word.
    """
    decoder = json.JSONDecoder()
    line_number, counted_to = 1, 0
    index = _skip_space(text, text.index("[") + 1)
    if text.startswith("]", index):
        _check_nothing_after(text, index + 1)
        return
    while index is not None:
        item, end = decoder.raw_decode(text, index)
        # Counting newlines from the start of the text for every item would take quadratic time.
        line_number += text.count("\n", counted_to, index)
        counted_to = index
        yield line_number, item
        index = _next_item(text, end)


def _next_item(text: str, index: int) -> int | None:
    """Where the item after the one ending at index starts, or None at the closing ']'."""
    index = _skip_space(text, index)
    if index >= len(text):
        raise json.JSONDecodeError("the array is not closed with ']'", text, index)
    if text[index] == "]":
        _check_nothing_after(text, index + 1)
        return None
    if text[index] != ",":
        raise json.JSONDecodeError("expected ',' or ']' after an item", text, index)
    index = _skip_space(text, index + 1)
    if index >= len(text):
        raise json.JSONDecodeError("the array is not closed with ']'", text, index)
    if text[index] in ",]":
        raise json.JSONDecodeError(f"expected an item after ',', found '{text[index]}'", text, index)
    return index


def _check_nothing_after(text: str, index: int) -> None:
    if text[index:].strip():
        raise json.JSONDecodeError("text after the closing ']' of the array", text, _skip_space(text, index))


def _skip_space(text: str, index: int) -> int:
    return JSON_SPACE.match(text, index).end()


def _decode_utf8(path: Path, data: bytes) -> str:
    data = data.removeprefix(codecs.BOM_UTF8)  # a byte-order mark from Windows editors is not data
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        line_number = data.count(b"\n", 0, error.start) + 1
        if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
            problem = 'the file is UTF-16 (what Windows editors call "Unicode"), not UTF-8'
        else:
            problem = f"not UTF-8 (byte 0x{data[error.start]:02x})"
        raise DataError(f"{path}:{line_number}: {problem}; the file must be saved as UTF-8") from None


def read_items(path: Path):
    """Yields (line number, parsed JSON value) for each record in the file; raises DataError on the first bad line."""
    text = _decode_utf8(path, path.read_bytes())
    if text.lstrip().startswith("["):
        try:
            yield from _json_array_items(text)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{error.lineno}: invalid JSON: {error.msg}") from None
        return
    # JSON Lines are separated by "\n" alone: str.splitlines would also cut at U+2028, U+0085 and the like,
    # which JSON strings may hold unescaped (json.dumps(..., ensure_ascii=False) writes them so).
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{line_number}: invalid JSON: {error.msg} (column {error.colno})") from None


def _to_pair(item) -> tuple[dict | None, str | None]:
    """Returns ({instruction, response, extra fields...}, None) or (None, problem)."""
    if not isinstance(item, dict):
        return None, f"expected a JSON object, got {type(item).__name__}"
    question_key, answer_key = next(
        (shape for shape in FIELD_SHAPES if any(key in item for key in shape)), FIELD_SHAPES[0]
    )
    record = {key: value for key, value in item.items() if key not in (question_key, answer_key)}
    for key, name in ((question_key, "instruction"), (answer_key, "response")):
        if key not in item:
            return None, f"field '{key}': missing"
        value = item[key]
        if not isinstance(value, str):
            return None, f"field '{key}': expected a string, got {type(value).__name__}"
        if not value.strip():
            return None, f"field '{key}': empty"
        record[name] = value.strip()
    return record, None


def load_items(path: str | os.PathLike, convert) -> list[dict]:
    """Reads a JSONL file or JSON array, turning each item into a record with `convert(item) -> (record, problem)`.

    Each record gets its 'line'. A file that is not UTF-8 or not valid JSON stops at the first bad line, since
    what follows cannot be read reliably. Problems in well-formed items (a missing or empty field, say) are all
    collected and reported together in one DataError naming file, line and field (the first
    MAX_REPORTED_PROBLEMS of them, then a count of the rest).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    records, problems = [], []
    for line_number, item in read_items(path):
        record, problem = convert(item)
        if problem:
            problems.append(f"{path}:{line_number}: {problem}")
        else:
            records.append({**record, "line": line_number})
    if problems:
        shown = problems[:MAX_REPORTED_PROBLEMS]
        more = len(problems) - len(shown)
        raise DataError("\n".join(shown + ([f"... and {more} more problems"] if more else [])))
    if not records:
        raise DataError(f"{path}: no records")
    return records


def load_records(path: str | os.PathLike) -> list[dict]:
    """Reads and validates a data file; each record gets 'instruction', 'response' (stripped) and 'line'."""
    return load_items(path, _to_pair)


def jsonl_text(rows) -> str:
    """One JSON object per line, non-ASCII characters as they are."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl_atomic(path: str | os.PathLike, rows) -> None:
    """Writes one JSON object per line; the file appears complete or not at all."""
    write_text_atomic(path, jsonl_text(rows))


def tokenize_records(records: list[dict], fmt, max_length: int | None) -> tuple[list[dict], list[int]]:
    """Training rows {input_ids, labels} in file order, and the line numbers of examples over max_length.

    Too-long examples are dropped, never truncated: a cut answer would teach the model to stop mid-sentence.
    """
    rows, dropped_lines = [], []
    for record in records:
        example = fmt.encode_example(record["instruction"], record["response"])
        if max_length is not None and len(example.input_ids) > max_length:
            dropped_lines.append(record["line"])
            continue
        rows.append({"input_ids": example.input_ids, "labels": example.labels})
    return rows, dropped_lines
