"""Building the trainer: the 8-bit base, LoRA through TRL's SFTTrainer, and what output_dir may hold.

Shared by train_sft.py and benchmarks/bench_train.py, so that the benchmark measures the product's own path.
"""

import errno
import json
import logging
import os
import re
import shutil
import sys
import time
import warnings
from contextlib import contextmanager

from accelerate import PartialState
from accelerate.utils import parse_flag_from_env
from transformers import TrainerCallback
from transformers.trainer_callback import ExportableState

from .config import fail
from .format import CHAT_TEMPLATE, chat_template_mismatches
from .hub import ADAPTER_FILE
from .logs import SayOnce

logger = logging.getLogger("train_sft")


class OutputDirError(ValueError):
    """output_dir holds something train_sft.py must not overwrite."""


def sharded_with_fsdp() -> bool:
    """Whether `accelerate launch` runs FSDP (configs/fsdp_qlora.yaml), read from the variable the launcher sets:
    accelerate's own state says FSDP only once the Trainer has built its Accelerator, after the model is loaded."""
    return parse_flag_from_env("ACCELERATE_USE_FSDP")


def load_base_model(model_args, training_args):
    """The base model, quantized as configured, on this process's own device, its unquantized parts in `dtype`.

    Every base is placed on this process's device while it loads (a bf16 base too, which would otherwise pass
    through CPU memory first): TRL 1.16's SFTTrainer sets device_map=None under data parallel, and
    device_map="auto" would split one copy over all GPUs. Under FSDP (configs/fsdp_qlora.yaml) FSDP places the
    shards itself.

    PEFT's prepare_model_for_kbit_training is not run: it casts the embeddings, norms and lm_head to float32, so
    the residual stream and every quantized linear's input become float32, and bitsandbytes' 8-bit matmul and its
    backward (which autocast does not reach) then run in float32 instead of bf16. What it does besides is done
    by the libraries: get_peft_model freezes the base, and the Trainer's activation_checkpointing_enable() turns on
    checkpointing and the input gradients it needs. The norms need no float32 weights for stability: Mistral's
    RMSNorm computes its statistics in float32 whatever its weight's dtype, and the loss is taken in float32.
    """
    from transformers import AutoModelForCausalLM
    from trl import get_quantization_config

    allow_tf32()
    model = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=model_args.dtype,
        attn_implementation=model_args.attn_implementation,
        trust_remote_code=training_args.trust_remote_code,
        quantization_config=get_quantization_config(model_args),
        device_map=None if sharded_with_fsdp() else {"": PartialState().device},
    )
    if model_args.load_in_4bit:
        import bitsandbytes as bnb

        # On a CPU with AVX512-BF16, bitsandbytes 0.50 repacks a 4-bit linear for an inference kernel without a
        # backward at the first evaluation; training after it would lose the gradients through every 4-bit linear
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                module.support_avx512bf16_for_cpu = False
    return model


def allow_tf32() -> None:
    """TF32 for the float32 matmuls that remain (where TRL's fused loss head accumulates in float32 through a
    float32 matmul; every matmul of a run with --bf16 false) on a GPU that has it. Set here, not as `tf32: true` in sft_config.yaml: TrainingArguments refuses that option at
    parsing on a machine without such a GPU."""
    import torch
    from transformers.utils import is_torch_tf32_available
    from transformers.utils.import_utils import enable_tf32

    if torch.cuda.is_available() and is_torch_tf32_available():
        enable_tf32(True)


def build_trainer(model_args, training_args, train_rows, eval_sets: dict, tokenizer):
    """SFTTrainer on already tokenized rows ({input_ids, labels}); `eval_sets` maps a name to its rows, and each
    set is logged as eval_<name>_loss (a single set named "eval" as eval_loss)."""
    from datasets import Dataset
    from trl import SFTTrainer, get_peft_config

    if training_args.padding_free and not training_args.packing:
        # TRL refuses padding-free batches without packing while max_length is set, as it would not enforce it
        # there; examples over max_length were dropped while tokenizing, so nothing is lost.
        training_args.max_length = None
    datasets = {name: Dataset.from_list(rows) for name, rows in eval_sets.items()}
    if list(datasets) == ["eval"]:
        datasets = datasets["eval"]
    trainer = SFTTrainer(
        model=load_base_model(model_args, training_args),
        args=training_args,
        train_dataset=Dataset.from_list(train_rows),
        eval_dataset=datasets or None,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
        callbacks=[TrainingClock()],
    )
    if not sharded_with_fsdp():  # FSDP flattens each unit into one tensor of one dtype: LoRA stays in the base's
        keep_adapter_in_float32(trainer.model)
    return trainer




def save_adapter(trainer, output_dir: str) -> None:
    """Trainer.save_model on every process, then, on the main one, a refusal (exit 1) when no adapter file was
    written, so that a run without an adapter is never recorded as finished nor pushed.

    Under FSDP with SHARDED_STATE_DICT (configs/fsdp_qlora.yaml checkpoints that way) Trainer.save_model writes
    nothing. As PEFT's FSDP example (examples/sft/train.py) does, the state dict type is switched to
    FULL_STATE_DICT first: the adapter is gathered whole on the main process and saved there.
    """
    if trainer.is_fsdp_enabled:
        trainer.accelerator.state.fsdp_plugin.set_state_dict_type("FULL_STATE_DICT")
    trainer.save_model(output_dir)
    if trainer.args.should_save and hasattr(trainer.accelerator.unwrap_model(trainer.model), "peft_config"):
        check_adapter_written(output_dir)


def check_adapter_written(output_dir: str) -> None:
    """Exits (code 1) naming the missing file when output_dir holds no adapter weights."""
    if not os.path.isfile(os.path.join(output_dir, ADAPTER_FILE)):
        raise SystemExit(f"error: training ended but no {ADAPTER_FILE} was written to {output_dir}; the run is not "
                         "recorded as finished (under FSDP, check fsdp_state_dict_type in the accelerate config)")


class TrainingClock(TrainerCallback, ExportableState):
    """The seconds a run has trained, across the calls that resumed it: kept in each checkpoint's
    trainer_state.json (the Trainer saves ExportableState callbacks there) and read back from the resumed one."""

    def __init__(self):
        self.before, self.started = 0.0, None

    def on_train_begin(self, args, state, control, **kwargs):
        saved = state.stateful_callbacks.get(type(self).__name__)  # the resumed checkpoint's, if it has one
        self.before = float(saved["attributes"]["seconds"]) if isinstance(saved, dict) else 0.0
        self.started = time.monotonic()
        state.stateful_callbacks.setdefault(type(self).__name__, self.state())  # a checkpoint saved before this clock

    def seconds(self) -> float:
        return self.before + (time.monotonic() - self.started if self.started is not None else 0.0)

    def state(self) -> dict:
        return {"args": {}, "attributes": {"seconds": self.seconds()}}


def run_metrics(trainer, metrics: dict, resumed_from: str | None) -> dict:
    """The training metrics of the whole run. The Trainer's describe its last call only: resumed at the last
    step, train_loss 0 and a runtime of a millisecond. A resumed run's train_loss is the mean over its steps (the
    resumed checkpoint's logged losses, weighted by the steps each covers, with this call's), its train_runtime the
    TrainingClock's seconds over all calls up to the checkpoint plus this call's, and the speeds follow from them."""
    if resumed_from is None:
        return metrics
    with open(os.path.join(resumed_from, "trainer_state.json"), encoding="utf-8") as file:
        start_step = json.load(file)["global_step"]
    steps_now = trainer.state.global_step - start_step
    loss_sum, logged_step = 0.0, 0
    for entry in trainer.state.log_history:
        if "loss" in entry and logged_step < entry["step"] <= start_step:
            loss_sum += entry["loss"] * (entry["step"] - logged_step)
            logged_step = entry["step"]
    clock = next(callback for callback in trainer.callback_handler.callbacks if isinstance(callback, TrainingClock))
    runtime = clock.before + metrics["train_runtime"]
    samples_per_step = trainer.args.train_batch_size * trainer.args.gradient_accumulation_steps * trainer.args.world_size
    steps = trainer.state.global_step
    return metrics | {
        "train_loss": (loss_sum + metrics["train_loss"] * steps_now) / max(logged_step + steps_now, 1),
        "train_runtime": round(runtime, 4),
        "train_steps_per_second": round(steps / runtime, 3) if runtime else None,
        "train_samples_per_second": round(steps * samples_per_step / runtime, 3) if runtime else None,
    }


def keep_adapter_in_float32(model) -> None:
    """SFTTrainer casts the trainable LoRA weights of a quantized base to bfloat16 (the QLoRA paper's recipe).
    bf16 master weights round away updates below ~2^-8 of a weight, late in a cosine schedule, and a resumed run
    would continue from the rounded checkpoint in another precision. Mixed precision keeps the weights and the
    optimizer state in float32 and computes in bf16 under autocast (bf16: true), as PEFT does by default."""
    import torch

    for parameter in model.parameters():
        if parameter.requires_grad and parameter.dtype != torch.float32:
            parameter.data = parameter.data.float()


def read_run(output_dir: str) -> dict | None:
    """output_dir's run.json, or None when there is none (or it cannot be read)."""
    try:
        with open(os.path.join(output_dir, "run.json"), encoding="utf-8") as file:
            return json.load(file)
    except (OSError, ValueError):
        return None


def newest_complete_checkpoint(output_dir: str) -> str | None:
    """The checkpoint with the highest step whose trainer_state.json, which the Trainer writes last, is whole.

    A run killed while saving leaves a checkpoint folder without it (transformers' get_last_checkpoint would
    pick that folder and fail); such folders are skipped.
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
        try:
            with open(os.path.join(output_dir, name, "trainer_state.json"), encoding="utf-8") as handle:
                json.load(handle)
            return os.path.join(output_dir, name)
        except (OSError, ValueError):
            continue
    return None


def resume_requested(value) -> bool:
    """Whether --resume_from_checkpoint asks for a resume (TrainingArguments keeps "true" as a string)."""
    return value is not None and str(value).lower() not in ("false", "none", "")


def resume_checkpoint(value, output_dir: str) -> str | None:
    """`--resume_from_checkpoint true` is the newest complete checkpoint in output_dir; a path is used as given."""
    if not resume_requested(value):
        return None
    if str(value).lower() == "true":
        last = newest_complete_checkpoint(output_dir)
        if last is None:
            unfinished = sorted(name for name in (os.listdir(output_dir) if os.path.isdir(output_dir) else [])
                                if name.startswith("checkpoint-"))
            note = f" ({', '.join(unfinished)}: saved only in part, no trainer_state.json)" if unfinished else ""
            raise OutputDirError(f"--resume_from_checkpoint true: no complete checkpoint-* folder in {output_dir}"
                                 f"{note}; start the run again: the same command without --resume_from_checkpoint")
        return last
    if not os.path.isdir(value):
        raise OutputDirError(f"--resume_from_checkpoint: {value} is not a folder")
    return value


def check_output_dir(output_dir: str, resuming: bool, overwrite: bool) -> None:
    """Raises OutputDirError unless output_dir may receive a new run (or, resuming, the continued one).

    A finished run is never touched unless --overwrite_output_dir (train_sft.py stops before calling this); a run
    with a complete checkpoint is continued with --resume_from_checkpoint true; a run that stopped before its first
    complete checkpoint (killed, or the disk full while saving it) is simply started again, its unfinished
    checkpoint folders removed; any other non-empty folder is the user's and is refused. With
    --overwrite_output_dir a new run starts there, and an earlier run's checkpoints are removed so that a later
    resume cannot pick them up. Folders are removed by the main process.
    """
    names = os.listdir(output_dir) if os.path.isdir(output_dir) else []
    if resuming or not names:
        return
    checkpoints = [name for name in names if name.startswith("checkpoint-")]
    if not overwrite and read_run(output_dir) is None:
        raise OutputDirError(
            f"{output_dir} is not empty and holds no cthulhu-sft run (no run.json); its files (e.g. a README.md) "
            "would be replaced: choose another --output_dir, or pass --overwrite_output_dir true")
    if not overwrite and newest_complete_checkpoint(output_dir):
        raise OutputDirError(f"{output_dir} holds an unfinished run with checkpoints: continue it with "
                             "--resume_from_checkpoint true, or choose another --output_dir")
    if checkpoints and PartialState().is_main_process:
        if not overwrite:
            logger.info(f"{output_dir}: starting the unfinished run again; removing {', '.join(sorted(checkpoints))} "
                        "(saved only in part)")
        for name in checkpoints:
            shutil.rmtree(os.path.join(output_dir, name))


# A write that failed for want of room: the disk or quota full, or a file size limit
WRITE_FAILURE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
# How torch.save reports a write that failed (its C++ stream writer gives no errno)
TORCH_WRITE_FAILURES = ("PytorchStreamWriter", "iostream error", "unexpected pos", "file write failed")


def write_failure(error: BaseException) -> str | None:
    """Why `error` (or an error it was raised from) is a write that failed for want of room, or None. Python, the
    tokenizers and safetensors libraries give an errno ("(os error 28)"), torch's serializer only a message."""
    while error is not None:
        code = getattr(error, "errno", None)
        if code is None and (found := re.search(r"os error (\d+)", str(error))):
            code = int(found.group(1))
        if code in WRITE_FAILURE_ERRNOS:
            return os.strerror(code)
        if any(marker in str(error) for marker in TORCH_WRITE_FAILURES):
            return f"the write failed ({str(error).strip().splitlines()[0]}); is the disk full?"
        error = error.__cause__ or error.__context__
    return None


@contextmanager
def stop_if_disk_full(what, output_dir: str):
    """A write inside the block that fails for want of room ends the run with one line (exit status 1): the path
    (the error's own, else `what`, or `what()` for a path known only then), the reason, and the command to run once
    there is room. Other errors pass through."""
    try:
        yield
    except Exception as error:
        reason = write_failure(error)
        if reason is None:
            raise
        where = getattr(error, "filename", None) or (what() if callable(what) else what)
        then = ("continue the run with --resume_from_checkpoint true" if newest_complete_checkpoint(output_dir) else
                "run the same command again, without --resume_from_checkpoint (the run starts again)")
        print(file=sys.stderr)  # off the progress bar's line, which the failure left open
        fail(f"cannot write {where}: {reason}. Free space on that disk (or choose an --output_dir on another), then "
             f"{then}", code=1)


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
    """Prints the estimated peak GPU memory; warns, naming the settings to change, when it exceeds this GPU. On the
    CPU one line says so: the estimate's parts (CUDA context, GPU activations) describe a GPU."""
    import torch

    from .memory import check_fits, estimate_for_args, format_estimate, gib

    longest = max(len(row["input_ids"]) for row in rows)
    shards = PartialState().num_processes if sharded_with_fsdp() else 1
    estimate = estimate_for_args(training_args, model_args, longest_example=longest, fsdp_processes=shards)
    if not torch.cuda.is_available():
        logger.info(f"Training on the CPU (no GPU found): no GPU memory check; on a GPU these settings would need "
                    f"about {gib(estimate.total)} per process (estimate, cthulhu_sft/memory.py).")
        return
    device = torch.cuda.get_device_properties(PartialState().device)
    logger.info(format_estimate(estimate, device.total_memory, device.name))
    warning = check_fits(estimate, device.total_memory)
    if warning:
        logger.warning(warning)


def final_eval_metrics(trainer) -> dict:
    """Eval metrics at the last step, of every eval set: those the last evaluation logged (one log entry per set),
    else a new evaluation (all processes). TRL adds its own metrics (entropy, token accuracy) to each set's entry
    without the set's name; they get it here (eval_known_entropy), so that one set's value does not replace another's."""
    if trainer.eval_dataset is None:
        return {}
    sets = len(trainer.eval_dataset) if isinstance(trainer.eval_dataset, dict) else 1

    def logged():
        return [entry for entry in trainer.state.log_history if entry.get("step") == trainer.state.global_step
                and any(key.startswith("eval_") and key.endswith("loss") for key in entry)]

    if len(logged()) < sets:
        trainer.evaluate()
    metrics = {}
    for entry in logged()[-sets:]:
        loss = min((key for key in entry if key.startswith("eval_") and key.endswith("loss")), key=len)
        prefix = loss.removesuffix("loss")  # "eval_known_", or "eval_" for a single set
        metrics |= {key if key.startswith(prefix) else prefix + key.removeprefix("eval_"): value
                    for key, value in entry.items() if key.startswith("eval_")}
    return metrics


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
