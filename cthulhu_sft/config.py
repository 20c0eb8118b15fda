"""Command-line and YAML configuration: our own options beside TRL's SFTConfig and ModelConfig.

sft_config.yaml is read here only: train_sft.py parses it with TrlParser, and every other script takes its
shared defaults (base model, max_length, sampling settings, hub timeout) from `sft_defaults()`.
"""

import difflib
import os
import sys
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import yaml

SFT_CONFIG = Path(__file__).resolve().parent.parent / "sft_config.yaml"
# What prepare_data.py writes, where the other scripts look for it by default
SOURCE_TEXTS = "data/source_texts.jsonl"  # every crawled article's text
CACHE_DIR = ".cache"  # the crawl (wiki/) and the model-written answers (qa/)
# Keys that hold credentials: never accepted on the command line, written to run.json, the saved config or logs.
SECRET_KEYS = ("hub_token", "push_to_hub_token")
# Options about this one invocation, not the recipe: left out of the saved config.yaml, which repeats the run
ONE_OFF_KEYS = ("resume_from_checkpoint", "overwrite_output_dir", "dump_tokenized")


@dataclass
class ScriptArguments:
    """Data, post-training samples, knowledge check, model-card and Hub options of train_sft.py.

    Their values live in sft_config.yaml alone, so the fields without a default here are required when no
    --config is given; those that default to None are off unless asked for.
    """

    train_file: str = field(metadata={"help": "JSONL of {instruction, response}."})
    eval_file: list[str] | None = field(
        metadata={"help": "Held-out JSONL file(s), each logged as its own eval loss; null (or '') for none."})
    sample_prompts: list[str] = field(metadata={"help": "Prompts answered after training (saved to samples.jsonl)."})
    sample_temperature: float = field(metadata={"help": "Temperature of the samples (and of generate.py, evaluate.py, "
                                                        "app.py by default); 0 is greedy."})
    sample_top_p: float = field(metadata={"help": "Nucleus sampling of the samples and the scripts' default."})
    sample_repetition_penalty: float = field(metadata={"help": "Repetition penalty of the samples and the scripts' default."})
    sample_max_new_tokens: int = field(metadata={"help": "Token limit of each sample answer and the scripts' default."})
    knowledge_check: bool = field(
        metadata={"help": "After saving, answer the knowledge_check_files with and without the adapter (card, run.json)."})
    knowledge_check_files: list[str] = field(
        metadata={"help": "Short-answer sets (rows with `answers`) for the knowledge check; missing ones are reported."})
    knowledge_check_limit: int = field(metadata={"help": "At most this many questions per knowledge-check set."})
    knowledge_check_open_book: bool = field(
        metadata={"help": "Also ask the knowledge check open-book (passages of data/source_texts.jsonl in the prompt), "
                          "when that file exists: closed and open book side by side."})
    license: str = field(metadata={"help": "License of the adapter in the model card."})
    card_datasets: list[str] = field(metadata={"help": "Hub dataset ids named in the model card's metadata."})
    hub_timeout: float = field(metadata={"help": "Seconds each Hub request may wait for an answer."})
    dump_tokenized: str | None = field(
        default=None,
        metadata={"help": "Write the training examples as they enter the trainer ({input_ids, labels} per line) and exit."},
    )
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Train into an output_dir that holds a finished run or files that are not a run "
                          "(they are replaced); transformers 5 no longer has this option."},
    )
    base_model_hub_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base model when model_name_or_path is a local folder: named in the model "
                          "card and in adapter_config.json; needed for --push_to_hub then."},
    )

    def __post_init__(self):
        self.eval_file = list_of_files(self.eval_file)
        self.knowledge_check_files = list_of_files(self.knowledge_check_files)
        problem = DecodingArguments(self.sample_temperature, self.sample_top_p, self.sample_repetition_penalty,
                                    self.sample_max_new_tokens).problem()
        if problem:  # found now, not after hours of training
            raise ValueError(problem.replace("--", "sample_"))


def list_of_files(value) -> list[str]:
    """A YAML string, a YAML list or `--eval_file a b` as a list of paths; '' and null mean none."""
    if value is None:
        return []
    values = [value] if isinstance(value, str) else list(value)
    return [str(path) for path in values if str(path).strip()]


@cache
def sft_defaults() -> dict:
    """The values of sft_config.yaml, the one place each default is written."""
    return yaml.safe_load(SFT_CONFIG.read_text(encoding="utf-8")) or {}


def make_parser():
    """TRL's parser of our options, SFTConfig and ModelConfig (imported here: other scripts read sft_defaults()
    without loading TRL). allow_abbrev=False: `--max_step 20` must be an error, not silently --max_steps."""
    from trl import ModelConfig, SFTConfig, TrlParser

    return TrlParser((ScriptArguments, SFTConfig, ModelConfig), allow_abbrev=False)


def fail(message: str, code: int = 2):
    """One line on stderr and exit: 2 for bad input or settings (the default), 1 for other failures."""
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def parse_args(argv: list[str] | None = None) -> tuple:
    """(ScriptArguments, SFTConfig, ModelConfig) from `--config file.yaml` plus command-line overrides; a bad key
    or value exits with code 2."""
    argv = normalized_argv(sys.argv[1:] if argv is None else argv)
    refuse_secret_arguments(argv)
    parser = make_parser()
    fields = {action.dest for action in parser._actions} - {"help"}
    options = {option for action in parser._actions for option in action.option_strings}
    if "--config" in argv:
        check_config_keys(argv[argv.index("--config") + 1], fields)
    unknown = [arg.split("=", 1)[0] for arg in argv if arg.startswith("--")]
    unknown = [arg for arg in unknown if arg not in options | {"--config"}]
    if unknown:
        fail("\n".join(f"unknown option {arg}{nearest_hint(arg[2:], fields)}" for arg in unknown))
    try:
        return parser.parse_args_and_config(args=argv)
    except ValueError as error:  # values the dataclasses reject
        message = str(error)
        if "bf16/gpu" in message:  # the Trainer's advice (assign use_cpu) is not how this recipe runs on a CPU
            message = "bf16 is true (sft_config.yaml) but this machine has no GPU: pass --bf16 false (and --dtype float32)"
        fail(message)


def normalized_argv(argv: list[str]) -> list[str]:
    """`--config=FILE` as `--config FILE`, the one form TrlParser reads."""
    result = []
    for arg in argv:
        result += ["--config", arg.removeprefix("--config=")] if arg.startswith("--config=") else [arg]
    if result and result[-1] == "--config":
        fail("--config needs a file name")
    return result


def refuse_secret_arguments(argv: list[str]) -> None:
    """A token on the command line shows in the process list and in a launcher's failure report."""
    for arg in argv:
        if arg.startswith("--") and arg.split("=", 1)[0].lstrip("-").replace("-", "_") in SECRET_KEYS:
            fail(f"{arg.split('=', 1)[0]} is not accepted on the command line (it would show in the process list "
                 "and in error reports): log in with `hf auth login`, or set the HF_TOKEN environment variable")


def check_config_keys(path: str, fields: set[str]) -> None:
    """The YAML file is a mapping of known keys; each unknown key is named with the nearest valid one."""
    if not os.path.isfile(path):
        fail(f"--config: {path} is not a file")
    try:
        with open(path, encoding="utf-8") as file:
            values = yaml.safe_load(file)
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        fail(f"--config: {path} is not valid YAML: {error}")
    if not isinstance(values, dict):
        fail(f"--config: {path} must be a YAML mapping of option: value")
    secrets = [str(key) for key in values if str(key) in SECRET_KEYS]
    if secrets:
        fail(f"{path}: '{secrets[0]}' does not belong in a config file (it would be saved with every checkpoint): "
             "log in with `hf auth login`, or set the HF_TOKEN environment variable")
    unknown = [str(key) for key in values if key not in fields | {"env"}]
    if unknown:
        fail("\n".join(f"{path}: unknown key '{key}'{nearest_hint(key, fields)}" for key in unknown))


def nearest_hint(key: str, fields: set[str]) -> str:
    nearest = difflib.get_close_matches(key.replace("-", "_"), sorted(fields), n=1, cutoff=0.6)
    return f"; did you mean '{nearest[0]}'?" if nearest else " (the options are the keys of sft_config.yaml and " \
        "the fields of TRL's SFTConfig and ModelConfig)"


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


def recipe(config: dict) -> dict:
    """The resolved configuration without the one-off options: what config.yaml saves to repeat the run."""
    return {key: value for key, value in config.items() if key not in ONE_OFF_KEYS}


# ---------------------------------------------------------------------------------------------------------------
# generate.py, evaluate.py and app.py: what they load and how they decode. Defaults that sft_config.yaml sets are
# read from it when a parser is built, so each is written once.


def from_sft_config(key: str, help: str):
    return field(default_factory=lambda: sft_defaults()[key], metadata={"help": f"{help} (default: {key} in sft_config.yaml)"})


DTYPE_CHOICES = ["auto", "bfloat16", "float16", "float32"]


@dataclass
class LoadArguments:
    """How the base model is loaded (the adapter, if any, keeps its own dtype)."""

    base_model: str | None = field(default=None, metadata={
        "help": "base (or merged) model: folder or Hub id (default: the adapter's recorded base, else "
                "model_name_or_path in sft_config.yaml)"})
    revision: str | None = field(default=None, metadata={"help": "revision (branch, tag, commit) of --base_model"})
    load_in_8bit: bool = field(default=False, metadata={"help": "load the base in 8 bits (bitsandbytes)"})
    load_in_4bit: bool = field(default=False, metadata={"help": "load the base in 4 bits (NF4)"})
    dtype: str = field(default="auto", metadata={"choices": DTYPE_CHOICES,
                                                 "help": "dtype of the unquantized weights (auto: the checkpoint's)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the Hub (off: safer)"})


@dataclass
class AdapterArguments:
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter: folder or Hub id (train_sft.py's output_dir)"})
    adapter_revision: str | None = field(default=None, metadata={"help": "revision of --adapter on the Hub"})


@dataclass
class DecodingArguments:
    """How answers are generated; train_sft.py's samples use the same settings."""

    temperature: float = from_sft_config("sample_temperature", "0 is greedy decoding")
    top_p: float = from_sft_config("sample_top_p", "sample from the most likely tokens that hold this probability")
    repetition_penalty: float = from_sft_config("sample_repetition_penalty", "1.0 switches it off")
    max_new_tokens: int = from_sft_config("sample_max_new_tokens", "the longest answer, in tokens")
    seed: int = field(default=0, metadata={"help": "seeds sampling once, at the start"})

    def problem(self) -> str | None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.max_new_tokens < 1:
            return "need --temperature >= 0, 0 < --top_p <= 1 and --max_new_tokens >= 1"
        if self.repetition_penalty <= 0:
            return "--repetition_penalty must be > 0 (1.0 switches it off)"
        return None


def default_top_k() -> int:
    from cthulhu_sft.retrieval import DEFAULT_TOP_K  # imported late: retrieval imports this module

    return DEFAULT_TOP_K


@dataclass
class OpenBookArguments:
    """Open-book answers: the passages retrieved for each question go into its user turn (cthulhu_sft/retrieval.py)."""

    open_book: bool = field(default=False, metadata={
        "help": "answer from the passages retrieved for each question from --source_texts, citing them as [1], [2]"})
    top_k: int = field(default_factory=default_top_k, metadata={
        "help": "passages shown to the model per question, within the prompt's token budget (default: %(default)s)"})

    def problem(self) -> str | None:
        return f"--top_k must be at least 1, got {self.top_k}" if self.top_k < 1 else None


def parse_script_args(dataclass_types: tuple, argv: list[str] | None, description: str):
    """The parser of generate.py, evaluate.py or app.py, and its arguments as one flat namespace (abbreviations
    are errors, as in training; `--load_in_8bit` alone means true)."""
    import argparse

    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, description=description, allow_abbrev=False,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    parts = parser.parse_args_into_dataclasses(args=argv)
    args = argparse.Namespace(**{key: value for part in parts for key, value in vars(part).items()})
    if getattr(args, "load_in_8bit", False) and getattr(args, "load_in_4bit", False):
        parser.error("give --load_in_8bit or --load_in_4bit, not both")
    return parser, args
