"""Reading and validating instruction/response records (JSON Lines), and tokenizing them for training.

Each line is {"instruction": ..., "response": ..., other fields allowed}. Every record is checked before anything
expensive runs; a problem is reported with file, line and field. The original notebook's {"text", "output"} JSON
array is converted once, by `prepare_data.py --from_json`.
"""

import codecs
import json
import os
import re
from pathlib import Path

from .files import sha256_file, write_text_atomic

MAX_REPORTED_PROBLEMS = 20
WHITESPACE = re.compile(r"\s+")


class DataError(ValueError):
    """Invalid data file; the message names file, line and field of each problem."""


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
    """Yields (line number, parsed JSON value) for each line; raises DataError on the first bad line."""
    text = _decode_utf8(path, path.read_bytes())
    if text.lstrip().startswith("["):
        raise DataError(f"{path}:1: a JSON array, not JSON Lines: convert it once with "
                        f"`python prepare_data.py --from_json {path}`")
    # JSON Lines are separated by "\n" alone: str.splitlines would also cut at U+2028, U+0085 and the like,
    # which JSON strings may hold unescaped (json.dumps(..., ensure_ascii=False) writes them so).
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            yield line_number, json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{path}:{line_number}: invalid JSON: {error.msg} (column {error.colno})") from None


def _to_pair(item, keys=("instruction", "response")) -> tuple[dict | None, str | None]:
    """Returns ({instruction, response, extra fields...}, None) or (None, problem)."""
    if not isinstance(item, dict):
        return None, f"expected a JSON object, got {type(item).__name__}"
    record = dict(item)
    for key in keys:
        if key not in item:
            hint = " (a notebook {text, output} file? convert it with prepare_data.py --from_json)" if "text" in item else ""
            return None, f"field '{key}': missing{hint}"
        value = item[key]
        if not isinstance(value, str):
            return None, f"field '{key}': expected a string, got {type(value).__name__}"
        if not value.strip():
            return None, f"field '{key}': empty"
        record[key] = value.strip()
    return record, None


def load_items(path: str | os.PathLike, convert) -> list[dict]:
    """Reads a JSONL file, turning each item into a record with `convert(item) -> (record, problem)`.

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


def read_prompts(path: str | os.PathLike) -> list[dict]:
    """A prompts file (generate.py --prompts_file): JSONL of objects with a non-empty string 'instruction'; other
    fields (a reference 'response', 'title', ...) are kept. Each record gets 'instruction' (stripped) and 'line'."""
    return load_items(path, lambda item: _to_pair(item, keys=("instruction",)))


def jsonl_text(rows) -> str:
    """One JSON object per line, non-ASCII characters as they are."""
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl_atomic(path: str | os.PathLike, rows) -> None:
    """Writes one JSON object per line; the file appears complete or not at all."""
    write_text_atomic(path, jsonl_text(rows))


def tokenize_files(files: dict[str, str], records: dict[str, list[dict]], fmt, max_length: int | None):
    """({split: rows}, {split: run.json entry}, warnings) for each split's validated records; a split with no
    example that fits is a DataError. Each entry has the file's sha256 and its counts."""
    rows, entries, warnings = {}, {}, []
    for split, path in files.items():
        rows[split], dropped = tokenize_records(records[split], fmt, max_length)
        if dropped:
            warnings.append(f"{path}: {len(dropped)} of {len(records[split])} examples are longer than max_length="
                            f"{max_length} tokens and are left out (lines {dropped[:10]}{' ...' if len(dropped) > 10 else ''}); "
                            "prepare_data.py --max_tokens splits long articles.")
        if not rows[split]:
            raise DataError(f"{path}: no example fits max_length={max_length}")
        entries[split] = {"path": path, "sha256": sha256_file(path), "examples": len(records[split]),
                          "kept": len(rows[split]), "dropped_too_long": len(dropped), "dropped_lines": dropped}
    return rows, entries, warnings + overlap_warnings(files, records)


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


def eval_set_name(path: str, eval_files: list[str]) -> str:
    """The name an eval file's loss is logged under: eval_<name>_loss, or plain eval_loss for a single file.

    data/eval_known.jsonl is "known" (held-out questions about trained facts), data/eval.jsonl "unseen"
    (never-trained articles), the training file itself "train_file", any other file its stem.
    """
    if len(eval_files) == 1:
        return "eval"

    def name_of(file):
        name = Path(file).stem.removeprefix("eval_")
        return {"eval": "unseen", "train": "train_file"}.get(name, name)  # "train" names the training split

    if [name_of(other) for other in eval_files].count(name_of(path)) > 1:
        raise DataError(f"eval_file: two files would be logged as eval_{name_of(path)}_loss; rename one")
    return name_of(path)


def overlap_warnings(files: dict[str, str], records: dict[str, list[dict]]) -> list[str]:
    """Warnings for evaluation sets that are not held out from `files["train"]`: the same file, or examples
    (question and answer, whitespace aside) that are also training examples."""

    def key(record):
        return (WHITESPACE.sub(" ", record["instruction"]), WHITESPACE.sub(" ", record["response"]))

    train_path = os.path.realpath(files["train"])
    trained = {key(record) for record in records["train"]}
    warnings = []
    for split, path in files.items():
        if split == "train":
            continue
        if os.path.realpath(path) == train_path:
            warnings.append(f"{path} is both train_file and eval_file: its loss measures memorisation, not held-out data")
            continue
        shared = sum(key(record) in trained for record in records[split])
        if shared:
            warnings.append(f"{path}: {shared} of {len(records[split])} examples are also in {files['train']}; "
                            "they are not held out")
    return warnings
