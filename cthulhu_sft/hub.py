"""Publishing to the Hugging Face Hub: a finished run (adapter, tokenizer, card, record) or the dataset.

Every request has a bounded timeout, the token is never printed (it comes from HF_TOKEN or `hf auth login`),
and a failure raises PushError with a message that is safe to show. Retry a failed upload with
`python -m cthulhu_sft.hub OUTPUT_DIR USER/REPO` (or `--dataset data USER/NAME`).
"""

import argparse
import json
import os
import sys
from datetime import datetime, timezone

from huggingface_hub import HfApi, get_token, set_client_factory
from huggingface_hub.utils import _http

from .files import is_local_path, write_json_atomic

# What a published adapter repo holds (knowledge_check.jsonl: every answer behind the card's numbers); checkpoints,
# logs and training_args.bin stay local.
ADAPTER_FILE = "adapter_model.safetensors"  # a run without it is not finished, whatever run.json says
RUN_PATTERNS = ["adapter_config.json", ADAPTER_FILE, "tokenizer*", "special_tokens_map.json",
                "chat_template.jinja", "README.md", "run.json", "config.yaml", "samples.jsonl", "knowledge_check.jsonl"]
# What a published dataset repo holds: its card and the splits prepare_data.py writes.
DATASET_PATTERNS = ["README.md", "train.jsonl", "eval.jsonl", "eval_known.jsonl"]
LOGIN_HINT = "log in with `hf auth login`, or set HF_TOKEN to a token with write access"


class PushError(RuntimeError):
    """The Hub could not be used; the message is safe to print (no token)."""


def set_timeout(seconds: float) -> None:
    """Every request of huggingface_hub gives up after `seconds` without an answer (its default is to wait
    forever). Set in the factory of its shared HTTP client, which it builds anew after a connection error."""

    def client():
        http = _http.default_client_factory()  # the library's own client (its request hooks), with a timeout
        http.timeout = seconds
        return http

    set_client_factory(client)


def _failure(what: str, error: Exception) -> PushError:
    message = f"{what} failed: {type(error).__name__}: {error}"
    token = get_token()
    if token:
        message = message.replace(token, "***")
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status == 401:
        message += f"\nThe Hub refused the token: {LOGIN_HINT}."
    elif status == 403:
        message += "\nThe token may not write to that namespace: check the user/organisation and the token's role."
    return PushError(message)


def check_access(repo_id: str, repo_type: str = "model", private: bool | None = None) -> str:
    """Before any long work: a token exists, the Hub accepts it, and the repo exists or can be created.
    Returns the account name."""
    if not get_token():
        raise PushError(f"--push_to_hub: no Hugging Face token found: {LOGIN_HINT}")
    api = HfApi()
    try:
        user = api.whoami()["name"]
    except Exception as error:  # the Hub's, httpx's and OS errors all end the same way
        raise _failure("checking the Hub token (whoami)", error) from None
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
    except Exception as error:
        raise _failure(f"creating or opening the {repo_type} repo {repo_id}", error) from None
    return user


def push_folder(folder: str, repo_id: str, repo_type: str, patterns: list[str], private: bool | None,
                message: str) -> str:
    """Uploads the files of `folder` that match `patterns` in one commit; returns the commit URL."""
    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type=repo_type,
                                   allow_patterns=patterns, commit_message=message)
    except Exception as error:
        raise _failure(f"push to the Hub ({repo_id})", error) from None
    return commit.commit_url


def push_run(output_dir: str, repo_id: str, private: bool | None = None) -> str:
    """Publishes a finished run and records the outcome in its run.json (`publish`: done with the commit URL, or
    failed with the reason). Its adapter_config.json must name the base by a Hub id (train_sft.py writes
    `base_model_hub_id` there): a local path means nothing to anyone who downloads the adapter."""
    try:
        with open(os.path.join(output_dir, "adapter_config.json"), encoding="utf-8") as file:
            base = json.load(file).get("base_model_name_or_path") or ""
        if not os.path.isfile(os.path.join(output_dir, ADAPTER_FILE)):
            raise PushError(f"{output_dir} holds no {ADAPTER_FILE}: there is no adapter to publish (did the run "
                            "finish? under FSDP, see fsdp_state_dict_type in the accelerate config)")
        if is_local_path(base):
            raise PushError(f"the adapter's base is the local folder {base}, which no one else can load: train with "
                            "--base_model_hub_id (e.g. mistralai/Mistral-7B-Instruct-v0.2), or set "
                            "base_model_name_or_path in adapter_config.json to the base's Hub id")
        url = push_folder(output_dir, repo_id, "model", RUN_PATTERNS, private,
                          "Upload LoRA adapter trained with cthulhu-sft")
    except PushError as error:
        record_publish(output_dir, {"repo_id": repo_id, "status": "failed", "error": str(error)})
        raise
    record_publish(output_dir, {"repo_id": repo_id, "status": "done", "url": url})
    return url


def record_publish(output_dir: str, outcome: dict) -> None:
    """Sets run.json's `publish` (with the time); a folder without a readable run.json is left as it is. The copy
    of run.json uploaded with the run still says what it said before the upload ("pending")."""
    path = os.path.join(output_dir, "run.json")
    try:
        with open(path, encoding="utf-8") as file:
            run = json.load(file)
    except (OSError, ValueError):
        return
    run["publish"] = outcome | {"time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    write_json_atomic(path, run)


def push_dataset(folder: str, repo_id: str, private: bool | None = None) -> str:
    """Publishes prepare_data.py's splits with their card (README.md) as a dataset repo."""
    return push_folder(folder, repo_id, "dataset", DATASET_PATTERNS, private,
                       "Upload Cthulhu-mythos Q&A dataset built by cthulhu-sft")


def retry_command(folder: str, repo_id: str, dataset: bool = False) -> str:
    return f"python -m cthulhu_sft.hub {'--dataset ' if dataset else ''}{folder} {repo_id}"


def main(argv=None) -> int:
    """`python -m cthulhu_sft.hub [--dataset] FOLDER USER/REPO`: upload a finished run or a dataset (again)."""
    from cthulhu_sft.config import sft_defaults

    parser = argparse.ArgumentParser(prog="python -m cthulhu_sft.hub", description=main.__doc__)
    parser.add_argument("folder", help="a finished train_sft.py output_dir, or with --dataset prepare_data.py's data/")
    parser.add_argument("repo_id")
    parser.add_argument("--dataset", action="store_true", help="publish a dataset folder instead of a run")
    parser.add_argument("--private", action="store_true", default=None)
    parser.add_argument("--timeout", type=float, default=sft_defaults()["hub_timeout"],
                        help="seconds each Hub request may take (default: sft_config.yaml's hub_timeout)")
    args = parser.parse_args(argv)
    needed = "train.jsonl" if args.dataset else "adapter_config.json"
    if not os.path.isfile(os.path.join(args.folder, needed)):
        parser.error(f"{args.folder} has no {needed}")
    set_timeout(args.timeout)
    push = push_dataset if args.dataset else push_run
    print(f"pushing {args.folder} to {args.repo_id} ...", flush=True)
    try:
        print(f"pushed to {push(args.folder, args.repo_id, args.private)}")
    except PushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
