"""Fixtures: Mistral's real tokenizer (from mistral-common) and a tiny random Mistral model, all offline."""

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cthulhu_sft.tiny import sentencepiece_v1_file, write_tiny_model, write_tokenizer  # noqa: F401

REPO = Path(__file__).resolve().parent.parent

# Nothing in the tests may reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    return write_tokenizer(tmp_path_factory.mktemp("tokenizer"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return write_tiny_model(tmp_path_factory.mktemp("tiny-mistral"))


@pytest.fixture(scope="session")
def reference_tokenizer():
    """mistral-common's MistralTokenizer v1 in fine-tuning mode (accepts a final assistant message)."""
    from mistral_common.protocol.instruct.validator import ValidationMode
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.from_file(str(sentencepiece_v1_file()), mode=ValidationMode.finetuning)


@pytest.fixture(scope="session")
def serving_reference_tokenizer():
    """mistral-common's MistralTokenizer v1 in serving mode (a conversation ending with a user message)."""
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return MistralTokenizer.v1()


def run_script(args: list[str], cwd: Path | None = None, env: dict | None = None, timeout: int = 900,
               input: str | None = None):
    """Runs a command with the test environment (and `input` on its stdin); returns the CompletedProcess."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        args, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout, input=input
    )


PYTHON = sys.executable


TOKENIZER_FILES = ("tokenizer.model", "tokenizer_config.json")
# The eos_model_dir fixture's model answers this question with two tokens and </s> (greedy decoding).
STOP_QUESTION = "クトゥルフとは？"


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A LoRA adapter on every linear layer of the tiny model, with non-zero weights so that it changes logits."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-adapter")
    torch.manual_seed(1)
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir),
        LoraConfig(r=8, target_modules="all-linear", init_lora_weights=False),
    )
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(tiny_model_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def eos_model_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny model with two rows of its output layer swapped, so that STOP_QUESTION's answer ends with </s>.

    Greedy decoding picks tokens g1 g2 g3 ...; giving </s> the output weights of g3 makes it the third token.
    """
    from transformers import AutoModelForCausalLM

    from cthulhu_sft.format import MistralFormat
    from cthulhu_sft.inference import generate

    fmt = MistralFormat.from_pretrained(str(tiny_model_dir))
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    [answer] = generate(model, fmt, [[{"role": "user", "content": STOP_QUESTION}]], temperature=0, max_new_tokens=3)
    first, second, third = answer.token_ids
    assert fmt.eos_id not in (first, second, third) and third not in (first, second)
    weights = model.lm_head.weight.data
    weights[[fmt.eos_id, third]] = weights[[third, fmt.eos_id]]
    folder = tmp_path_factory.mktemp("tiny-eos-model")
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(tiny_model_dir / name, folder / name)
    return folder


def mistral_common_ids(tokenizer, messages) -> list[int]:
    """mistral-common's encoding of a conversation (serving mode: ends with a user message; fine-tuning: assistant)."""
    from mistral_common.protocol.instruct.messages import AssistantMessage, UserMessage
    from mistral_common.protocol.instruct.request import ChatCompletionRequest

    typed = [UserMessage(content=m["content"]) if m["role"] == "user" else AssistantMessage(content=m["content"]) for m in messages]
    return tokenizer.encode_chat_completion(ChatCompletionRequest(messages=typed)).tokens


def load_script(name: str):
    """A top-level script as a module, to call its argument parsing in-process."""
    spec = importlib.util.spec_from_file_location(f"{name}_script", REPO / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
