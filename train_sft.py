"""LoRA fine-tuning of Mistral-7B-Instruct-v0.2 (8-bit base) on Cthulhu-mythos Q&A, with TRL's SFTTrainer.

On one A100 80GB:
```bash
accelerate launch --config_file accelerate_config.yaml train_sft.py --config sft_config.yaml
accelerate launch --config_file accelerate_config.yaml train_sft.py --config sft_config.yaml \
    --push_to_hub --hub_model_id <user>/<repo>
```
Any field of sft_config.yaml can be overridden on the command line (`--learning_rate 1e-4 --num_train_epochs 2`).
Continue an interrupted run from its newest checkpoint with `--resume_from_checkpoint true`.
Inspect the exact training ids without loading the model: `--dump_tokenized tokenized.jsonl`.

Examples are tokenized exactly as Mistral's reference (mistral-common, tokenizer v1) does:
`<s>▁[INST]▁{instruction}▁[/INST]` + answer + `</s>`, with loss on the answer and its `</s>` only.
"""

import json
import os
import shutil
import sys

import yaml
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env

from cthulhu_sft.config import parse_args, resolved_config
from cthulhu_sft.data import DataError, load_records, tokenize_records, write_jsonl_atomic
from cthulhu_sft.files import write_json_atomic, write_text_atomic
from cthulhu_sft.format import CHAT_TEMPLATE, MistralFormat, chat_template_mismatches, tokenizer_error
from cthulhu_sft.manifest import data_file_entry, git_commit, now, package_versions

REPO_DIR = os.path.dirname(os.path.abspath(__file__))


def fail(message: str, code: int = 2):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(code)


def tokenize_splits(data_files: dict, fmt, max_length, is_main: bool):
    """Tokenizes the validated train/eval records; returns {split: (records, rows, manifest entry)}."""
    splits = {}
    for split, (path, records) in data_files.items():
        rows, dropped_lines = tokenize_records(records, fmt, max_length)
        if dropped_lines and is_main:
            print(
                f"warning: {path}: {len(dropped_lines)} of {len(records)} examples are longer than max_length="
                f"{max_length} tokens and are left out (lines {dropped_lines[:10]}{' ...' if len(dropped_lines) > 10 else ''}); "
                "prepare_data.py --max_tokens splits long articles so that they fit.",
                file=sys.stderr,
            )
        if not rows:
            raise DataError(f"{path}: no example fits max_length={max_length}")
        splits[split] = (records, rows, data_file_entry(path, len(records), len(rows), dropped_lines))
    return splits


def read_data_files(script_args) -> dict:
    """Validates every record of the train and eval files: {split: (path, records)}."""
    if not script_args.train_file:
        raise DataError("train_file is empty: pass --train_file data/train.jsonl (prepare_data.py writes it)")
    files = {"train": script_args.train_file, "eval": script_args.eval_file}
    return {split: (path, load_records(path)) for split, path in files.items() if path}


def resume_checkpoint(value: str | None, output_dir: str):
    """`--resume_from_checkpoint true` means the newest complete checkpoint in output_dir; a path is used as given."""
    if value is None or str(value).lower() in ("false", "none", ""):
        return None
    if str(value).lower() == "true":
        last = newest_complete_checkpoint(output_dir)
        if last is None:
            fail(f"--resume_from_checkpoint true: no complete checkpoint-* folder in {output_dir}")
        return last
    if not os.path.isdir(value):
        fail(f"--resume_from_checkpoint: {value} is not a folder")
    return value


def newest_complete_checkpoint(output_dir: str) -> str | None:
    """The checkpoint with the highest step whose trainer_state.json, which the Trainer writes last, is whole.

    A run killed while saving leaves a checkpoint folder without it (transformers' get_last_checkpoint would
    pick that folder and fail); such folders are skipped with a warning.
    """
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    if not os.path.isdir(output_dir):
        return None
    steps = sorted(
        (int(name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-")), name)
        for name in os.listdir(output_dir)
        if name.removeprefix(f"{PREFIX_CHECKPOINT_DIR}-").isdigit() and os.path.isdir(os.path.join(output_dir, name))
    )
    for _, name in reversed(steps):
        path = os.path.join(output_dir, name)
        try:
            with open(os.path.join(path, "trainer_state.json"), encoding="utf-8") as handle:
                json.load(handle)
            return path
        except (OSError, ValueError):
            if PartialState().is_main_process:
                print(f"warning: {path} is incomplete (the run stopped while saving it); skipping it", file=sys.stderr)
    return None


def sharded_with_fsdp() -> bool:
    """Whether `accelerate launch` runs FSDP (configs/fsdp_qlora.yaml), read from the variable the launcher sets:
    accelerate's state says FSDP only once the Trainer has built its Accelerator, after the model is loaded."""
    return parse_flag_from_env("ACCELERATE_USE_FSDP")


def load_base_model(model_args, training_args):
    """The base model, quantized if configured, on this process's own device, prepared for k-bit training.

    Under FSDP (configs/fsdp_qlora.yaml) FSDP places the shards itself, and the float32 upcast of k-bit
    preparation would mix dtypes inside the modules it flattens, so both steps are left to it.
    """
    from peft import prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    sharded = sharded_with_fsdp()
    quantization_config = get_quantization_config(model_args)
    kwargs = dict(
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=training_args.trust_remote_code,
    )
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
        if not sharded:
            # Each data-parallel process holds a whole 8-bit copy on its own GPU ("auto" would split it).
            kwargs["device_map"] = {"": PartialState().device}
    model = AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path, **kwargs)
    if quantization_config is not None and not sharded:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=training_args.activation_checkpointing,
            gradient_checkpointing_kwargs=training_args.activation_checkpointing_kwargs,
        )
    return model


def unset_max_length_for_padding_free(training_args):
    """TRL refuses padding-free batches without packing while max_length is set, because it would not enforce
    it there. The examples over max_length were dropped already (tokenize_splits), so nothing is lost."""
    if training_args.padding_free and not training_args.packing:
        training_args.max_length = None


def report_memory_estimate(training_args, model_args, rows):
    """Prints the estimated peak GPU memory; warns, naming the settings to change, when it exceeds this GPU."""
    import torch

    from cthulhu_sft.memory import check_fits, estimate_for_args, format_estimate

    longest = max(len(row["input_ids"]) for row in rows)
    state = PartialState()
    shards = state.num_processes if sharded_with_fsdp() else 1
    estimate = estimate_for_args(training_args, model_args, longest_example=longest, fsdp_processes=shards)
    if not torch.cuda.is_available():
        print(format_estimate(estimate))
        return
    device = torch.cuda.get_device_properties(state.device)
    print(format_estimate(estimate, device.total_memory, device.name))
    warning = check_fits(estimate, device.total_memory)
    if warning:
        print(warning, file=sys.stderr)


def traced_collator(collator, folder: str):
    """The collator, also appending the input_ids of each example this process collates to a file (a test hook)."""
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, f"process-{PartialState().process_index}.jsonl")

    def collate(examples):
        with open(path, "a", encoding="utf-8") as file:
            file.writelines(json.dumps(example["input_ids"]) + "\n" for example in examples)
        return collator(examples)

    return collate


def check_chat_template(tokenizer, fmt, instructions, is_main):
    mismatches = chat_template_mismatches(tokenizer, fmt, instructions)
    if mismatches and is_main:
        print(
            f"warning: for {len(mismatches)} of {len(instructions)} instructions the tokenizer's chat template gives "
            f"other prompt ids than training (first: {mismatches[0]!r}); generate.py builds exact ids in every case.",
            file=sys.stderr,
        )


def answer_samples(model, fmt, script_args) -> list[dict]:
    from cthulhu_sft.inference import generate

    conversations = [[{"role": "user", "content": prompt}] for prompt in script_args.sample_prompts]
    generations = generate(
        model, fmt, conversations,
        temperature=script_args.sample_temperature,
        max_new_tokens=script_args.sample_max_new_tokens,
        seed=0,
    )
    return [
        {"prompt": prompt, "answer": generation.text, "ended_with_eos": generation.stopped}
        for prompt, generation in zip(script_args.sample_prompts, generations)
    ]


def refuse_to_overwrite(output_dir: str):
    """A finished run, or one with checkpoints, is continued with --resume_from_checkpoint, never overwritten."""
    manifest = os.path.join(output_dir, "run.json")
    finished = os.path.isfile(manifest) and json.loads(open(manifest, encoding="utf-8").read()).get("status") == "finished"
    checkpoints = os.path.isdir(output_dir) and any(name.startswith("checkpoint-") for name in os.listdir(output_dir))
    if finished or checkpoints:
        fail(f"{output_dir} already holds a {'finished run' if finished else 'run with checkpoints'}; pass "
             "--resume_from_checkpoint true to continue it, or choose another --output_dir")


def main(script_args, training_args, model_args):
    started = now()
    state = PartialState()
    is_main = state.is_main_process
    output_dir = training_args.output_dir
    # We push ourselves once everything is saved: the Trainer's own push contacts the Hub at start-up and uploads
    # in the background, so a failure could not be reported plainly.
    push = training_args.push_to_hub
    training_args.push_to_hub = False
    if training_args.hub_token:  # the Trainer pickles its arguments into every checkpoint: keep the token out
        os.environ["HF_TOKEN"] = training_args.hub_token
        training_args.hub_token = None
    if push and not training_args.hub_model_id:
        fail("--push_to_hub needs --hub_model_id <user>/<repo>")
    if push and os.path.isdir(model_args.model_name_or_path) and not script_args.base_model_hub_id:
        fail(f"--push_to_hub: the base is the local folder {model_args.model_name_or_path}, which the published "
             "adapter cannot point to; name its Hub id with --base_model_hub_id (e.g. mistralai/Mistral-7B-Instruct-v0.2)")

    # Validate and tokenize the data before anything heavy is loaded
    try:
        data_files = read_data_files(script_args)  # bad records fail before even the tokenizer is fetched
    except (DataError, FileNotFoundError) as error:
        fail(str(error))
    try:
        fmt = MistralFormat.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    except (OSError, ValueError, RuntimeError) as error:  # the Hub's errors, offline misses, a corrupt file
        fail(tokenizer_error(model_args.model_name_or_path, error))
    try:
        splits = tokenize_splits(data_files, fmt, training_args.max_length, is_main)
    except DataError as error:
        fail(str(error))
    if script_args.dump_tokenized:
        if is_main:
            write_jsonl_atomic(script_args.dump_tokenized, splits["train"][1])
            print(f"wrote {len(splits['train'][1])} tokenized training examples to {script_args.dump_tokenized}")
        return
    if "eval" not in splits and training_args.eval_strategy.value != "no":
        fail(f"eval_strategy is {training_args.eval_strategy.value!r} but there is no eval_file: "
             "pass --eval_file FILE, or --eval_strategy no")
    resume_from = resume_checkpoint(training_args.resume_from_checkpoint, output_dir)
    if resume_from is None:
        refuse_to_overwrite(output_dir)

    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTTrainer, get_peft_config

    config = resolved_config(script_args, training_args, model_args) | {"push_to_hub": push}
    manifest = {
        "status": "running",
        "start_time": started,
        "resumed_from": resume_from,
        "base_model_local": os.path.isdir(model_args.model_name_or_path),  # read by cthulhu_sft.hub's upload
        "git_commit": git_commit(REPO_DIR),
        "versions": package_versions(),
        "data": {split: entry for split, (_, _, entry) in splits.items()},
        "config": config,
    }
    state.wait_for_everyone()  # every process has looked at output_dir before the main one writes to it
    if is_main:
        write_json_atomic(os.path.join(output_dir, "run.json"), manifest)

    # Will it fit? Estimated from config.json alone, before the weights are loaded
    if is_main and model_args.use_peft:
        report_memory_estimate(training_args, model_args, splits["train"][1])

    # Model: 8-bit base + LoRA
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=training_args.trust_remote_code
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    check_chat_template(tokenizer, fmt, [record["instruction"] for record in splits["train"][0][:100]], is_main)
    model = load_base_model(model_args, training_args)
    unset_max_length_for_padding_free(training_args)
    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=Dataset.from_list(splits["train"][1]),
        eval_dataset=Dataset.from_list(splits["eval"][1]) if "eval" in splits else None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    # Test hook: with CTHULHU_SFT_TRACE_DATA=<folder>, every process appends the input_ids of each example it is given
    # to <folder>/process-<index>.jsonl (tests/test_multiprocess.py checks that data-parallel processes differ)
    if os.environ.get("CTHULHU_SFT_TRACE_DATA"):
        trainer.data_collator = traced_collator(trainer.data_collator, os.environ["CTHULHU_SFT_TRACE_DATA"])
    if is_main and hasattr(trainer.model, "print_trainable_parameters"):
        trainer.model.print_trainable_parameters()

    # Train, then save the adapter and tokenizer before anything else can fail
    result = trainer.train(resume_from_checkpoint=resume_from)
    trainer.save_model(output_dir)
    metrics = dict(result.metrics) | final_eval_metrics(trainer)

    # Config, model card and manifest (with the SentencePiece model that generate.py uses for exact ids)
    if is_main:
        shutil.copy(fmt.model_file, os.path.join(output_dir, "tokenizer.model"))
        write_text_atomic(os.path.join(output_dir, "config.yaml"), yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
        write_card(output_dir, script_args, training_args, model_args, config, metrics, splits["train"][0])
        manifest.update(status="finished", end_time=now(), metrics=metrics)
        write_json_atomic(os.path.join(output_dir, "run.json"), manifest)
        print(f"saved the adapter, tokenizer, model card and run.json to {output_dir}")

    # Inference test: the sample prompts at the configured low temperature
    if script_args.sample_prompts and is_main:
        if sharded_with_fsdp():  # a sharded model cannot generate on one process
            print("samples skipped under FSDP: answer them with generate.py on the saved adapter")
        else:
            samples = answer_samples(trainer.model, fmt, script_args)
            write_jsonl_atomic(os.path.join(output_dir, "samples.jsonl"), samples)
            for sample in samples:
                stop = "</s>" if sample["ended_with_eos"] else "(max_new_tokens reached)"
                print(f"\n[INST] {sample['prompt']} [/INST]\n{sample['answer']} {stop}")

    # All processes leave the process group together, before the main one's upload (which needs none of them):
    # a process tearing down its group while another still works can hang at exit.
    state.wait_for_everyone()
    trainer.accelerator.end_training()

    # Push to the Hub
    if push and is_main:
        from cthulhu_sft.hub import PushError, push_output

        try:
            url = push_output(output_dir, training_args.hub_model_id, training_args.hub_private_repo,
                              script_args.base_model_hub_id)
        except PushError as error:
            fail(f"{error}\nEverything is still in {output_dir}; retry the upload with "
                 f"`python -m cthulhu_sft.hub {output_dir} {training_args.hub_model_id}`.", code=1)
        print(f"pushed to {url}")


def final_eval_metrics(trainer) -> dict:
    """Eval metrics at the last step: those the epoch's evaluation logged, else a new evaluation (all processes)."""
    if trainer.eval_dataset is None:
        return {}
    last = next((entry for entry in reversed(trainer.state.log_history) if "eval_loss" in entry), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return {key: value for key, value in last.items() if key.startswith("eval_")}
    return trainer.evaluate()


def write_card(output_dir, script_args, training_args, model_args, config, metrics, records):
    from cthulhu_sft import card

    base_path = model_args.model_name_or_path
    base_id = script_args.base_model_hub_id or (None if os.path.isdir(base_path) else base_path)
    text = card.render(
        repo_id=training_args.hub_model_id,
        base_model=base_id,
        base_model_path=base_path,
        license=script_args.license,
        config=config,
        metrics=metrics,
        records=records,
        dataset_ids=script_args.card_datasets,
    )
    write_text_atomic(os.path.join(output_dir, "README.md"), text)  # replaces the README PEFT writes


if __name__ == "__main__":
    main(*parse_args())
