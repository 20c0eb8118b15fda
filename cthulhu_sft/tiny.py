"""A tiny random Mistral model with the real Mistral-7B-Instruct-v0.2 tokenizer, for CPU smoke runs and tests.

    python -m cthulhu_sft.tiny output/tiny-mistral

The tokenizer comes from the `mistral-common` package (`pip install -r requirements-test.txt`), which ships the
same SentencePiece model as Mistral-7B-Instruct-v0.2, so nothing is downloaded from the Hub.
"""

import json
import shutil
import sys
from pathlib import Path

TOKENIZER_CONFIG = {
    "tokenizer_class": "LlamaTokenizer",
    "bos_token": "<s>",
    "eos_token": "</s>",
    "unk_token": "<unk>",
    "add_bos_token": True,
    "add_eos_token": False,
    "legacy": False,
}


def sentencepiece_v1_file() -> Path:
    from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

    return Path(MistralTokenizer._data_path()) / "tokenizer.model.v1"


def write_tokenizer(folder: Path, sentencepiece_file: Path | None = None) -> Path:
    """A Hugging Face tokenizer folder holding Mistral-7B-Instruct-v0.2's SentencePiece model (by default
    mistral-common's copy; `sentencepiece_file` where that package is not installed)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(sentencepiece_file or sentencepiece_v1_file(), folder / "tokenizer.model")
    (folder / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG))
    return folder


def write_tiny_model(folder: Path, seed: int = 0, sentencepiece_file: Path | None = None) -> Path:
    """A randomly initialised MistralForCausalLM (hidden 64, 2 layers) with the real 32000-token vocabulary."""
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(seed)
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
    MistralForCausalLM(config).save_pretrained(folder)
    return write_tokenizer(folder, sentencepiece_file)


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "output/tiny-mistral")
    print(f"wrote a tiny random Mistral model to {write_tiny_model(target)}")
