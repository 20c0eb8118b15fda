"""One prepared check of the training recipe on a machine with one GPU and no internet, in under 8 minutes.

A MistralForCausalLM of Mistral-7B-v0.2's shape with random weights is built from its config (saved once to
--cache_dir, 14.5 GB), with the tokenizer that mistral-common ships (or --tokenizer_model). For each base (8-bit,
4-bit, bf16) the trainer train_sft.py builds (cthulhu_sft.training.build_trainer, sft_config.yaml's settings) trains
a few steps padding-free, then padded (the same trainer with TRL's padded collator), and the script reports, as
JSON lines on stdout and in --out, each with a `check` field:

    environment       device, library versions, TF32, flash-attn
    memory_estimate   cthulhu_sft.memory's estimate for Mistral-7B's shape, per base and variant
    training          base, variant, layer0_linears (input and output dtype of each projection of layer 0's base
                      linears, the quantized ones on a k-bit base), tokens/s, MFU, peak memory against the estimate
                      for the largest micro-batch trained (peak_over_estimate)
    padding_free_exactness   loss per answer token of a padding-free row against each example alone, and a
                      control that lets the examples attend to each other (it must differ more)
    decode            the knowledge check's decoding (cthulhu_sft.inference.generate, greedy) in tokens/s per batch
    skipped           a check the time budget (--budget_s) left out; error: a check that failed (exit code 1)

    python benchmarks/gpu_check.py --out gpu_check.jsonl
    python benchmarks/gpu_check.py --smoke        # the same code on the CPU with the tiny model, in seconds

--smoke trains the tiny test model (hidden 64, 2 layers) with weights in bfloat16 (the shipped dtype; bitsandbytes'
CPU kernels take it), so the dtype flow is the GPU's; its speed and memory mean nothing, but each training record
also carries `estimate_7b_gib`, the estimate for Mistral-7B's shape at the same settings. How to run it on a lent
GPU without network: benchmarks/RESULTS.md, "GPU".
"""

import argparse
import contextlib
import dataclasses
import gc
import importlib.metadata
import importlib.util
import json
import logging
import resource
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import bench_train  # noqa: E402  (the benchmark's model builder, synthetic data, FLOP count)

BASES = {
    "8bit": ["--load_in_8bit", "true", "--load_in_4bit", "false"],
    "4bit": ["--load_in_8bit", "false", "--load_in_4bit", "true"],
    "bf16": ["--load_in_8bit", "false", "--load_in_4bit", "false"],
}
VARIANTS = ("padding_free", "padded")
PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GiB = 1024**3
# Seconds a base needs at least on an H200 (load and quantize, both variants, exactness, decoding): a base is
# skipped when less is left, so that the run ends inside its budget
BASE_SECONDS = {"gpu": 150, "cpu": 1}
SETTINGS = {  # (GPU, smoke)
    "batch_size": (8, 2), "max_length": (1024, 256), "warmup": (1, 1), "steps": (3, 1),
    "decode_batches": ((8, 32), (2,)), "decode_tokens": (32, 4), "exactness_examples": (8, 3),
}


class Report:
    """JSON lines to stdout and to a file, each written as soon as it is known."""

    def __init__(self, path: Path):
        self.file = open(path, "w", encoding="utf-8")  # noqa: SIM115  (open for the whole run)
        self.errors = 0

    def __call__(self, check: str, **fields):
        line = json.dumps({"check": check, **fields}, ensure_ascii=False)
        print(line, flush=True)
        self.file.write(line + "\n")
        self.file.flush()
        self.errors += check == "error"


class Budget:
    def __init__(self, seconds: float):
        self.start, self.seconds = time.monotonic(), seconds

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="the tiny model on the CPU (what the tests run)")
    parser.add_argument("--out", type=Path, default=Path("gpu_check.jsonl"), help="(default: %(default)s)")
    parser.add_argument("--budget_s", type=float, default=480, help="stop starting checks so that the run ends "
                        "within this many seconds (default: %(default)s)")
    parser.add_argument("--bases", nargs="+", default=list(BASES), choices=list(BASES))
    parser.add_argument("--attn_implementation", default=None, help="(default: sft_config.yaml's)")
    parser.add_argument("--cache_dir", type=Path, default=Path(tempfile.gettempdir()) / "gpu_check",
                        help="the built model is kept here (default: %(default)s)")
    parser.add_argument("--tokenizer_model", type=Path, default=None, help="Mistral's SentencePiece file (default: "
                        "the copy in the mistral-common package)")
    args = parser.parse_args(argv)
    import torch

    if not args.smoke and not torch.cuda.is_available():
        parser.error("no GPU here: --smoke runs the same checks on the CPU with the tiny model")
    for name, (on_gpu, smoke) in SETTINGS.items():
        setattr(args, name, smoke if args.smoke else on_gpu)
    return args


# --- Settings, data, the trainer -------------------------------------------------------------------------------

def parsed_settings(args, base: str, variant: str, output_dir: str):
    """SFTConfig and ModelConfig as train_sft.py parses them from sft_config.yaml, with the check's overrides."""
    from cthulhu_sft.config import SFT_CONFIG, parse_args

    argv = [
        "--config", str(SFT_CONFIG), "--model_name_or_path", str(args.model_dir), "--output_dir", output_dir,
        "--max_steps", str(args.warmup + args.steps), "--per_device_train_batch_size", str(args.batch_size),
        "--gradient_accumulation_steps", "1", "--max_length", str(args.max_length), "--report_to", "none",
        "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "1000", "--disable_tqdm", "true",
        "--padding_free", str(variant == "padding_free").lower(), *BASES[base],
    ]
    if args.attn_implementation:
        argv += ["--attn_implementation", args.attn_implementation]
    if args.smoke:  # bf16 autocast cannot be parsed without a GPU; the weights stay in sft_config's bfloat16
        argv += ["--use_cpu", "true", "--bf16", "false"]
    _, training_args, model_args = parse_args(argv)
    return training_args, model_args


def training_rows(args, fmt) -> list[dict]:
    """Synthetic examples of prepare_data.py's lengths, enough for every step."""
    from cthulhu_sft.data import tokenize_records

    answer_chars = (100, 900) if not args.smoke else (10, 60)
    records = bench_train.synthetic_records(args.batch_size * (args.warmup + args.steps + 1) * 2, 0,
                                            answer_chars=answer_chars)
    rows, _ = tokenize_records([{**r, "line": i} for i, r in enumerate(records)], fmt, args.max_length)
    return rows


class LinearDtypes:
    """The dtypes that reach (and leave) layer 0's base linears, the quantized ones on a k-bit base: forward
    hooks on PEFT's base_layer of each projection, the first forward's."""

    def __init__(self, model):
        self.seen = {}
        self.handles = []
        for name, module in model.named_modules():
            for projection in PROJECTIONS:
                if name.endswith(f"layers.0.self_attn.{projection}.base_layer") or \
                        name.endswith(f"layers.0.mlp.{projection}.base_layer"):
                    self.handles.append(module.register_forward_hook(self.hook(projection, type(module).__name__)))

    def hook(self, projection: str, class_name: str):
        def record(module, inputs, output):
            self.seen.setdefault(projection, {"input": str(inputs[0].dtype).removeprefix("torch."),
                                              "output": str(output.dtype).removeprefix("torch."),
                                              "class": class_name})
        return record

    def remove(self):
        for handle in self.handles:
            handle.remove()


def estimate_fields(training_args, model_args, rows, shape_7b) -> dict:
    """estimate_gib: cthulhu_sft.memory's peak allocation for the model and batches trained here (on a GPU, to be
    compared with peak_memory_gib); estimate_7b_gib: for Mistral-7B's shape at sft_config.yaml's batch and
    max_length (the worst case: rows of max_length) under bf16, the same in --smoke and on a GPU."""
    from cthulhu_sft.config import sft_defaults
    from cthulhu_sft.memory import estimate_for_args, estimate_memory

    estimate = estimate_for_args(training_args, model_args, longest_example=max(len(r["input_ids"]) for r in rows))
    shipped = sft_defaults()
    seven_b = estimate_memory(shape_7b, **(estimate.settings | {
        "bf16": True, "max_length": shipped["max_length"],
        "per_device_train_batch_size": shipped["per_device_train_batch_size"]}))
    return {"estimate": estimate, "estimate_gib": estimate.peak_allocated / GiB,
            "estimate_total_gib": estimate.total / GiB, "estimate_7b_gib": seven_b.peak_allocated / GiB,
            "estimate_7b_total_gib": seven_b.total / GiB}


def train_variant(trainer, args, budget: Budget, estimate, base: str, variant: str) -> dict:
    """Trains warm-up + timed steps with the trainer's collator; the training record's measurements. The peak is
    compared with the estimate for the largest micro-batch trained (`estimate_largest_batch_gib`), not with the
    worst case of rows of max_length (`estimate_gib`), which a batch of shorter examples stays well below."""
    import torch
    from transformers import TrainerCallback

    from cthulhu_sft.memory import with_settings

    cuda = torch.cuda.is_available()

    class Steps(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, _args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())
            if budget.left() < 0:
                control.should_training_stop = True

    batches = []
    collator = trainer.data_collator
    trainer.data_collator = bench_train.count_batches(collator, batches)
    trainer.add_callback(steps := Steps())
    dtypes = LinearDtypes(trainer.model)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its final metrics; stdout is for the records
        trainer.train()
    trainer.remove_callback(steps)
    trainer.data_collator = collator
    dtypes.remove()
    trained = batches[:len(steps.ends)]  # accelerate's loader collates one batch ahead that is never trained
    timed = trained[args.warmup:]
    seconds = steps.ends[-1] - steps.ends[args.warmup - 1] if len(steps.ends) > args.warmup else None
    tokens = sum(batch["tokens"] for batch in timed)
    record = {
        "base": base, "variant": variant, "layer0_linears": dtypes.seen,
        "timed_steps": len(timed), "step_seconds": seconds / len(timed) if seconds else None,
        "tokens_per_s": tokens / seconds if seconds else None,
        "answer_tokens_per_s": sum(b["answer_tokens"] for b in timed) / seconds if seconds else None,
        "padding_share": 1 - tokens / sum(b["slots"] for b in timed) if timed else None,
        "tokens_per_micro_batch_max": max((b["slots"] for b in timed), default=None),
    }
    largest = max(trained, key=lambda b: b["slots"])  # the peak is that of the longest step, warm-up included
    rows = 1 if variant == "padding_free" else len(largest["lengths"])
    for_batch = with_settings(estimate, per_device_train_batch_size=rows, max_length=largest["slots"] // rows)
    record |= {"largest_batch": {"rows": rows, "slots": largest["slots"]},
               "estimate_largest_batch_gib": for_batch.peak_allocated / GiB, "estimate_settings": estimate.settings}
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        flops = sum(bench_train.model_flops(b, estimate.shape, estimate.lora_parameter_count) for b in timed)
        device_peak = bench_train.peak_flops(torch.cuda.get_device_name(), None)
        record |= {"peak_memory_gib": peak / GiB, "peak_memory_kind": "cuda max allocated",
                   "peak_over_estimate": peak / for_batch.peak_allocated,
                   "mfu": flops / seconds / device_peak if seconds and device_peak else None}
    else:
        record |= {"peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GiB,
                   "peak_memory_kind": "cpu max rss (not comparable with the estimate)", "mfu": None}
    return record


# --- Exactness and decoding on the trained model ----------------------------------------------------------------

def padding_free_exactness(model, fmt, rows: list[dict]) -> dict:
    """Mean loss per answer token: each example alone, all in one padding-free row, and the leak control (the same
    row without position restarts, so the examples attend to each other). The model is called as the trainer
    calls it (use_cache=False: with a cache transformers builds no packed-sequence mask)."""
    import torch
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    device = next(p.device for p in model.parameters())

    def loss(batch) -> tuple[float, int]:
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            logits = model(**inputs, use_cache=False).logits.float()
        labels = batch["labels"].to(device)[:, 1:]
        total = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1),
                                                  ignore_index=-100, reduction="sum")
        return total.item(), int((labels != -100).sum())

    def mean(parts):
        return sum(p[0] for p in parts) / sum(p[1] for p in parts)

    padded = DataCollatorForLanguageModeling(pad_token_id=fmt.eos_id)
    flat = DataCollatorForLanguageModeling(pad_token_id=fmt.eos_id, padding_free=True)
    leak = flat(rows)
    leak["position_ids"] = torch.arange(leak["input_ids"].size(1))[None]
    for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
        leak.pop(key, None)
    was_training = model.training
    model.eval()
    try:
        alone = mean([loss(padded([row])) for row in rows])
        together, control = mean([loss(flat(rows))]), mean([loss(leak)])
    finally:
        model.train(was_training)
    difference, control_difference = abs(together - alone), abs(control - alone)
    return {"examples": len(rows), "loss_alone": alone, "loss_padding_free": together, "difference": difference,
            "control_difference": control_difference, "leak_visible": control_difference > 5 * difference}


def decode_speed(model, fmt, batch_size: int, new_tokens: int) -> dict:
    """Greedy answers to one batch of knowledge-check-like questions, as the knowledge check decodes them."""
    import torch

    from cthulhu_sft.inference import generate

    questions = [[{"role": "user", "content": f"クトゥルフ神話の{i}番目の神格の名前は何ですか？"}] for i in range(batch_size)]
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started = time.perf_counter()
    answers = generate(model, fmt, questions, batch_size=batch_size, temperature=0, max_new_tokens=new_tokens)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    tokens = sum(len(answer.token_ids) for answer in answers)
    return {"batch_size": batch_size, "new_tokens": tokens, "seconds": seconds, "tokens_per_s": tokens / seconds,
            "seconds_per_question": seconds / batch_size}


# --- Driver -------------------------------------------------------------------------------------------------------

def environment() -> dict:
    import torch

    versions = {name: importlib.metadata.version(name) for name in
                ("torch", "transformers", "peft", "trl", "bitsandbytes", "accelerate")}
    fields = {"versions": versions, "flash_attn": importlib.util.find_spec("flash_attn") is not None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        fields |= {"device": props.name, "device_memory_gib": props.total_memory / GiB, "cuda": torch.version.cuda}
    else:
        fields |= {"device": "cpu"}
    return fields


def tf32_setting() -> str:
    """cuBLAS's float32 matmul precision ("tf32" once load_base_model has enabled it on a GPU). Read through
    torch's fp32_precision where it exists: transformers' enable_tf32 sets that API, and torch (2.9 and later) then
    raises on any read of the legacy allow_tf32 flag."""
    import torch

    matmul = torch.backends.cuda.matmul
    return matmul.fp32_precision if hasattr(matmul, "fp32_precision") else str(matmul.allow_tf32)


def check_base(args, report: Report, budget: Budget, base: str, fmt, rows, shape_7b):
    """Both variants of one base with one loaded model, then exactness and decoding on it."""
    import torch
    from transformers import AutoTokenizer

    from cthulhu_sft.training import build_trainer

    output_dir = tempfile.mkdtemp(prefix="gpu-check-")
    parsed = {variant: parsed_settings(args, base, variant, output_dir) for variant in VARIANTS}
    estimates = {variant: estimate_fields(*parsed[variant], rows, shape_7b) for variant in VARIANTS}
    for variant in VARIANTS:
        fields = {k: v for k, v in estimates[variant].items() if k != "estimate"}
        report("memory_estimate", base=base, variant=variant, **fields)
    training_args, model_args = parsed["padding_free"]
    trainer = build_trainer(model_args, training_args, rows, {}, AutoTokenizer.from_pretrained(args.model_dir))
    report("load", base=base, seconds_since_start=args.budget_s - budget.left(), tf32=tf32_setting())
    for variant in VARIANTS:
        if budget.left() < 0:
            report("skipped", base=base, variant=variant, reason="time budget")
            continue
        if variant == "padded":  # the same trainer with TRL's padded collator (a second load would cost a minute)
            trainer.data_collator = dataclasses.replace(trainer.data_collator, padding_free=False)
        estimate = estimates[variant]
        record = train_variant(trainer, args, budget, estimate["estimate"], base, variant)
        report("training", **record, **{k: v for k, v in estimate.items() if k != "estimate"},
               attn_implementation=model_args.attn_implementation)
        if variant == "padding_free" and budget.left() > 0:
            report("padding_free_exactness", base=base,
                   **padding_free_exactness(trainer.model, fmt, rows[:args.exactness_examples]))
    for batch_size in args.decode_batches:
        if budget.left() < 0:
            report("skipped", base=base, check_skipped="decode", batch_size=batch_size, reason="time budget")
            continue
        report("decode", base=base, **decode_speed(trainer.model, fmt, batch_size, args.decode_tokens))
    if torch.cuda.is_available():  # the next base needs the GPU memory this one holds (on the CPU: seconds of gc)
        trainer.accelerator.free_memory()
        del trainer
        gc.collect()
        torch.cuda.empty_cache()


def main(argv=None) -> int:
    from transformers import MistralConfig

    from cthulhu_sft.format import MistralFormat
    from cthulhu_sft.logs import quiet_bitsandbytes
    from cthulhu_sft.memory import ModelShape

    args = parse_arguments(argv)
    budget = Budget(args.budget_s)
    logging.basicConfig(format="%(message)s", level=logging.WARNING, stream=sys.stderr)  # stdout: the records only
    quiet_bitsandbytes()  # its cast notice once, not once per 8-bit matmul
    report = Report(args.out)
    report("environment", smoke=args.smoke, budget_s=args.budget_s, **environment())
    args.model_dir = bench_train.prepare_model("tiny" if args.smoke else "mistral-7b-shaped", args.cache_dir,
                                               args.tokenizer_model)
    fmt = MistralFormat(str(args.model_dir / "tokenizer.model"))
    rows = training_rows(args, fmt)
    shape_7b = ModelShape.from_config(MistralConfig(**bench_train.MISTRAL_7B))
    for base in args.bases:
        if budget.left() < BASE_SECONDS["cpu" if args.smoke else "gpu"]:
            report("skipped", base=base, reason="time budget")
            continue
        try:
            check_base(args, report, budget, base, fmt, rows, shape_7b)
        except Exception as error:  # noqa: BLE001  (one base failing must not hide the others' figures)
            report("error", base=base, error=f"{type(error).__name__}: {error}"[:500])
    report("done", seconds=args.budget_s - budget.left(), errors=report.errors)
    return 1 if report.errors else 0


if __name__ == "__main__":
    sys.exit(main())
