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
import warnings

from accelerate import PartialState

from cthulhu_sft import run_record
from cthulhu_sft.config import fail, parse_args, resolved_config
from cthulhu_sft.data import (
    DataError,
    eval_set_name,
    load_records,
    overlap_warnings,
    tokenize_records,
    write_jsonl_atomic,
)
from cthulhu_sft.format import CHAT_TEMPLATE, MistralFormat, chat_template_mismatches, tokenizer_error
from cthulhu_sft.training import (
    OutputDirError,
    build_trainer,
    check_output_dir,
    read_run,
    resume_checkpoint,
    sharded_with_fsdp,
)

REPO_DIR = os.path.dirname(os.path.abspath(__file__))
logger = logging.getLogger("train_sft")


def main(script_args, training_args, model_args):
    state = PartialState()
    output_dir = training_args.output_dir
    resuming = str(training_args.resume_from_checkpoint).lower() not in ("none", "false", "")
    previous = read_run(output_dir)
    if previous and previous.get("status") == "finished" and not script_args.overwrite_output_dir:
        if resuming:  # nothing left to train: leave the finished run exactly as it is
            logger.info(f"{output_dir} holds a finished run (run.json); nothing to resume, nothing written.")
            return
        fail(f"{output_dir} already holds a finished run (run.json): choose another --output_dir, or pass "
             "--overwrite_output_dir true to train a new run there")

    # Publishing: the token and the repo are checked now, not after hours of training
    push = training_args.push_to_hub
    training_args.push_to_hub = False  # the Trainer's own push would contact the Hub in __init__ and upload in the background
    if push:
        check_push(script_args, training_args, model_args, state)
    if os.path.isdir(model_args.model_name_or_path):  # the adapter will name the base wherever it is loaded from
        model_args.model_name_or_path = os.path.abspath(model_args.model_name_or_path)

    # Data: validated, then tokenized exactly, before anything heavy is loaded
    if not script_args.train_file:
        fail("train_file is empty: pass --train_file data/train.jsonl (prepare_data.py writes it)")
    try:
        files = {"train": script_args.train_file} | {eval_set_name(path, script_args.eval_file): path
                                                      for path in script_args.eval_file}
        records = {split: load_records(path) for split, path in files.items()}
        fmt = MistralFormat.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision)
    except (DataError, FileNotFoundError) as error:
        fail(str(error))
    except (OSError, ValueError, RuntimeError) as error:  # the Hub's errors, offline misses, a corrupt file
        fail(tokenizer_error(model_args.model_name_or_path, error))
    rows, entries = {}, {}
    for split, path in files.items():
        rows[split], dropped = tokenize_records(records[split], fmt, training_args.max_length)
        if dropped:
            logger.warning(f"{path}: {len(dropped)} of {len(records[split])} examples are longer than max_length="
                           f"{training_args.max_length} tokens and are left out (lines {dropped[:10]}"
                           f"{' ...' if len(dropped) > 10 else ''}); prepare_data.py --max_tokens splits long articles.")
        if not rows[split]:
            fail(f"{path}: no example fits max_length={training_args.max_length}")
        entries[split] = run_record.data_entry(path, len(records[split]), len(rows[split]), dropped)
    for warning in overlap_warnings(files, records):
        logger.warning(warning)
    if script_args.dump_tokenized:
        if state.is_main_process:
            write_jsonl_atomic(script_args.dump_tokenized, rows["train"])
        logger.info(f"wrote {len(rows['train'])} tokenized training examples to {script_args.dump_tokenized}")
        return
    if not script_args.eval_file and training_args.eval_strategy.value != "no":
        fail(f"eval_strategy is {training_args.eval_strategy.value!r} but there is no eval_file: "
             "pass --eval_file FILE, or --eval_strategy no")
    try:
        resume_from = resume_checkpoint(training_args.resume_from_checkpoint, output_dir)
        check_output_dir(output_dir, resume_from is not None, script_args.overwrite_output_dir)
    except OutputDirError as error:
        fail(str(error))

    config = resolved_config(script_args, training_args, model_args) | {"push_to_hub": push}
    state.wait_for_everyone()  # every process has looked at output_dir before the main one writes to it
    if state.is_main_process:
        record = run_record.start(output_dir, config, entries, resume_from, REPO_DIR)
        if model_args.use_peft:
            report_memory_estimate(training_args, model_args, rows["train"])

    # Model and trainer: 8-bit base + LoRA
    tokenizer = load_tokenizer(model_args, training_args, fmt, [r["instruction"] for r in records["train"][:100]])
    eval_rows = {split: split_rows for split, split_rows in rows.items() if split != "train"}
    trainer = build_trainer(model_args, training_args, rows["train"], eval_rows, tokenizer)
    if state.is_main_process and hasattr(trainer.model, "print_trainable_parameters"):
        trainer.model.print_trainable_parameters()

    # Train, then save the adapter and tokenizer before anything else can fail
    result = trainer.train(resume_from_checkpoint=resume_from)
    if script_args.base_model_hub_id:  # the published adapter must name a base anyone can download
        trainer.model.peft_config["default"].base_model_name_or_path = script_args.base_model_hub_id
    trainer.save_model(output_dir)
    metrics = dict(result.metrics) | final_eval_metrics(trainer)

    # Samples, knowledge check, card and run.json, with the trained model still in memory (main process only)
    if state.is_main_process:
        shutil.copy(fmt.model_file, os.path.join(output_dir, "tokenizer.model"))  # generate.py's exact ids
        knowledge = after_training(trainer.model, fmt, script_args, output_dir)
        run_record.finish(output_dir, record, metrics, knowledge, records["train"])
        logger.info(f"saved the adapter, tokenizer, model card and run.json to {output_dir}")
    # All processes leave the process group together, before the main one's upload (which needs none of them):
    # a process tearing down its group while another still works can hang at exit.
    state.wait_for_everyone()
    trainer.accelerator.end_training()

    # Publish
    if push and state.is_main_process:
        publish(output_dir, training_args)


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


def load_tokenizer(model_args, training_args, fmt, instructions):
    """The base's Hugging Face tokenizer, saved with the adapter, with a chat template that gives the training
    ids (warned about when it does not for these instructions)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path, revision=model_args.model_revision,
                                              trust_remote_code=training_args.trust_remote_code)
    tokenizer.chat_template = CHAT_TEMPLATE
    mismatches = chat_template_mismatches(tokenizer, fmt, instructions)
    if mismatches:
        logger.warning(f"for {len(mismatches)} of {len(instructions)} instructions the tokenizer's chat template gives "
                       f"other prompt ids than training (first: {mismatches[0]!r}); generate.py builds exact ids.")
    return tokenizer


def report_memory_estimate(training_args, model_args, rows):
    """Prints the estimated peak GPU memory; warns, naming the settings to change, when it exceeds this GPU."""
    import torch

    from cthulhu_sft.memory import check_fits, estimate_for_args, format_estimate

    longest = max(len(row["input_ids"]) for row in rows)
    shards = PartialState().num_processes if sharded_with_fsdp() else 1
    estimate = estimate_for_args(training_args, model_args, longest_example=longest, fsdp_processes=shards)
    if not torch.cuda.is_available():
        logger.info(format_estimate(estimate))
        return
    device = torch.cuda.get_device_properties(PartialState().device)
    logger.info(format_estimate(estimate, device.total_memory, device.name))
    warning = check_fits(estimate, device.total_memory)
    if warning:
        logger.warning(warning)


def final_eval_metrics(trainer) -> dict:
    """Eval metrics at the last step: those the epoch's evaluation logged, else a new evaluation (all processes)."""
    if trainer.eval_dataset is None:
        return {}
    last = next((entry for entry in reversed(trainer.state.log_history)
                 if any(key.startswith("eval_") and key.endswith("loss") for key in entry)), None)
    if last is not None and last.get("step") == trainer.state.global_step:
        return {key: value for key, value in last.items() if key.startswith("eval_")}
    return trainer.evaluate()


def after_training(model, fmt, script_args, output_dir) -> dict:
    """The sample answers, then the knowledge check; returns the check's record. Neither may lose the saved run:
    a failure is reported, and the exit status stays the training's."""
    if sharded_with_fsdp():  # a sharded model cannot generate on one process
        logger.info("samples and knowledge check skipped under FSDP: run generate.py / evaluate.py on the adapter")
        return {"status": "skipped", "reason": "the model was sharded with FSDP"}
    if script_args.sample_prompts:
        for sample in run_record.answer_samples(model, fmt, script_args, output_dir):
            stop = "</s>" if sample["ended_with_eos"] else "(max_new_tokens reached)"
            logger.info(f"\n[INST] {sample['prompt']} [/INST]\n{sample['answer']} {stop}")
    if not script_args.knowledge_check:
        return {"status": "skipped", "reason": "knowledge_check is false"}
    source_texts = os.path.join(os.path.dirname(script_args.train_file), "source_texts.jsonl")
    try:
        return run_record.knowledge_check(model, fmt, script_args.knowledge_check_files,
                                          script_args.knowledge_check_limit, source_texts, logger.info)
    except Exception as error:  # the adapter is saved: a failed check is reported, never fatal
        logger.warning(f"knowledge check failed: {type(error).__name__}: {error}")
        return {"status": "failed", "reason": f"{type(error).__name__}: {error}"}


def publish(output_dir, training_args):
    from cthulhu_sft import hub

    logger.info(f"pushing {output_dir} to {training_args.hub_model_id} ...")
    try:
        url = hub.push_run(output_dir, training_args.hub_model_id, training_args.hub_private_repo)
    except hub.PushError as error:
        print(f"error: {error}\nEverything is still in {output_dir}; retry the upload with "
              f"`{hub.retry_command(output_dir, training_args.hub_model_id)}`.", file=sys.stderr)
        sys.exit(1)
    logger.info(f"pushed to {url}")


class SayOnce(logging.Filter):
    """Each distinct warning once: bitsandbytes warns about its input cast on every 8-bit matmul (thousands of
    lines in a short run), which would bury the lines that matter."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record):
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def setup_logging():
    """The main process says what happens (stdout) and warns (stderr), each warning once; the other processes
    only report errors. Library deprecation notices about their own internals are not the user's business."""
    say_once = SayOnce()
    info = logging.StreamHandler(sys.stdout)
    info.addFilter(lambda record: record.levelno < logging.WARNING)
    problems = logging.StreamHandler(sys.stderr)
    problems.setLevel(logging.WARNING)
    for handler in (info, problems):
        handler.addFilter(say_once)
    main_process = PartialState().is_main_process
    logging.basicConfig(format="%(message)s", level=logging.INFO if main_process else logging.ERROR,
                        handlers=[info, problems], force=True)
    for name in ("transformers", "trl", "peft", "accelerate", "datasets", "httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*'pin_memory' argument is set as true but no accelerator")


if __name__ == "__main__":
    setup_logging()
    main(*parse_args())
