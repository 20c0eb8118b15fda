"""The model that writes and checks the synthetic data: one interface, three backends, one cache.

    answers = ask(writer, requests, cache, usage, "facts")   # [{"content", "finish_reason", "model", "usage"}]

A `Request` is one user message with the JSON schema its answer should follow (response_format json_schema
`name`), a temperature and a token limit. Every backend answers a list of them and hands each answer over as
soon as it has it, so `ask` caches it at once: a rerun asks nothing, an interrupted run resumes. The cache key is
the request's content and the model name, not the backend: answers written through an endpoint serve a local run
of the same model and the other way round.

Backends (`--qa_backend`; `auto` picks openai when --qa_api_url is given, else on a CUDA machine vllm when it
imports, otherwise transformers, else none):
* openai       an OpenAI-compatible chat endpoint (`vllm serve`, llama.cpp, Ollama, a hosted API) through the
               `openai` client: at most `concurrency` requests at a time, the client's retries with backoff
               (Retry-After honoured on 429 and 5xx), response_format json_schema, and the prompt alone (which
               asks for the same JSON in words) once a server refuses the schema. `timeout` bounds each whole
               request, answer included (a server that trickles bytes is cut off), and an answer over
               MAX_ANSWER_BYTES is not read: it is skipped and counted (`too_large`). The key is
               OPENAI_API_KEY (or none); it is never printed or written.
* vllm         vLLM's offline `LLM` with guided JSON decoding (structured outputs), the model's chat template.
* transformers batched generation (left padding) in bf16 on CUDA, float32 on the CPU, through
               cthulhu_sft.inference: prompts in the exact Mistral format of cthulhu_sft/format.py, the base
               model's own. No guided decoding: the answer is parsed leniently and rejected when unreadable.
A local writer frees the GPU in `close()` (del, gc, torch.cuda.empty_cache) before anything else needs it.
"""

import asyncio
import contextlib
import gc
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from cthulhu_sft.files import remove_stale_temporaries, write_json_atomic

logger = logging.getLogger(__name__)

BACKENDS = ("auto", "openai", "vllm", "transformers", "none")
MAX_ANSWER_BYTES = 256 * 1024  # an answer of 2048 tokens of JSON-escaped Japanese is about 15 KB
TOO_LARGE = "x-cthulhu-too-large"  # marks the stand-in response the size limit puts in place of a huge answer
LOCAL_CHUNK = 32  # requests a local backend generates between two saves to the cache
CONCURRENCY = 4  # requests at a time to an endpoint
TIMEOUT = 120.0  # seconds for one whole request to an endpoint, answer included
RETRIES = 5  # of a request that fails (429, 5xx, timeouts)
BATCH_SIZE = 16  # prompts a transformers writer generates together (a 7B in bf16 on an A100 80GB has room)


class WriterError(RuntimeError):
    """The writer failed (after retries); the message is safe to print (no key)."""


@dataclass(frozen=True)
class Request:
    prompt: str  # the user message
    name: str  # the response_format json_schema name: qa_facts, qa_verdict, passage_rewrite
    schema: dict
    temperature: float
    max_tokens: int
    vote: int = 0  # the n-th asking of the same question (verification votes): its own answer

    def key(self, model: str) -> str:
        """The cache key: a hash of everything that decides the answer, whatever backend gives it."""
        asked = {"model": model, "messages": [{"role": "user", "content": self.prompt}], "schema": self.name,
                 "json_schema": self.schema, "temperature": self.temperature, "max_tokens": self.max_tokens,
                 "vote": self.vote}
        return hashlib.sha256(json.dumps(asked, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


@dataclass
class Usage:
    """What asking cost: answers from the cache and new ones, requests sent (retries included), tokens."""

    cached: int = 0
    generated: int = 0
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    served_by: set = field(default_factory=set)  # the model names the backend reported


# ---------------------------------------------------------------------------------------------------
# The cache


class AnswerCache:
    """One JSON file per answer under `root`, named by its request key, written atomically.

    An answer file that cannot be read or is not an answer ({"content": str, ...}) is warned about, with its path,
    and asked again. Temporary files that a killed run left (`.name.*.tmp`) are removed on opening; those of a run
    still writing are left alone.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        remove_stale_temporaries(self.root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def load(self, key: str) -> dict | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            answer = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            logger.warning("%s: unreadable cached answer (%s); asking again", path, type(error).__name__)
            return None
        if not (isinstance(answer, dict) and isinstance(answer.get("content"), str)):
            logger.warning("%s: not a cached answer (expected an object with a \"content\" string); asking again", path)
            return None
        return answer

    def save(self, key: str, answer: dict) -> None:
        write_json_atomic(self.path(key), answer)


def ask(writer, requests: list[Request], cache: AnswerCache, usage: Usage, desc: str) -> list[dict]:
    """The answer to each request, from the cache or the writer, in order; a progress bar with an ETA."""
    keys = [request.key(writer.model) for request in requests]
    answers = {key: answer for key in dict.fromkeys(keys) if (answer := cache.load(key)) is not None}
    todo = {key: request for key, request in zip(keys, requests) if key not in answers}
    usage.cached += sum(key not in todo for key in keys)
    sent = writer.requests
    if todo:
        order = list(todo)
        with tqdm(total=len(order), desc=desc, unit="request", disable=None) as progress:
            def done(index: int, answer: dict) -> None:
                cache.save(order[index], answer)
                answers[order[index]] = answer
                usage.generated += 1
                usage.prompt_tokens += answer["usage"].get("prompt_tokens", 0)
                usage.completion_tokens += answer["usage"].get("completion_tokens", 0)
                progress.update(1)

            writer.generate([todo[key] for key in order], done)
        usage.requests += writer.requests - sent
    for key in keys:
        model = answers[key].get("model")
        usage.served_by.add(model if isinstance(model, str) and model else writer.model)
    return [answers[key] for key in keys]


def answer_record(content, finish_reason=None, model=None, prompt_tokens=0, completion_tokens=0) -> dict:
    """An answer as cached: every field of the right type, whatever the backend sent."""
    def count(value) -> int:
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    return {"content": content if isinstance(content, str) else "",
            "finish_reason": finish_reason if isinstance(finish_reason, str) else None,
            "model": model if isinstance(model, str) else None,
            "usage": {"prompt_tokens": count(prompt_tokens), "completion_tokens": count(completion_tokens)}}


# ---------------------------------------------------------------------------------------------------
# Choosing and making a writer


def resolve_backend(choice: str, url: str | None) -> str:
    """`auto` made concrete: openai with a URL, else a local writer on a CUDA machine, else none."""
    if choice != "auto":
        return choice
    if url:
        return "openai"
    import torch

    if not torch.cuda.is_available():
        return "none"
    return "vllm" if importlib.util.find_spec("vllm") else "transformers"


def make_writer(backend: str, model: str, url: str | None = None, concurrency: int = CONCURRENCY,
                timeout: float = TIMEOUT, retries: int = RETRIES, batch_size: int = BATCH_SIZE):
    """A writer of a concrete backend (not auto, not none)."""
    if backend == "openai":
        return OpenAIWriter(url, model, concurrency=concurrency, timeout=timeout, retries=retries)
    if backend == "vllm":
        return VLLMWriter(model)
    if backend == "transformers":
        return TransformersWriter(model, batch_size=batch_size)
    raise ValueError(f"no writer for backend {backend!r}")


# ---------------------------------------------------------------------------------------------------
# openai: an OpenAI-compatible endpoint


def http_library():
    """The HTTP library the openai client is built on: httpx, or its fork httpx2 (openai 3)."""
    import openai

    return importlib.import_module(openai.DefaultAsyncHttpxClient.__mro__[1].__module__.split(".")[0])


def bounded_transport(seconds: float, max_bytes: int):
    """An httpx transport that bounds each whole request in time and its answer in bytes.

    httpx's read timeout bounds the gap between two chunks, so a server sending a byte a second never times out;
    here the request, body included, must be done within `seconds` (else ReadTimeout, retried by the client like
    any timeout). A body over `max_bytes` is not read further: the client gets a 413 that says so (marked with
    TOO_LARGE and x-should-retry: false), which `OpenAIWriter` records as a skipped answer.
    """
    httpx = http_library()

    class BoundedTransport(httpx.AsyncBaseTransport):
        def __init__(self):
            self.inner = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request):
            try:
                async with asyncio.timeout(seconds):
                    response = await self.inner.handle_async_request(request)
                    body = bytearray()
                    try:
                        async for chunk in response.stream:
                            body += chunk
                            if len(body) > max_bytes:
                                message = {"error": {"message": f"the answer exceeds {max_bytes} bytes; not read"}}
                                return httpx.Response(413, json=message, request=request,
                                                      headers={TOO_LARGE: "1", "x-should-retry": "false"})
                    finally:
                        await response.aclose()
            except TimeoutError:
                raise httpx.ReadTimeout(f"no whole answer within {seconds:g}s", request=request) from None
            headers = [(name, value) for name, value in response.headers.multi_items()
                       if name.lower() not in ("content-length", "transfer-encoding")]
            return httpx.Response(response.status_code, headers=headers, content=bytes(body), request=request)

        async def aclose(self):
            await self.inner.aclose()

    return BoundedTransport()


class OpenAIWriter:
    backend = "openai"

    def __init__(self, url: str, model: str, concurrency: int = CONCURRENCY, timeout: float = TIMEOUT,
                 retries: int = RETRIES):
        self.url, self.model, self.concurrency, self.timeout, self.retries = url, model, concurrency, timeout, retries
        self.requests = 0  # HTTP requests sent, retries included
        # per schema name, what the server accepts: 0 response_format and settings, 1 settings, 2 the prompt alone
        self.levels: dict[str, int] = {}

    def generate(self, requests: list[Request], done: Callable[[int, dict], None]) -> None:
        asyncio.run(self._generate(requests, done))

    def close(self) -> None:
        pass

    async def _generate(self, requests: list[Request], done) -> None:
        import openai

        api_key = os.environ.get("OPENAI_API_KEY") or "none"

        async def count_request(request):
            self.requests += 1

        transport = bounded_transport(self.timeout, MAX_ANSWER_BYTES)
        client = openai.AsyncOpenAI(
            base_url=self.url, api_key=api_key, timeout=self.timeout, max_retries=self.retries,
            http_client=openai.DefaultAsyncHttpxClient(transport=transport, event_hooks={"request": [count_request]}),
        )
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(index: int, request: Request) -> tuple[int, dict]:
            async with semaphore:
                return index, await self._complete(client, request)

        tasks = [asyncio.ensure_future(one(index, request)) for index, request in enumerate(requests)]
        received = 0
        try:
            for future in asyncio.as_completed(tasks):
                index, result = await future
                done(index, result)  # here, between awaits: an interrupt never leaves half a file
                received += 1
        except (openai.APIError, ValueError) as error:  # ValueError: a body that is not JSON (a web page, say)
            raise WriterError(f"{self.describe(error, api_key)}\n{received} new answer(s) of {len(tasks)} are "
                              "cached; nothing was written to the dataset. Run again to resume.") from None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await client.close()

    async def _complete(self, client, request: Request) -> dict:
        import openai

        messages = [{"role": "user", "content": request.prompt}]
        settings = {"temperature": request.temperature, "max_tokens": request.max_tokens}
        schema = {"type": "json_schema", "json_schema": {"name": request.name, "strict": True, "schema": request.schema}}
        while True:
            level = self.levels.get(request.name, 0)
            extra = ({**settings, "response_format": schema}, settings, {})[level]
            try:
                response = await client.chat.completions.create(model=self.model, messages=messages, **extra)
                break
            except (openai.BadRequestError, openai.UnprocessableEntityError):
                # A server without structured output, or one that refuses these settings (reasoning models refuse
                # temperature): from now on less, down to the prompt alone, which asks for the same JSON in words.
                if level == 2:
                    raise
                self.levels[request.name] = max(self.levels.get(request.name, 0), level + 1)
            except openai.APIStatusError as error:
                if error.response.headers.get(TOO_LARGE):
                    return {**answer_record(""), "skipped": "too_large"}
                raise
        try:
            choice = response.choices[0]
            content, finish = choice.message.content, choice.finish_reason
        except (AttributeError, IndexError, KeyError, TypeError):
            content, finish = "", None
        usage = getattr(response, "usage", None)  # a server may send anything here, a string included
        return answer_record(content, finish, getattr(response, "model", None), getattr(usage, "prompt_tokens", 0),
                      getattr(usage, "completion_tokens", 0))

    def describe(self, error: Exception, api_key: str) -> str:
        """One plain line about a failed request, with a hint where one helps, and without the key."""
        import openai

        where = f"the Q&A endpoint {self.url}"
        if isinstance(error, openai.APIStatusError):
            detail = re.sub(r"\s+", " ", str(error.message))[:300]
            message = f"{where} answered HTTP {error.status_code}: {detail}"
            if error.status_code == 429 or error.status_code >= 500:
                message += f" (after {self.retries} retries)"
            elif error.status_code in (401, 403):
                message += "\nThe endpoint refused the key: set OPENAI_API_KEY to one it accepts."
            elif error.status_code == 404:
                message += (f"\nIs --qa_api_url the API's base URL (e.g. http://localhost:8000/v1), and --qa_model "
                            f"({self.model}) a model it serves?")
        elif isinstance(error, openai.APITimeoutError):
            message = f"{where} did not answer in full within {self.timeout:g}s (after {self.retries} retries)"
        elif isinstance(error, openai.APIError):
            message = f"cannot reach {where}: {error} (after {self.retries} retries)"
        else:
            message = (f"{where} answered something that is not JSON; is --qa_api_url the API's base URL "
                       "(e.g. http://localhost:8000/v1)?")
        return message.replace(api_key, "***") if api_key != "none" else message


# ---------------------------------------------------------------------------------------------------
# Local writers


@contextlib.contextmanager
def loading(model: str):
    """A model that cannot be loaded (not downloaded and offline, gated, too large) is one plain WriterError."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as error:
        first = (str(error).splitlines() or [""])[0][:300]
        raise WriterError(f"cannot load the writer model {model}: {type(error).__name__}: {first}\n"
                          "Pass --qa_model a model this machine can load (a local folder, or a Hub id with access), "
                          "--qa_api_url for an endpoint, or --qa_backend none.") from None


def free_gpu() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class VLLMWriter:
    """vLLM's offline engine, loaded on first use; guided JSON decoding with each request's schema."""

    backend = "vllm"

    def __init__(self, model: str):
        self.model, self.requests, self.llm = model, 0, None

    def generate(self, requests: list[Request], done) -> None:
        from vllm import LLM, SamplingParams

        if self.llm is None:
            with loading(self.model):
                self.llm = LLM(model=self.model, dtype="bfloat16", seed=0)
        for start in range(0, len(requests), LOCAL_CHUNK):
            chunk = requests[start:start + LOCAL_CHUNK]
            params = [SamplingParams(temperature=r.temperature, max_tokens=r.max_tokens, seed=r.vote,
                                     **guided_json(r.schema)) for r in chunk]
            outputs = self.llm.chat([[{"role": "user", "content": r.prompt}] for r in chunk], params, use_tqdm=False)
            self.requests += len(chunk)
            for offset, output in enumerate(outputs):
                completion = output.outputs[0]
                done(start + offset, answer_record(completion.text, completion.finish_reason, self.model,
                                            len(output.prompt_token_ids or []), len(completion.token_ids)))

    def close(self) -> None:
        self.llm = None
        free_gpu()


def guided_json(schema: dict) -> dict:
    """SamplingParams' guided JSON setting: structured_outputs from vLLM 0.11, guided_decoding before."""
    try:
        from vllm.sampling_params import StructuredOutputsParams
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=schema)}
    return {"structured_outputs": StructuredOutputsParams(json=schema)}


class TransformersWriter:
    """transformers' generate, batched with left padding, in the exact Mistral format (cthulhu_sft.inference)."""

    backend = "transformers"

    def __init__(self, model: str, batch_size: int = BATCH_SIZE):
        self.model, self.batch_size, self.requests = model, batch_size, 0
        self.loaded = self.fmt = None

    def generate(self, requests: list[Request], done) -> None:
        import torch

        from cthulhu_sft import inference

        if self.loaded is None:
            with loading(self.model):
                self.fmt = inference.load_format(self.model)
                self.loaded = inference.load_model(self.model, dtype="bfloat16" if torch.cuda.is_available() else "float32")
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(requests):  # one batch shares its decoding settings
            groups.setdefault((request.temperature, request.max_tokens, request.vote), []).append(index)
        for (temperature, max_tokens, vote), indices in groups.items():
            for start in range(0, len(indices), LOCAL_CHUNK):
                chunk = indices[start:start + LOCAL_CHUNK]
                results = inference.generate(
                    self.loaded, self.fmt, [[{"role": "user", "content": requests[i].prompt}] for i in chunk],
                    batch_size=self.batch_size, temperature=temperature, top_p=1.0, repetition_penalty=1.0,
                    max_new_tokens=max_tokens, seed=vote)
                self.requests += len(chunk)
                for index, result in zip(chunk, results):
                    prompt = len(self.fmt.encode_prompt([{"role": "user", "content": requests[index].prompt}]))
                    done(index, answer_record(result.text, "stop" if result.stopped else "length", self.model, prompt,
                                       len(result.token_ids)))

    def close(self) -> None:
        self.loaded = None
        free_gpu()
