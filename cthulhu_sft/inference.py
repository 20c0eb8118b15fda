"""Loading a base model (+ LoRA adapter) and generating answers in the exact training format.

Used by generate.py, app.py (through `stream_answer`), evaluate.py and train_sft.py's post-training sample.
Prompts are built with `MistralFormat.encode_prompt`, so the model sees the very ids it was trained on (and
that mistral-common serves); answers are decoded with the same SentencePiece model. No Hugging Face tokenizer
is involved.

Generation defaults (the argparse defaults of generate.py and evaluate.py) favour accuracy:
    temperature 0.2   near-greedy: almost always the most likely token, which is what limits invention,
                      without greedy decoding's habit of locking a small LoRA into repeated phrases.
                      0 means greedy; evaluate.py's --temperatures sweep measures the trade-off on your data.
    top_p 0.9         drops the long tail of unlikely tokens when sampling (top_k is switched off).
    repetition_penalty 1.05
                      mild: Japanese repeats particles (の, は, 。) and the question's names legitimately;
                      stronger values push the model to paraphrase names, which reads as invention.
    max_new_tokens 512
                      room for a full answer (prepare_data.py's answers are mostly much shorter) while bounding
                      a model that never stops; evaluate.py's EOS-stop rate shows whether it stops by itself.
"""

import os
import queue
import shutil
import sys
import threading
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers.generation.streamers import BaseStreamer

from cthulhu_sft.data import FIELD_SHAPES, load_items
from cthulhu_sft.format import CHAT_TEMPLATE, IGNORE_INDEX, MistralFormat

SFT_CONFIG = Path(__file__).resolve().parent.parent / "sft_config.yaml"
DEFAULT_TEMPERATURE = 0.2
DEFAULT_TOP_P = 0.9
DEFAULT_REPETITION_PENALTY = 1.05
DEFAULT_MAX_NEW_TOKENS = 512
DEFAULT_SEED = 0

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
    return default_base_model()


def default_base_model() -> str:
    import yaml

    return yaml.safe_load(SFT_CONFIG.read_text(encoding="utf-8"))["model_name_or_path"]


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
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    if load_in_8bit and load_in_4bit:
        raise ValueError("choose one of load_in_8bit and load_in_4bit")
    if dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    base = resolve_base(base, adapter, adapter_revision)
    quantization_config = None
    if load_in_8bit:
        quantization_config = BitsAndBytesConfig(load_in_8bit=True)
    elif load_in_4bit:
        compute_dtype = torch.bfloat16 if DTYPES[dtype] == "auto" else DTYPES[dtype]
        quantization_config = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype
        )
    model = AutoModelForCausalLM.from_pretrained(
        base,
        dtype=DTYPES[dtype],
        quantization_config=quantization_config,
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


def decoding_options(
    temperature: float, top_p: float = DEFAULT_TOP_P, repetition_penalty: float = DEFAULT_REPETITION_PENALTY
) -> dict:
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
    temperature: float = DEFAULT_TEMPERATURE,
    top_p: float = DEFAULT_TOP_P,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    repetition_penalty: float = DEFAULT_REPETITION_PENALTY,
    seed: int | None = DEFAULT_SEED,
    batch_size: int = 8,
    streamer=None,
    progress=None,
) -> list[Generation]:
    """Answers each conversation (alternating user/assistant messages ending with a user message).

    Prompts are `fmt.encode_prompt(conversation)`, left-padded into batches of similar length; temperature 0 is
    greedy decoding, and in float32 greedy results do not depend on the batch size (in bf16 or 8-bit, left
    padding can change rounding and so, rarely, a token). `seed` seeds sampling once, before the
    first batch. `streamer` (one conversation only) receives the tokens as they come; `progress` (e.g. a tqdm
    bar) is advanced by the number of answers in each finished batch. Results are in the input order.
    """
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if streamer is not None and len(conversations) != 1:
        raise ValueError("streaming needs exactly one conversation")
    if seed is not None:
        from transformers import set_seed

        set_seed(seed)
    options = dict(
        **decoding_options(temperature, top_p, repetition_penalty),
        max_new_tokens=max_new_tokens,
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


def answer_losses(model, fmt: MistralFormat, pairs: list[tuple[str, str]], batch_size: int = 8, progress=None):
    """Summed negative log-likelihood and token count of each reference answer, as in training.

    The loss covers the answer's tokens and its closing </s> (the labels of `fmt.encode_example`), in nats.
    Returns [(nll_sum, n_tokens), ...] in the input order.
    """
    examples = [fmt.encode_example(instruction, response) for instruction, response in pairs]
    order = sorted(range(len(examples)), key=lambda index: -len(examples[index].input_ids))
    results: list[tuple[float, int] | None] = [None] * len(examples)
    device = _input_device(model)
    with _EvalMode(model), torch.inference_mode():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = max(len(examples[index].input_ids) for index in batch)
            input_ids = torch.full((len(batch), width), fmt.eos_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            attention_mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, index in enumerate(batch):
                example = examples[index]
                length = len(example.input_ids)
                input_ids[row, :length] = torch.tensor(example.input_ids)
                labels[row, :length] = torch.tensor(example.labels)
                attention_mask[row, :length] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
            targets = labels[:, 1:].to(logits.device)
            nll = torch.nn.functional.cross_entropy(
                logits[:, :-1].float().transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
            )
            for row, index in enumerate(batch):
                mask = targets[row] != IGNORE_INDEX
                results[index] = (float(nll[row][mask].sum()), int(mask.sum()))
            if progress is not None:
                progress.update(len(batch))
    return results


def read_prompts(path: str | os.PathLike) -> list[dict]:
    """Reads a prompts file: JSONL (or a JSON array) of objects with a non-empty string 'instruction'.

    The original notebook's 'text' is accepted for 'instruction'; other fields (a reference 'response',
    'title', ...) are kept. Each record gets 'instruction' (stripped) and 'line'. Raises DataError naming
    file, line and field.
    """
    return load_items(path, _to_prompt)


def _to_prompt(item) -> tuple[dict | None, str | None]:
    if not isinstance(item, dict):
        return None, f"expected a JSON object, got {type(item).__name__}"
    key = next((shape[0] for shape in FIELD_SHAPES if shape[0] in item), None)
    value = item.get(key) if key else None
    if key is None:
        return None, "field 'instruction': missing"
    if not isinstance(value, str):
        return None, f"field '{key}': expected a string, got {type(value).__name__}"
    if not value.strip():
        return None, f"field '{key}': empty"
    return {**{k: v for k, v in item.items() if k != key}, "instruction": value.strip()}, None


def merge_adapter(
    base: str | None,
    adapter: str,
    output_dir: str | os.PathLike,
    dtype: str = "bfloat16",
    trust_remote_code: bool = False,
    revision: str | None = None,
    adapter_revision: str | None = None,
) -> Path:
    """Merges the adapter into an unquantized copy of the base and saves a standalone model for serving.

    The folder gets the weights (safetensors), the tokenizer with the training chat template, and
    tokenizer.model so that `MistralFormat.from_pretrained(output_dir)` works. It is written next to its
    final place and renamed into it, so it appears complete or not at all.
    """
    from transformers import AutoTokenizer

    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} exists and is not empty; remove it or choose another folder")
    base = resolve_base(base, adapter, adapter_revision)
    fmt = load_format(base, adapter, revision, adapter_revision)
    model = load_model(
        base, adapter, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision,
        adapter_revision=adapter_revision,
    )
    merged = model.merge_and_unload()
    # The tokenizer saved with the adapter (train_sft.py writes one), else the base model's.
    if is_local(adapter) and os.path.isfile(os.path.join(adapter, "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(adapter)
    else:
        tokenizer = AutoTokenizer.from_pretrained(base, revision=revision, trust_remote_code=trust_remote_code)
    tokenizer.chat_template = CHAT_TEMPLATE

    temporary = output_dir.with_name(f".{output_dir.name}.tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    merged.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    shutil.copyfile(fmt.model_file, temporary / "tokenizer.model")
    if output_dir.exists():
        output_dir.rmdir()  # empty, checked above
    os.replace(temporary, output_dir)
    return output_dir
