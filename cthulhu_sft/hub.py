"""Publishing a finished run to the Hugging Face Hub: adapter, tokenizer, model card, run manifest."""

from huggingface_hub import HfApi, get_token

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


def push_output(output_dir: str, repo_id: str, private: bool | None) -> str:
    """Creates the model repo if needed and uploads the run's files; returns the commit URL."""
    token = get_token()  # HF_TOKEN or the saved login; never printed
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=output_dir,
            allow_patterns=UPLOAD_PATTERNS,
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
    import os
    import sys

    parser = argparse.ArgumentParser(prog="python -m cthulhu_sft.hub", description=main.__doc__)
    parser.add_argument("output_dir")
    parser.add_argument("repo_id")
    parser.add_argument("--private", action="store_true", default=None)
    args = parser.parse_args(argv)
    if not os.path.isfile(os.path.join(args.output_dir, "adapter_config.json")):
        parser.error(f"{args.output_dir} holds no trained adapter (adapter_config.json)")
    try:
        print(f"pushed to {push_output(args.output_dir, args.repo_id, args.private)}")
    except PushError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
