"""Command-line and YAML configuration: our own options beside TRL's SFTConfig and ModelConfig."""

import os
import sys
from dataclasses import dataclass, field

import yaml
from trl import ModelConfig, SFTConfig, TrlParser

# Keys that hold credentials: never written to run.json, the saved config or the logs.
SECRET_KEYS = ("hub_token", "push_to_hub_token")


@dataclass
class ScriptArguments:
    """Data, post-training samples and model-card options of train_sft.py.

    Their values live in sft_config.yaml alone, so the fields without a default here are required when no
    --config is given; the two that default to None are off unless asked for.
    """

    train_file: str = field(metadata={"help": "JSONL of {instruction, response}."})
    eval_file: str | None = field(metadata={"help": "Held-out JSONL; null (or '') for none."})
    sample_prompts: list[str] = field(metadata={"help": "Prompts answered after training (saved to samples.jsonl)."})
    sample_temperature: float = field(metadata={"help": "Temperature of the samples; 0 is greedy."})
    sample_max_new_tokens: int = field(metadata={"help": "Token limit of each sample answer."})
    license: str = field(metadata={"help": "License of the adapter in the model card."})
    card_datasets: list[str] = field(metadata={"help": "Hub dataset ids named in the model card's metadata."})
    dump_tokenized: str | None = field(
        default=None,
        metadata={"help": "Write the training examples as they enter the trainer ({input_ids, labels} per line) and exit."},
    )
    base_model_hub_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base model when model_name_or_path is a local folder: named in the model "
                          "card and in the published adapter_config.json; needed for --push_to_hub then."},
    )


def make_parser() -> TrlParser:
    return TrlParser((ScriptArguments, SFTConfig, ModelConfig))


def parse_args(argv: list[str] | None = None) -> tuple[ScriptArguments, SFTConfig, ModelConfig]:
    """Parses `--config file.yaml` plus command-line overrides; a bad key or value exits with code 2."""
    parser = make_parser()
    config = config_path(sys.argv[1:] if argv is None else argv)
    if config is not None and not os.path.isfile(config):
        print(f"error: --config: {config} is not a file", file=sys.stderr)
        sys.exit(2)
    try:
        return parser.parse_args_and_config(args=argv)
    except yaml.YAMLError as error:
        print(f"error: --config: {config} is not valid YAML: {error}", file=sys.stderr)
        sys.exit(2)
    except ValueError as error:  # unknown YAML keys, or values the dataclasses reject
        message = str(error)
        if "bf16/gpu" in message:
            message += "\nOn a machine without a GPU, pass --bf16 false (and --dtype float32)."
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def config_path(args: list[str]) -> str | None:
    """The value of --config (as `--config FILE` or `--config=FILE`), if given."""
    for index, arg in enumerate(args):
        if arg == "--config" and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith("--config="):
            return arg.removeprefix("--config=")
    return None


def resolved_config(*configs) -> dict:
    """All options as plain values, credentials removed, for run.json and the saved config.

    TrainingArguments.to_dict replaces every `*_token` value with a placeholder, SFTConfig's `eos_token` and
    `pad_token` included; those are put back (a config saved with "<EOS_TOKEN>" would fail when reused).
    """
    resolved = {}
    for config in configs:
        values = config.to_dict() if hasattr(config, "to_dict") else vars(config).copy()
        for key in values:
            if key.endswith("_token") and key not in SECRET_KEYS:
                values[key] = getattr(config, key)
        resolved.update({key: value for key, value in values.items() if key not in SECRET_KEYS})
    return resolved
