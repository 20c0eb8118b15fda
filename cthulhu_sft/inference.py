"""Loading a base model (+ LoRA adapter) and generating answers in the exact training format.

Used by generate.py, app.py (through `stream_answer`), evaluate.py and train_sft.py's samples and knowledge
check. Prompts are built with `MistralFormat.encode_prompt`, so the model sees the very ids it was trained on
(and that mistral-common serves); answers are decoded with the same SentencePiece model. No Hugging Face
tokenizer is involved. Decoding settings not given are sft_config.yaml's sample_* values (`DecodingArguments`).
"""

import os
import queue
import sys
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

from cthulhu_sft.config import DecodingArguments, sft_defaults
from cthulhu_sft.format import MistralFormat
from cthulhu_sft.logs import quiet_bitsandbytes

DTYPES = {"auto": "auto", "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass
class Generation:
    text: str  # the answer, decoded from the ids before </s>
    token_ids: list[int]  # the generated ids, ending with </s> iff stopped (no padding)
    stopped: bool  # True iff the model emitted </s> within max_new_tokens


def is_local(name_or_path: str) -> bool:
    return os.path.isdir(name_or_path)


def model_location_problem(name_or_path: str, what: str = "model", adapter: bool = False) -> str | None:
    """Why `name_or_path` cannot be the model or adapter asked for, or None; checks local paths only.

    A value that is not a folder is taken for a Hub id unless it looks like a path: it starts with
    '.', '/' or '~', or its first component is a local folder (output/run-1 with output/ present).
    """
    if os.path.isdir(name_or_path):
        if adapter and not os.path.isfile(os.path.join(name_or_path, "adapter_config.json")):
            if os.path.isfile(os.path.join(name_or_path, "config.json")):  # a base or merged model
                return (f"{what} {name_or_path}: no adapter_config.json in this folder; it holds a model (config.json): "
                        f"load it with --base_model {name_or_path}")
            return f"{what} {name_or_path}: no adapter_config.json in this folder (a merged model is a base model)"
        return None
    first = Path(name_or_path).parts[0] if Path(name_or_path).parts else ""
    if name_or_path.startswith((".", "/", "~")) or os.path.isdir(first) or os.path.exists(name_or_path):
        return f"{what} {name_or_path}: no such folder"
    return None


def resolve_base(base: str | None, adapter: str | None, adapter_revision: str | None = None) -> str:
    """The base model: `base` if given, else the adapter's `base_model_name_or_path`, else sft_config.yaml's
    model_name_or_path (the base train_sft.py trains)."""
    if base:
        return base
    if adapter:
        from peft import PeftConfig

        recorded = PeftConfig.from_pretrained(adapter, revision=adapter_revision).base_model_name_or_path
        if not recorded:
            raise ValueError(f"{adapter}: adapter_config.json names no base_model_name_or_path; pass the base model")
        return recorded
    return sft_defaults()["model_name_or_path"]


def load_format(
    base: str | None, adapter: str | None = None, revision: str | None = None, adapter_revision: str | None = None
) -> MistralFormat:
    """The SentencePiece format of the adapter's folder or repository if it ships tokenizer.model, else of the base."""
    if adapter:
        if is_local(adapter):
            if os.path.isfile(os.path.join(adapter, "tokenizer.model")):
                return MistralFormat.from_pretrained(adapter)
        else:
            from huggingface_hub.errors import RemoteEntryNotFoundError

            try:
                return MistralFormat.from_pretrained(adapter, revision=adapter_revision)
            except RemoteEntryNotFoundError:  # absent on the Hub; being offline is an error, not absence
                pass  # an adapter repository without tokenizer files: the base model's tokenizer is the one
    return MistralFormat.from_pretrained(resolve_base(base, adapter, adapter_revision), revision=revision)


def load_model(
    base: str | None,
    adapter: str | None = None,
    load_in_8bit: bool = False,
    load_in_4bit: bool = False,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    revision: str | None = None,
    adapter_revision: str | None = None,
):
    """The base model (optionally 8- or 4-bit) plus the adapter (a PeftModel) if given, in eval mode.

    `base` and `adapter` are local folders or Hub ids; with `base` None the adapter's recorded base is used.
    A merged model is loaded as a base without adapter. `revision` is the base's, `adapter_revision` the adapter's.
    """
    from transformers import AutoModelForCausalLM
    from trl import ModelConfig, get_quantization_config

    if load_in_8bit and load_in_4bit:
        raise ValueError("choose one of load_in_8bit and load_in_4bit")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    base = resolve_base(base, adapter, adapter_revision)
    if load_in_8bit:
        quiet_bitsandbytes()
    # The quantization training uses (TRL's, from the same ModelConfig fields); 4-bit computes in bf16 for "auto"
    compute = "bfloat16" if dtype == "auto" else dtype
    quantization = ModelConfig(load_in_8bit=load_in_8bit, load_in_4bit=load_in_4bit, dtype=compute)
    model = AutoModelForCausalLM.from_pretrained(
        base,
        dtype=DTYPES[dtype],
        quantization_config=get_quantization_config(quantization),
        # One process, inference only: spread over the visible GPUs, or stay on the CPU.
        device_map="auto" if torch.cuda.is_available() else None,
        trust_remote_code=trust_remote_code,
        revision=revision,
    )
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter, revision=adapter_revision, is_trainable=False)
    model.eval()
    return model


def _input_device(model) -> torch.device:
    return model.get_input_embeddings().weight.device


def _left_padded(prompts: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(ids) for ids in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, ids in enumerate(prompts):
        input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, width - len(ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


class _EvalMode:
    """Puts a model in eval mode for a block and restores its training flag afterwards."""

    def __init__(self, model):
        self.model, self.was_training = model, model.training

    def __enter__(self):
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was_training)


def decoding_options(temperature: float, top_p: float, repetition_penalty: float) -> dict:
    """transformers' generate() settings for these: greedy at temperature 0, else sampling with temperature and
    nucleus only (top_k=0 switches off transformers' default top_k=50)."""
    if temperature > 0:
        sampler = dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        sampler = dict(do_sample=False)
    return sampler | dict(repetition_penalty=repetition_penalty)


def generate(
    model,
    fmt: MistralFormat,
    conversations: list[list[dict]],
    batch_size: int = 8,
    streamer=None,
    progress=None,
    **decoding,
) -> list[Generation]:
    """Answers each conversation (alternating user/assistant messages ending with a user message).

    `decoding` are DecodingArguments' fields (temperature, top_p, repetition_penalty, max_new_tokens, seed); those
    not given are sft_config.yaml's. Prompts are `fmt.encode_prompt(conversation)`, left-padded into batches of
    similar length; temperature 0 is greedy decoding, and in float32 greedy results do not depend on the batch size (in bf16 or 8-bit, left
    padding can change rounding and so, rarely, a token). `seed` seeds sampling once, before the
    first batch. `streamer` (one conversation only) receives the tokens as they come; `progress` (e.g. a tqdm
    bar) is advanced by the number of answers in each finished batch. Results are in the input order.
    """
    decoding = DecodingArguments(**decoding)
    problem = decoding.problem()
    if problem:
        raise ValueError(problem)
    if streamer is not None and len(conversations) != 1:
        raise ValueError("streaming needs exactly one conversation")
    if decoding.seed is not None:
        from transformers import set_seed

        set_seed(decoding.seed)
    options = dict(
        **decoding_options(decoding.temperature, decoding.top_p, decoding.repetition_penalty),
        max_new_tokens=decoding.max_new_tokens,
        num_beams=1,
        eos_token_id=fmt.eos_id,
        pad_token_id=fmt.eos_id,
        bos_token_id=fmt.bos_id,
        use_cache=True,  # training may have switched the cache off for gradient checkpointing
    )
    prompts = [fmt.encode_prompt(conversation) for conversation in conversations]
    order = sorted(range(len(prompts)), key=lambda index: -len(prompts[index]))  # longest first: OOM early
    results: list[Generation | None] = [None] * len(prompts)
    device = _input_device(model)
    with _EvalMode(model), torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            input_ids, attention_mask = _left_padded([prompts[index] for index in batch], fmt.eos_id, device)
            output = model.generate(
                input_ids=input_ids, attention_mask=attention_mask, streamer=streamer, **options
            )
            for row, index in enumerate(batch):
                new_ids = output[row, input_ids.shape[1] :].tolist()
                stopped = fmt.eos_id in new_ids
                if stopped:
                    new_ids = new_ids[: new_ids.index(fmt.eos_id) + 1]
                answer_ids = new_ids[:-1] if stopped else new_ids
                results[index] = Generation(text=fmt.decode(answer_ids), token_ids=new_ids, stopped=stopped)
            if progress is not None:
                progress.update(len(batch))
    return results


class AnswerPrinter(BaseStreamer):
    """Streams one answer to a text stream as it is generated, decoded with MistralFormat.

    Japanese characters often span several byte-fallback tokens; text ending in an incomplete character
    (decoded as U+FFFD) is held back until the character is complete, so what is printed equals
    `fmt.decode` of the whole answer.
    """

    def __init__(self, fmt: MistralFormat, stream=None):
        self.fmt, self.stream = fmt, stream or sys.stdout
        self._reset()

    def _reset(self):
        self.prompt_seen, self.ids, self.printed = False, [], ""

    def put(self, value):
        if value.dim() > 1 and value.shape[0] != 1:
            raise ValueError("AnswerPrinter streams a single answer")
        if not self.prompt_seen:  # generate() first pushes the prompt
            self.prompt_seen = True
            return
        self.ids.extend(value.flatten().tolist())
        self._write(final=False)

    def end(self):
        self._write(final=True)
        self.stream.write("\n")
        self.stream.flush()
        self._reset()

    def _write(self, final: bool):
        ids = self.ids[: self.ids.index(self.fmt.eos_id)] if self.fmt.eos_id in self.ids else self.ids
        text = self.fmt.decode(ids)
        if not final:
            text = text.rstrip("\ufffd")
        if text.startswith(self.printed) and len(text) > len(self.printed):
            self.stream.write(text[len(self.printed) :])
            self.stream.flush()
            self.printed = text


class _AnswerQueue(AnswerPrinter):
    """An AnswerPrinter whose text goes to a queue, read in another thread; it aborts generate() once cancelled."""

    def __init__(self, fmt: MistralFormat):
        super().__init__(fmt, stream=self)
        self.queue, self.cancelled = queue.Queue(), threading.Event()

    def put(self, value):
        if self.cancelled.is_set():
            raise _Cancelled  # the only way to stop model.generate() between two tokens from outside
        super().put(value)

    def end(self):
        self._write(final=True)
        self._reset()

    def write(self, text: str):
        self.queue.put(text)

    def flush(self):
        pass


class _Cancelled(Exception):
    pass


def stream_answer(
    model, fmt: MistralFormat, conversation: list[dict], use_adapter: bool = True, **options
) -> Iterator[tuple[str, Generation | None]]:
    """Streams `generate()`'s answer to one conversation: yields (text so far, None) as tokens come, then
    (answer text, Generation) once done.

    `options` are generate()'s (temperature, top_p, max_new_tokens, seed, ...). With `use_adapter` False a
    PeftModel answers with its adapter disabled (PEFT's `disable_adapter`), i.e. as the base model: one model
    in memory serves both. Generation runs in a thread; closing the iterator early stops it at the next token
    and waits for it, so the model is free (and its adapter enabled) when this returns. Callers that share one
    model between threads must serialise calls.
    """
    from peft import PeftModel

    streamer = _AnswerQueue(fmt)
    adapter_off = model.disable_adapter() if not use_adapter and isinstance(model, PeftModel) else nullcontext()

    def run():
        try:
            with adapter_off:
                [answer] = generate(model, fmt, [conversation], streamer=streamer, **options)
            streamer.queue.put(answer)
        except BaseException as error:  # handed to the reading thread, which re-raises it
            streamer.queue.put(error)

    thread = threading.Thread(target=run, name="stream_answer", daemon=True)
    thread.start()
    text = ""
    try:
        while True:
            item = streamer.queue.get()
            if isinstance(item, str):
                text += item
                yield text, None
            elif isinstance(item, Generation):
                yield item.text, item
                return
            else:
                raise item
    finally:
        streamer.cancelled.set()
        thread.join()
