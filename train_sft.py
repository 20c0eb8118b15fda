"""LoRA fine-tuning of Mistral-7B-Instruct-v0.2 (8-bit base) on Cthulhu-mythos Q&A, with TRL's SFTTrainer.

On one A100 80GB:
```bash
accelerate launch --quiet --config_file accelerate_config.yaml train_sft.py --config sft_config.yaml
accelerate launch --quiet --config_file accelerate_config.yaml train_sft.py --config sft_config.yaml \
    --push_to_hub --hub_model_id <user>/<repo>
```
Any field of sft_config.yaml can be overridden on the command line (`--learning_rate 1e-4 --num_train_epochs 2`).
Continue an interrupted run from its newest checkpoint with `--resume_from_checkpoint true`.
Inspect the exact training ids without loading the model: `--dump_tokenized tokenized.jsonl`.

Examples are tokenized exactly as Mistral's reference (mistral-common, tokenizer v1) does:
`<s>▁[INST]▁{instruction}▁[/INST]` + answer + `</s>`, with loss on the answer and its `</s>` only.
"""

import logging
import os
import shutil
import sys

from accelerate import PartialState

from cthulhu_sft import run_record
from cthulhu_sft.config import fail, parse_args, resolved_config
from cthulhu_sft.data import DataError, eval_set_name, load_records, tokenize_files, write_jsonl_atomic
from cthulhu_sft.format import MistralFormat, tokenizer_error
from cthulhu_sft.training import (
    OutputDirError,
    build_trainer,
    check_output_dir,
    final_eval_metrics,
    load_tokenizer,
    read_run,
    report_memory_estimate,
    resume_checkpoint,
    resume_requested,
    run_metrics,
    save_adapter,
    setup_logging,
    stop_if_disk_full,
)

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
logger = logging.getLogger("train_sft")


def main(script_args, training_args, model_args):
    state = PartialState()
    output_dir = training_args.output_dir
    if finished_already(script_args, training_args, state):
        return

    push, training_args.push_to_hub = training_args.push_to_hub, False  # we push once everything is saved (below)
    if os.path.isdir(model_args.model_name_or_path):  # the adapter names its base wherever it is loaded from
        model_args.model_name_or_path = os.path.abspath(model_args.model_name_or_path)

    # Data: every record validated before anything is loaded, then tokenized exactly as mistral-common does
    if not script_args.train_file:
        fail("train_file is empty: pass --train_file data/train.jsonl (prepare_data.py writes it)")
    if not os.path.isfile(script_args.train_file):
        fail(f"{script_args.train_file}: file not found; build the dataset with `python prepare_data.py`, or train on "
             "the shipped sample: --train_file data/sample/train.jsonl --eval_file data/sample/eval_known.jsonl "
             "data/sample/eval.jsonl")
    eval_files = existing_eval_files(script_args.eval_file, training_args.eval_strategy.value)
    try:
        files = {"train": script_args.train_file}
        files |= {eval_set_name(path, eval_files): path for path in eval_files}
        records = {split: load_records(path) for split, path in files.items()}
        fmt = MistralFormat.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
        rows, entries, warnings = tokenize_files(files, records, fmt, training_args.max_length)
    except (DataError, FileNotFoundError) as error:
        fail(str(error))
    except (OSError, ValueError, RuntimeError) as error:  # the Hub's errors, offline misses, a corrupt file
        fail(tokenizer_error(model_args.model_name_or_path, error))
    for warning in warnings:
        logger.warning(warning)

    # Publishing: the token and the repo are checked now, not after hours of training. (The Trainer's own push
    # would contact the Hub in __init__ and upload in the background, so a failure could not be reported plainly.)
    if push:
        check_push(script_args, training_args, model_args, state)
    if script_args.dump_tokenized:
        if state.is_main_process:
            write_jsonl_atomic(script_args.dump_tokenized, rows["train"])
        logger.info(f"wrote {len(rows['train'])} tokenized training examples to {script_args.dump_tokenized}")
        return
    if not eval_files and training_args.eval_strategy.value != "no":
        fail(f"eval_strategy is {training_args.eval_strategy.value!r} but there is no eval_file: "
             "pass --eval_file FILE, or --eval_strategy no")
    try:
        resume_from = resume_checkpoint(training_args.resume_from_checkpoint, output_dir)
        check_output_dir(output_dir, resume_from is not None, script_args.overwrite_output_dir)
    except OutputDirError as error:
        fail(str(error))

    # The run's record, and whether it will fit (estimated before the weights are loaded)
    config = resolved_config(script_args, training_args, model_args) | {"push_to_hub": push}
    state.wait_for_everyone()  # every process has looked at output_dir before the main one writes to it
    if state.is_main_process:
        with stop_if_disk_full(os.path.join(output_dir, "run.json"), output_dir):
            record = run_record.start(output_dir, config, entries, resume_from, REPO_DIR)
        if model_args.use_peft:
            report_memory_estimate(training_args, model_args, rows["train"])

    # Model and trainer: 8-bit base + LoRA
    tokenizer = load_tokenizer(model_args, training_args, fmt, [r["instruction"] for r in records["train"][:100]])
    eval_rows = {split: split_rows for split, split_rows in rows.items() if split != "train"}
    trainer = build_trainer(model_args, training_args, rows["train"], eval_rows, tokenizer)
    if state.is_main_process and hasattr(trainer.model, "print_trainable_parameters"):
        trainer.model.print_trainable_parameters()

    # Train, then save the adapter and tokenizer before anything else can fail (a full disk while saving is one line
    # naming what was being written, and the command to run once there is room)
    def checkpoint():
        return os.path.join(output_dir, f"checkpoint-{trainer.state.global_step}") + " (a checkpoint)"

    with stop_if_disk_full(checkpoint, output_dir):
        result = trainer.train(resume_from_checkpoint=resume_from)
    if script_args.base_model_hub_id:  # the published adapter must name a base anyone can download
        trainer.model.peft_config["default"].base_model_name_or_path = script_args.base_model_hub_id
    with stop_if_disk_full(f"{output_dir} (the adapter and tokenizer files)", output_dir):
        save_adapter(trainer, output_dir)  # refuses to go on when no adapter was written (FSDP included)
    metrics = run_metrics(trainer, dict(result.metrics), resume_from) | final_eval_metrics(trainer)
    # The rest needs no other process: all leave the process group together now (a process tearing down its group
    # while another still works can hang at exit), so none waits at a barrier while the main one answers.
    state.wait_for_everyone()
    trainer.accelerator.end_training()
    if not state.is_main_process:
        return

    # Samples, knowledge check, card and run.json, with the trained model still in memory
    with stop_if_disk_full(os.path.join(output_dir, "tokenizer.model"), output_dir):
        shutil.copy(fmt.model_file, os.path.join(output_dir, "tokenizer.model"))  # generate.py's exact ids
    knowledge = run_record.after_training(trainer.model, fmt, script_args, output_dir)
    with stop_if_disk_full(output_dir, output_dir):  # finish names the file it could not write
        run_record.finish(output_dir, record, metrics, knowledge, records["train"])
    logger.info(f"saved the adapter, tokenizer, model card and run.json to {output_dir}")

    # Publish
    if push:
        publish(output_dir, training_args.hub_model_id, training_args.hub_private_repo, script_args.hub_timeout)


def existing_eval_files(paths: list[str], eval_strategy: str) -> list[str]:
    """The eval files to use. Without evaluation during training (eval_strategy no) a missing one is skipped with a
    note (sft_config.yaml names files a fresh checkout does not have); with it, a missing one is an error that says
    how to get it. Those that exist are evaluated at the end in either case."""
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing and eval_strategy == "no":
        logger.info(f"eval_file {', '.join(missing)} not found: not evaluated (eval_strategy is 'no')")
    elif missing:
        fail(f"{missing[0]}: file not found (eval_file, evaluated every {eval_strategy}); build the eval sets with "
             "`python prepare_data.py`, point --eval_file at other files (the shipped sample: --eval_file "
             "data/sample/eval_known.jsonl data/sample/eval.jsonl), or train without evaluation: --eval_strategy no")
    return [path for path in paths if path not in missing]


def finished_already(script_args, training_args, state) -> bool:
    """True (nothing to train) when output_dir holds a finished run and this command resumes it or publishes it;
    a new run there is refused unless --overwrite_output_dir.

    A publish the run asked for and did not complete (run.json's `publish`) is done now when this command has
    --push_to_hub. A resume that asks for a longer run than the finished one is refused, saying how to get it.
    """
    output_dir = training_args.output_dir
    previous = read_run(output_dir)
    if not previous or previous.get("status") != "finished":
        return False
    resuming = resume_requested(training_args.resume_from_checkpoint)
    unpublished = previous.get("publish") if (previous.get("publish") or {}).get("status") != "done" else None
    if unpublished and (resuming or not script_args.overwrite_output_dir):
        repo_id = training_args.hub_model_id or unpublished["repo_id"]
        if training_args.push_to_hub:
            logger.info(f"{output_dir} holds a finished run whose publish to {unpublished['repo_id']} did not "
                        "complete; publishing it now (nothing is trained).")
            if state.is_main_process:
                publish(output_dir, repo_id, training_args.hub_private_repo, script_args.hub_timeout)
            return True
        from cthulhu_sft import hub

        logger.warning(f"{output_dir}: this run's publish to {unpublished['repo_id']} did not complete "
                       f"({unpublished['status']}); publish it with `{hub.retry_command(output_dir, repo_id)}`, "
                       "or rerun with --push_to_hub")
    if resuming:
        check_same_length(previous.get("config") or {}, training_args)
        logger.info(f"{output_dir} holds a finished run (run.json); nothing to resume, nothing written.")
        return True
    if script_args.overwrite_output_dir:
        return False
    fail(f"{output_dir} already holds a finished run (run.json): choose another --output_dir, or pass "
         "--overwrite_output_dir true to train a new run there")


def check_same_length(finished: dict, training_args) -> None:
    """A resume of a finished run that asks for another length (more or fewer steps or epochs) is refused: the
    finished run's learning-rate schedule ended with it, so continuing it would not give the run asked for."""
    if "max_steps" not in finished:
        return
    asked = run_length(training_args.max_steps, training_args.num_train_epochs)
    done = run_length(finished["max_steps"], finished.get("num_train_epochs"))
    if asked != done:
        fail(f"{training_args.output_dir} holds a run that finished with {done[0]} {done[1]}; --resume_from_checkpoint "
             f"does not extend a finished run to {asked[0]} {asked[1]} (its learning-rate schedule ended with it). "
             f"Train a new run with --{asked[0]} {asked[1]}: choose another --output_dir, or pass "
             "--overwrite_output_dir true (without --resume_from_checkpoint) to replace this one")


def run_length(max_steps: int, num_train_epochs: float) -> tuple:
    """What sets a run's length: max_steps when positive (the Trainer then ignores num_train_epochs)."""
    return ("max_steps", max_steps) if max_steps > 0 else ("num_train_epochs", num_train_epochs)


def check_push(script_args, training_args, model_args, state):
    from cthulhu_sft import hub

    if not training_args.hub_model_id:
        fail("--push_to_hub needs --hub_model_id <user>/<repo>")
    if os.path.isdir(model_args.model_name_or_path) and not script_args.base_model_hub_id:
        fail(f"--push_to_hub: the base is the local folder {model_args.model_name_or_path}, which the published "
             "adapter cannot point to; name its Hub id with --base_model_hub_id (e.g. mistralai/Mistral-7B-Instruct-v0.2)")
    hub.set_timeout(script_args.hub_timeout)
    if state.is_main_process:
        try:
            user = hub.check_access(training_args.hub_model_id, private=training_args.hub_private_repo)
        except hub.PushError as error:
            fail(f"{error}\nNothing was trained; fix the access and run the same command again.")
        logger.info(f"will push to {training_args.hub_model_id} as {user} after training")


def publish(output_dir, repo_id, private, timeout):
    """Uploads the finished run (hub.push_run records the outcome in run.json); a failure exits 1 with the retry
    command."""
    from cthulhu_sft import hub

    hub.set_timeout(timeout)
    logger.info(f"pushing {output_dir} to {repo_id} ...")
    try:
        url = hub.push_run(output_dir, repo_id, private)
    except hub.PushError as error:
        print(f"error: {error}\nEverything is still in {output_dir}; retry the upload with "
              f"`{hub.retry_command(output_dir, repo_id)}` (or run the same command again).", file=sys.stderr)
        sys.exit(1)
    logger.info(f"pushed to {url}")


if __name__ == "__main__":
    setup_logging()
    main(*parse_args())
