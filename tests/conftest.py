"""Fixtures: Mistral's real tokenizer (from mistral-common) and a tiny random Mistral model, all offline."""

import os
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


def run_script(args: list[str], cwd: Path | None = None, env: dict | None = None, timeout: int = 900):
    """Runs a command with the test environment; returns the CompletedProcess (stdout and stderr as text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        args, cwd=cwd or REPO, env=full_env, capture_output=True, text=True, timeout=timeout
    )


PYTHON = sys.executable
