"""Fixtures: Mistral's real tokenizer (from mistral-common) and a tiny random Mistral model, all offline."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Nothing in the tests may reach the Hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def sentencepiece_v1_file() -> Path:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return Path(MistralTokenizer._data_path()) / "tokenizer.model.v1"


def write_tokenizer(folder: Path) -> Path:
    """A Hugging Face tokenizer folder holding Mistral-7B-Instruct-v0.2's SentencePiece model."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(sentencepiece_v1_file(), folder / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": False,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def write_tiny_model(folder: Path) -> Path:
    """A randomly initialised MistralForCausalLM with the real vocabulary, small enough for the CPU."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    config = MistralConfig(
        vocab_size=32000,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        sliding_window=None,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    model = MistralForCausalLM(config)
    model.save_pretrained(folder)
    write_tokenizer(folder)
    return folder


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


def run_script(args: list[str], cwd: Path | None = None, env: dict | None = None, timeout: int = 900):
    """Runs a command with the test environment; returns the CompletedProcess (stdout and stderr as text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        args, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


PYTHON = sys.executable
