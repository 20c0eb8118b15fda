"""An optional model grader beside the rules: any OpenAI-compatible endpoint grades each answer against its
question and accepted answers as correct, incorrect or not attempted (prompts/grade_ja.md, A / B / C).

The key comes from an environment variable (JUDGE_API_KEY by default), is sent only to the endpoint, and is never
written or printed. Verdicts are cached in a JSONL file by the sha256 of (model, prompt): a rerun asks nothing
again, and an interrupted one keeps what it was told.
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .data import DataError
from .files import write_text_atomic
from .grading import CORRECT, INCORRECT, NOT_ATTEMPTED

PROMPT = Path(__file__).resolve().parent.parent / "prompts" / "grade_ja.md"
PLACEHOLDERS = ("{question}", "{accepted}", "{answer}")
VERDICTS = {"A": CORRECT, "B": INCORRECT, "C": NOT_ATTEMPTED, "正解": CORRECT, "不正解": INCORRECT, "未回答": NOT_ATTEMPTED}
VERDICT = re.compile(r"不正解|未回答|正解|\b[ABC]\b|^[ABC]")


class JudgeError(RuntimeError):
    pass


@dataclass
class JudgeSettings:
    api_url: str
    model: str
    api_key_env: str = "JUDGE_API_KEY"
    prompt_file: str = str(PROMPT)
    cache_file: str = ".cache/judge.jsonl"
    timeout: float = 60.0
    retries: int = 3


def load_prompt(path: str) -> str:
    try:
        template = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: cannot read the grading prompt ({error})") from None
    missing = [name for name in PLACEHOLDERS if name not in template]
    if missing:
        raise DataError(f"{path}: the grading prompt lacks {', '.join(missing)}")
    return template


def parse_verdict(text: str) -> str | None:
    """The grade a reply gives (A/B/C or 正解/不正解/未回答, the first one named); None when it gives none."""
    match = VERDICT.search(text.strip())
    return VERDICTS[match[0]] if match else None


class Judge:
    def __init__(self, settings: JudgeSettings):
        import openai

        self.settings = settings
        self.template = load_prompt(settings.prompt_file)
        self.client = openai.OpenAI(base_url=settings.api_url, api_key=os.environ.get(settings.api_key_env) or "none",
                                    timeout=settings.timeout, max_retries=settings.retries)
        self.cache = self._read_cache()
        self.asked = 0

    def _read_cache(self) -> dict[str, str]:
        cache = {}
        path = Path(self.settings.cache_file)
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line cut by an interrupt: asked again
                if isinstance(entry, dict) and entry.get("grade") in VERDICTS.values():
                    cache[entry.get("key")] = entry["grade"]
        return cache

    def prompt(self, question: str, accepted: list[str], answer: str) -> str:
        values = {"{question}": question, "{accepted}": "、".join(accepted), "{answer}": answer or "（空）"}
        return re.sub("|".join(map(re.escape, PLACEHOLDERS)), lambda match: values[match[0]], self.template)

    def grade(self, items: list[tuple[str, list[str], str]]) -> list[str]:
        """The judge's grade of each (question, accepted answers, answer)."""
        grades = []
        for question, accepted, answer in items:
            prompt = self.prompt(question, accepted, answer)
            key = hashlib.sha256(json.dumps([self.settings.model, prompt], ensure_ascii=False).encode()).hexdigest()
            if key not in self.cache:
                self.cache[key] = self._ask(prompt)
                self._save(key, self.cache[key])
            grades.append(self.cache[key])
        return grades

    def _ask(self, prompt: str) -> str:
        import openai

        try:
            reply = self.client.chat.completions.create(
                model=self.settings.model, messages=[{"role": "user", "content": prompt}], temperature=0, max_tokens=8)
            content = reply.choices[0].message.content or ""
        except (openai.APIError, ValueError, AttributeError, IndexError, TypeError) as error:
            raise JudgeError(f"the judge at {self.settings.api_url} failed: {type(error).__name__}: "
                             f"{str(error)[:300]}") from None
        self.asked += 1
        verdict = parse_verdict(content)
        if verdict is None:
            raise JudgeError(f"the judge at {self.settings.api_url} gave no grade (A, B or C): {content[:200]!r}")
        return verdict

    def _save(self, key: str, grade: str) -> None:
        path = Path(self.settings.cache_file)
        path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"key": key, "model": self.settings.model, "grade": grade}) + "\n"
        if not path.exists():
            write_text_atomic(path, line)
            return
        with open(path, "a", encoding="utf-8") as file:  # one short line per verdict; a torn last line is skipped
            file.write(line)
