"""Factoid questions and answers written by a model from each passage, kept only when grounded in it.

    passages ──prompt file──> prompts ──endpoint (cached)──> raw answers ──parse──> pairs ──filters──> kept

* The model is any OpenAI-compatible chat endpoint (`vllm serve`, llama.cpp, Ollama, a hosted API),
  called in one place, `ask_all`, through the `openai` client: a timeout, retries with backoff that
  honour Retry-After on 429 and 5xx (the client's own), and at most `concurrency` requests at a time.
  The key is OPENAI_API_KEY (or none); it is never printed or written.
* The answer is asked as JSON `{"pairs": [{"question", "answer"}]}` (response_format json_schema; a
  server that refuses the schema is asked again without it), and read also from a code fence or text.
* Each answer is cached under `cache_dir` by the hash of what was asked (model and messages: the prompt
  file and the passage), as soon as it arrives: a rerun asks nothing, an interrupted run resumes.
* Filters, in order, each counted by its reason (REASONS): a pair is kept only if its question names
  the subject and points at no text the user cannot see, its answer is Japanese and every key term of
  it (cthulhu_sft.metrics, the evaluation's own terms) appears in the passage or the article's title,
  its question is new after normalisation, and the example fits the length limit.
"""

import asyncio
import hashlib
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import openai
from tqdm import tqdm

from cthulhu_sft.data import DataError
from cthulhu_sft.examples import Passage, normalize_question
from cthulhu_sft.files import write_json_atomic
from cthulhu_sft.metrics import is_abstention, is_japanese, key_terms, match_form, unsupported_terms

PLACEHOLDERS = ("{title}", "{subject}", "{section}", "{passage}", "{count}")
TEMPERATURE = 0.2  # factual extraction: little variety needed, the passage decides the content
SCHEMA = {
    "type": "object",
    "properties": {
        "pairs": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"question": {"type": "string"}, "answer": {"type": "string"}},
                "required": ["question", "answer"],
                "additionalProperties": False,
            },
        }
    },
    "required": ["pairs"],
    "additionalProperties": False,
}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "qa_pairs", "strict": True, "schema": SCHEMA}}
REASONS = {
    "malformed": "an answer that holds no readable {\"pairs\": [...]} (counted per answer)",
    "malformed_pair": "an item without a question and an answer string",
    "points_at_text": "the question points at a text the user cannot see (この節, 本文, 上記, ...)",
    "no_subject": "the question does not name the subject",
    "not_japanese": "the answer is empty or not Japanese",
    "abstains": "the answer says it does not know (training on it would teach abstaining on trained topics)",
    "ungrounded": "a key term of the answer is not in the passage",
    "unverifiable": "the answer has no key term to check, and the passage does not state it",
    "question_ungrounded": "the question names a key term the passage does not (it would be taken as support)",
    "duplicate": "the same question (normalised) was already asked",
    "too_long": "the example does not fit the length limit",
}
POINTING = re.compile(
    r"この(?:節|項|章|段落|文章|文|記事|テキスト|資料|一覧|表|パッセージ)|本文|本節|本章|本稿|本記事|上記|上述|前述|"
    r"下記|後述|文章中|文中|記事中|与えられた|提示された|passage|the text|this section|this article",
    re.I,
)
FENCE = re.compile(r"```[a-zA-Z]*\s*(.*?)```", re.S)
POLITE_END = re.compile(r"(?:です|でした|である|だ|とされる|とされています|と呼ばれる|と呼ばれています)?[。．.!！]*$")
SHORT_ANSWER_CHARS = 20


class SynthError(RuntimeError):
    """The endpoint failed (after retries); the message is safe to print (no key)."""


@dataclass
class Writer:
    """Where and how to ask: an OpenAI-compatible endpoint and the settings of its client."""

    url: str
    model: str
    concurrency: int = 4
    timeout: float = 120.0
    retries: int = 5
    pairs: int = 5  # asked per passage at most; fewer for a short one
    max_tokens: int = 2048


@dataclass
class Report:
    """What synthesis cost and what its filters did."""

    passages: int = 0
    cached: int = 0
    requests: int = 0  # HTTP requests sent, retries included
    prompt_tokens: int = 0
    completion_tokens: int = 0
    kept: int = 0
    rejected: Counter = field(default_factory=Counter)
    served_by: set = field(default_factory=set)  # the model names the endpoint reported

    @property
    def retries(self) -> int:
        return self.requests - (self.passages - self.cached)


# ---------------------------------------------------------------------------------------------------
# Prompts


def load_prompt(path: str | os.PathLike) -> str:
    """The prompt template; a DataError (bad input) when it is missing or has no {passage}."""
    path = Path(path)
    try:
        template = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the Q&A prompt ({error})") from None
    if "{passage}" not in template:
        raise DataError(f"{path}: the Q&A prompt has no {{passage}} placeholder (it may use {', '.join(PLACEHOLDERS)})")
    return template


def render(template: str, passage: Passage, count: int) -> str:
    """The prompt for one passage: placeholders replaced, other braces (a JSON example) left as they are."""
    values = {"{title}": passage.title, "{subject}": passage.subject, "{section}": passage.section or "（導入部）",
              "{passage}": passage.text, "{count}": str(count)}
    return re.sub("|".join(map(re.escape, values)), lambda match: values[match.group(0)], template)


def pairs_wanted(passage: Passage, most: int) -> int:
    """About one pair per 80 characters, 2 at least: a short passage holds few facts."""
    return max(2, min(most, len(passage.text) // 80))


def request_key(model: str, prompt: str) -> str:
    """The cache key: a hash of everything that decides the answer."""
    asked = {"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": TEMPERATURE}
    return hashlib.sha256(json.dumps(asked, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


# ---------------------------------------------------------------------------------------------------
# The endpoint


class AnswerCache:
    """One JSON file per answer under `root`, named by its request key, written atomically.

    One run at a time per folder: temporary files that a killed run left (`.name.*.tmp`) are removed on opening.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        for stale in self.root.glob("*/.*.tmp"):
            stale.unlink(missing_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def load(self, key: str) -> dict | None:
        try:
            return json.loads(self.path(key).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def save(self, key: str, answer: dict) -> None:
        write_json_atomic(self.path(key), answer)


def ask_all(writer: Writer, prompts: list[str], cache: AnswerCache, report: Report) -> list[dict]:
    """The answer to each prompt ({"content", "model", "usage"}), from the cache or the endpoint."""
    keys = [request_key(writer.model, prompt) for prompt in prompts]
    answers = {key: answer for key in keys if (answer := cache.load(key)) is not None}
    todo = {key: prompt for key, prompt in zip(keys, prompts) if key not in answers}
    report.passages += len(prompts)
    report.cached += len(prompts) - len(todo)
    if todo:
        asyncio.run(_ask(writer, todo, cache, answers, report))
    for answer in answers.values():
        report.served_by.add(answer.get("model") or writer.model)
    return [answers[key] for key in keys]


async def _ask(writer: Writer, todo: dict[str, str], cache: AnswerCache, answers: dict, report: Report) -> None:
    api_key = os.environ.get("OPENAI_API_KEY") or "none"

    async def count_request(request):
        report.requests += 1

    client = openai.AsyncOpenAI(
        base_url=writer.url, api_key=api_key, timeout=writer.timeout, max_retries=writer.retries,
        http_client=openai.DefaultAsyncHttpxClient(event_hooks={"request": [count_request]}),
    )
    semaphore = asyncio.Semaphore(writer.concurrency)
    use_schema = [True]

    async def one(key: str, prompt: str) -> tuple[str, dict]:
        async with semaphore:
            return key, await _complete(client, writer, prompt, use_schema)

    tasks = [asyncio.ensure_future(one(key, prompt)) for key, prompt in todo.items()]
    try:
        with tqdm(total=len(tasks), desc="Q&A", unit="passage", disable=None) as progress:
            for future in asyncio.as_completed(tasks):
                key, answer = await future
                cache.save(key, answer)  # here, between awaits: an interrupt never leaves half a file
                answers[key] = answer
                report.prompt_tokens += answer["usage"].get("prompt_tokens") or 0
                report.completion_tokens += answer["usage"].get("completion_tokens") or 0
                progress.update(1)
    except (openai.APIError, ValueError) as error:  # ValueError: a body that is not JSON (a web page, say)
        done = len(answers) - report.cached
        raise SynthError(f"{describe(error, writer, api_key)}\n{done} new answer(s) of {len(tasks)} are cached in "
                         f"{cache.root}; nothing was written to the dataset. Run again to resume.") from None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.close()


async def _complete(client, writer: Writer, prompt: str, use_schema: list[bool]) -> dict:
    plain = {"model": writer.model, "messages": [{"role": "user", "content": prompt}]}
    response = None
    if use_schema[0]:
        try:
            response = await client.chat.completions.create(
                **plain, temperature=TEMPERATURE, max_tokens=writer.max_tokens, response_format=RESPONSE_FORMAT)
        except (openai.BadRequestError, openai.UnprocessableEntityError):
            # A server without structured output, or one that refuses these settings (reasoning models refuse
            # temperature): from now on the prompt alone, which asks for the same JSON in words.
            use_schema[0] = False
    if response is None:
        response = await client.chat.completions.create(**plain)
    choice = response.choices[0] if response.choices else None
    usage = response.usage
    return {
        "content": (choice.message.content if choice else None) or "",
        "finish_reason": choice.finish_reason if choice else None,
        "model": response.model,
        "usage": {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens} if usage else {},
    }


def describe(error: Exception, writer: Writer, api_key: str) -> str:
    """One plain line about a failed request, with a hint where one helps, and without the key."""
    where = f"the Q&A endpoint {writer.url}"
    if isinstance(error, openai.APIStatusError):
        detail = re.sub(r"\s+", " ", str(error.message))[:300]
        message = f"{where} answered HTTP {error.status_code}: {detail}"
        if error.status_code == 429 or error.status_code >= 500:
            message += f" (after {writer.retries} retries)"
        elif error.status_code in (401, 403):
            message += "\nThe endpoint refused the key: set OPENAI_API_KEY to one it accepts."
        elif error.status_code == 404:
            message += f"\nIs --qa_api_url the API's base URL (e.g. http://localhost:8000/v1), and --qa_model ({writer.model}) a model it serves?"
    elif isinstance(error, openai.APITimeoutError):
        message = f"{where} did not answer within {writer.timeout:g}s (after {writer.retries} retries)"
    elif isinstance(error, openai.APIError):
        message = f"cannot reach {where}: {error} (after {writer.retries} retries)"
    else:
        message = f"{where} answered something that is not JSON; is --qa_api_url the API's base URL (e.g. http://localhost:8000/v1)?"
    return message.replace(api_key, "***") if api_key != "none" else message


# ---------------------------------------------------------------------------------------------------
# Parsing and filtering


def parse_pairs(content: str) -> list | None:
    """The items of {"pairs": [...]} in `content` (bare, in a code fence, or inside text); None if there are none."""
    decoder = json.JSONDecoder()
    for candidate in (content, *FENCE.findall(content)):
        starts = [match.start() for match in re.finditer(r"[{\[]", candidate)]
        for start in starts:
            try:
                value, _ = decoder.raw_decode(candidate, start)
            except ValueError:
                continue
            if isinstance(value, dict) and isinstance(value.get("pairs"), list):
                return value["pairs"]
            if isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
                return value
    return None


def rejection(question: str, answer: str, passage: Passage) -> str | None:
    """The first filter (REASONS) one pair fails on its own, or None."""
    if POINTING.search(question):
        return "points_at_text"
    if normalize_question(passage.subject) not in normalize_question(question):
        return "no_subject"
    if not answer or not is_japanese(answer):  # the evaluation's own test
        return "not_japanese"
    if is_abstention(answer):
        return "abstains"
    if unsupported_terms(answer, passage.text, passage.title):
        return "ungrounded"
    if not key_terms(answer) and not stated_in(answer, passage):
        return "unverifiable"
    if unsupported_terms(question, passage.text, passage.title):
        return "question_ungrounded"
    return None


def stated_in(answer: str, passage: Passage) -> bool:
    """Whether the passage states the answer itself ('邪神と呼ばれています。' → 邪神), compared as the evaluation
    compares answers: for an answer with no key term, the only check there is."""
    core = POLITE_END.sub("", answer.strip()).strip().strip("「」『』")
    return bool(match_form(core)) and match_form(core) in match_form(f"{passage.title}\n{passage.text}")


def short_answer(answer: str) -> str | None:
    """The answer as a term ('1928年です。' → '1928年'), when it is one: a few characters, not ending in kana."""
    core = POLITE_END.sub("", answer.strip()).strip().strip("「」『』")
    if not core or len(core) > SHORT_ANSWER_CHARS or "、" in core or re.search(r"[\u3040-\u309F]$", core):
        return None
    return core


def synthesize(passages: list[Passage], writer: Writer, template: str, cache: AnswerCache, seen: set[str],
               fits) -> tuple[list[tuple[Passage, dict]], Report]:
    """[(passage, {"question", "answer"})] kept, in passage order, and the report.

    `seen` holds the normalised questions already in the dataset and gains the kept ones; `fits(question,
    answer)` says whether an example is within the length limit.
    """
    report = Report()
    counts = [pairs_wanted(passage, writer.pairs) for passage in passages]
    answers = ask_all(writer, [render(template, p, n) for p, n in zip(passages, counts)], cache, report)
    kept = []
    for passage, answer in zip(passages, answers):
        items = parse_pairs(answer["content"])
        if items is None:
            report.rejected["malformed"] += 1
            continue
        for item in items:
            if not (isinstance(item, dict) and isinstance(item.get("question"), str) and isinstance(item.get("answer"), str)):
                report.rejected["malformed_pair"] += 1
                continue
            question, text = item["question"].strip(), item["answer"].strip()
            reason = rejection(question, text, passage)
            if reason is None and normalize_question(question) in seen:
                reason = "duplicate"
            if reason is None and not fits(question, text):
                reason = "too_long"
            if reason:
                report.rejected[reason] += 1
                continue
            seen.add(normalize_question(question))
            kept.append((passage, {"question": question, "answer": text}))
    report.kept = len(kept)
    return kept, report
