"""Publishing a finished run to the Hugging Face Hub: adapter, tokenizer, model card, run manifest."""

import json
import os

import yaml
from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.utils import filter_repo_objects

# What a published adapter repo holds; checkpoints and TensorBoard logs stay local.
UPLOAD_PATTERNS = [
    "adapter_config.json",
    "adapter_model.safetensors",
    "tokenizer*",
    "special_tokens_map.json",
    "chat_template.jinja",
    "README.md",
    "run.json",
    "config.yaml",
    "samples.jsonl",
]


class PushError(RuntimeError):
    """The upload failed; the message is safe to print (no token)."""


def published_base(output_dir: str, base_model_hub_id: str | None = None) -> str:
    """The base model the published adapter names: its Hub id.

    A run on a local copy of the base records that folder in adapter_config.json, which no one else can load;
    the upload names `base_model_hub_id` (given, else the run's config.yaml) instead. Raises PushError when
    the base is a local folder and no Hub id is known.
    """
    recorded = read_json(output_dir, "adapter_config.json").get("base_model_name_or_path")
    if base_model_hub_id is None and os.path.isfile(os.path.join(output_dir, "config.yaml")):
        with open(os.path.join(output_dir, "config.yaml"), encoding="utf-8") as file:
            base_model_hub_id = (yaml.safe_load(file) or {}).get("base_model_hub_id")
    if base_model_hub_id:
        return base_model_hub_id
    # train_sft.py records whether the base was a folder where it ran (a relative path means nothing elsewhere)
    local = read_json(output_dir, "run.json").get("base_model_local")
    if local is None:
        local = bool(recorded) and (os.path.isabs(recorded) or recorded.startswith(".") or os.path.isdir(recorded))
    if local:
        raise PushError(
            f"the adapter's base is the local folder {recorded}, which no one else can load: name its Hub id "
            "with --base_model_hub_id (e.g. mistralai/Mistral-7B-Instruct-v0.2)"
        )
    return recorded


def read_json(output_dir: str, name: str) -> dict:
    """A JSON file of the run, or {} when it is absent."""
    path = os.path.join(output_dir, name)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as file:
        return json.load(file)


def upload_operations(output_dir: str, base: str) -> list[CommitOperationAdd]:
    """The run's files to publish; adapter_config.json with `base` as base_model_name_or_path."""
    names = sorted(name for name in os.listdir(output_dir) if os.path.isfile(os.path.join(output_dir, name)))
    operations = []
    for name in filter_repo_objects(names, allow_patterns=UPLOAD_PATTERNS):
        content = os.path.join(output_dir, name)
        if name == "adapter_config.json":
            with open(content, encoding="utf-8") as file:
                adapter_config = json.load(file) | {"base_model_name_or_path": base}
            content = (json.dumps(adapter_config, indent=2, sort_keys=True) + "\n").encode()
        operations.append(CommitOperationAdd(path_in_repo=name, path_or_fileobj=content))
    return operations


def push_output(output_dir: str, repo_id: str, private: bool | None, base_model_hub_id: str | None = None) -> str:
    """Creates the model repo if needed and uploads the run's files; returns the commit URL."""
    operations = upload_operations(output_dir, published_base(output_dir, base_model_hub_id))
    token = get_token()  # HF_TOKEN or the saved login; never printed
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.create_commit(
            repo_id=repo_id,
            operations=operations,
            commit_message="Upload LoRA adapter trained with cthulhu-sft",
        )
    except Exception as error:  # huggingface_hub, requests and OS errors alike end the same way
        message = f"{type(error).__name__}: {error}"
        if token:
            message = message.replace(token, "***")
        raise PushError(f"push to the Hub ({repo_id}) failed: {message}") from None
    return commit.commit_url


def main(argv=None) -> int:
    """`python -m cthulhu_sft.hub OUTPUT_DIR USER/REPO [--private]`: upload a finished run (again)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m cthulhu_sft.hub", description=main.__doc__)
    parser.add_argument("output_dir")
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true", default=None)
    parser.add_argument("--base_model_hub_id", default=None,
                        help="Hub id of the base, when the run used a local copy (default: the run's config.yaml)")
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.output_dir, "adapter_config.json")):
        parser.error(f"{args.output_dir} holds no trained adapter (adapter_config.json)")
    try:
        print(f"pushed to {push_output(args.output_dir, args.repo_id, args.private, args.base_model_hub_id)}")
    except PushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
