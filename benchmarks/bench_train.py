"""Training speed and memory of train_sft.py's real path, per variant: batching, checkpointing, base precision.

Each variant runs in its own process: sft_config.yaml parsed by the real parser with the variant's overrides,
data tokenized by `cthulhu_sft.data.tokenize_records`, and the trainer built by the product's own
`cthulhu_sft.training.build_trainer` (the base, LoRA in float32, SFTTrainer and its collator). After `--warmup`
optimizer steps, `--steps` timed ones give per variant: answer tokens/s, tokens/s (prompt + answer, padding not
counted), share of padding, step time, peak memory (CUDA max allocated on a GPU, peak RSS on the CPU), and on a
GPU the estimate of cthulhu_sft.memory beside it and the model FLOPs utilisation against the device's dense bf16
peak.

CPU, the tiny test model (hidden 64, 2 layers, the real 32000 vocabulary), variants compared by ratio:
    python benchmarks/bench_train.py --model tiny
GPU, a MistralForCausalLM of Mistral-7B-v0.2's shape with random weights (saved once to --cache_dir, 14.5 GB,
then loaded through the real 8-bit/4-bit/bf16 path; no download):
    python benchmarks/bench_train.py --model mistral-7b-shaped --batch_size 8 --accumulation 2 --warmup 2 --steps 5
Exactness of each batching strategy (no example may attend to another): the per-token loss of padded, packed and
padding-free batches against each example run alone, for each attention implementation available:
    python benchmarks/bench_train.py --exactness
`--variants a b ...` picks variants by name (`<padded|packing|padding_free>+<ckpt|no-ckpt>+<8bit|4bit|16bit>`,
optionally `+liger`); `--append_to benchmarks/RESULTS.md` adds the printed section to that file.

Synthetic data: questions of 10-40 and answers of 100-900 characters (uniform), the lengths prepare_data.py's
Wikipedia sections have at max_length 1024, made of characters drawn with the frequencies of the answers of the
hand-written sample (data/sample/train.jsonl), so that the tokenizer sees real Japanese (about one token per
character).
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import random
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SAMPLE_ANSWERS = REPO / "data" / "sample" / "train.jsonl"
BATCHING = {
    "padded": ["--padding_free", "false", "--packing", "false"],
    "packing": ["--packing", "true", "--packing_strategy", "bfd"],
    "padding_free": ["--padding_free", "true", "--packing", "false"],
}
CHECKPOINTING = {"ckpt": ["--activation_checkpointing", "true"], "no-ckpt": ["--activation_checkpointing", "false"]}
BASES = {
    "8bit": ["--load_in_8bit", "true", "--load_in_4bit", "false"],
    "4bit": ["--load_in_8bit", "false", "--load_in_4bit", "true"],
    "16bit": ["--load_in_8bit", "false", "--load_in_4bit", "false"],  # bfloat16 on a GPU, float32 on the CPU
}
# One change at a time from sft_config.yaml's defaults (the first)
DEFAULT_VARIANTS = [
    "padding_free+ckpt+8bit",
    "padded+ckpt+8bit",
    "packing+ckpt+8bit",
    "padding_free+no-ckpt+8bit",
    "packing+no-ckpt+8bit",
    "padding_free+ckpt+4bit",
    "padding_free+ckpt+16bit",
]
GPU_EXTRA_VARIANTS = ["padding_free+ckpt+8bit+liger"]
# Dense bf16 peak of the GPUs we may get, by a part of the name torch reports
PEAK_BF16_FLOPS = {"A100": 312e12, "H100 PCIe": 756e12, "H100": 989e12, "H200": 989e12, "L40S": 362e12, "A10G": 70e12}
MISTRAL_7B = dict(
    vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, max_position_embeddings=32768, rope_theta=1e6, sliding_window=None,
    rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
)  # mistralai/Mistral-7B-Instruct-v0.2's config.json
SMALL = dict(
    vocab_size=32000, hidden_size=512, intermediate_size=1792, num_hidden_layers=8, num_attention_heads=8,
    num_key_value_heads=2, max_position_embeddings=4096, sliding_window=None, bos_token_id=1, eos_token_id=2,
    tie_word_embeddings=False,
)  # Mistral-7B's ratios at 1/8 width: the layers weigh more against the 32000-word head than in the tiny model
# Options a variant's process gets from the driver's command line
FORWARDED = ("batch_size", "accumulation", "max_length", "attn_implementation", "warmup", "steps", "seed", "peak_tflops")


def variant_flags(name: str) -> list[str]:
    """train_sft.py's flags for a variant name; ValueError for a name that is not one."""
    parts = name.split("+")
    if len(parts) not in (3, 4) or parts[0] not in BATCHING or parts[1] not in CHECKPOINTING or parts[2] not in BASES \
            or parts[3:] not in ([], ["liger"]):
        raise ValueError(f"unknown variant {name!r}: <{'|'.join(BATCHING)}>+<{'|'.join(CHECKPOINTING)}>+"
                         f"<{'|'.join(BASES)}>[+liger]")
    flags = BATCHING[parts[0]] + CHECKPOINTING[parts[1]] + BASES[parts[2]]
    return flags + (["--use_liger_kernel", "true"] if parts[3:] else [])


# --- Models ---------------------------------------------------------------------------------------------------

def prepare_model(name: str, cache_dir: Path, sentencepiece_file: Path | None = None) -> Path:
    """A model folder with Mistral's tokenizer.model: the tiny test model, a small one, or Mistral-7B's shape."""
    from cthulhu_sft.tiny import write_tiny_model, write_tokenizer

    if os.path.isdir(name):
        return Path(name)
    folder = cache_dir / name
    if (folder / "config.json").is_file() and (folder / "tokenizer.model").is_file():
        return folder
    if name == "tiny":
        return write_tiny_model(folder, sentencepiece_file=sentencepiece_file)
    import torch
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    if name == "small":
        MistralForCausalLM(MistralConfig(**SMALL)).save_pretrained(folder)
    else:  # Mistral-7B's shape: random weights, initialised on the GPU in bfloat16 (seconds), saved once so that
        # every variant loads them through the real path (quantized by bitsandbytes on load, like the checkpoint)
        with torch.device("cuda"):
            model = MistralForCausalLM._from_config(MistralConfig(**MISTRAL_7B), dtype=torch.bfloat16)
        model.save_pretrained(folder)
        del model
        torch.cuda.empty_cache()
    write_tokenizer(folder, sentencepiece_file)
    return folder


# --- Data -----------------------------------------------------------------------------------------------------

def character_pool() -> tuple[list[str], list[int]]:
    """Characters of the hand-written sample's answers and their counts (real Japanese text; punctuation included)."""
    from cthulhu_sft.data import load_records

    counts = Counter()
    for record in load_records(SAMPLE_ANSWERS):
        counts.update(record["response"])
    return list(counts), list(counts.values())


def synthetic_records(n: int, seed: int, question_chars=(10, 40), answer_chars=(100, 900)) -> list[dict]:
    rng = random.Random(seed)
    chars, weights = character_pool()

    def text(low, high):
        return "".join(rng.choices(chars, weights, k=rng.randint(low, high)))

    return [{"instruction": text(*question_chars) + "？", "response": text(*answer_chars)} for _ in range(n)]


def write_data(path: Path, args) -> dict:
    """Enough examples for every timed step of the most token-hungry variant (packed rows of max_length)."""
    from cthulhu_sft.data import tokenize_records, write_jsonl_atomic
    from cthulhu_sft.format import MistralFormat

    steps = args.warmup + args.steps + 2
    fmt = MistralFormat(str(args.model_dir / "tokenizer.model"))
    records = synthetic_records(64, args.seed)
    rows, _ = tokenize_records([{**r, "line": i} for i, r in enumerate(records)], fmt, args.max_length)
    mean_tokens = sum(len(row["input_ids"]) for row in rows) / len(rows)
    per_step = args.batch_size * args.accumulation * max(1.0, args.max_length / mean_tokens)
    records = synthetic_records(int(1.3 * steps * per_step) + 64, args.seed)
    write_jsonl_atomic(path, records)
    rows, dropped = tokenize_records([{**r, "line": i} for i, r in enumerate(records)], fmt, args.max_length)
    lengths = sorted(len(row["input_ids"]) for row in rows)
    dropped_lines = set(dropped)
    kept = [record for line, record in enumerate(records) if line not in dropped_lines]
    answer_chars = sum(len(record["response"]) for record in kept)
    answer_tokens = sum(sum(1 for label in row["labels"] if label != -100) - 1 for row in rows)  # without </s>
    return {
        "examples": len(records),
        "dropped_over_max_length": len(dropped),
        "tokens_median": lengths[len(lengths) // 2],
        "tokens_max": lengths[-1],
        "answer_tokens_per_char": round(answer_tokens / answer_chars, 3),
    }


# --- One variant (in its own process) -------------------------------------------------------------------------

def count_batches(collator, log: list):
    """The trainer's collator, also recording each micro-batch's token counts (in the order they are trained)."""

    def collate(examples):
        batch = collator(examples)
        input_ids = batch["input_ids"]
        if "attention_mask" in batch:
            lengths = batch["attention_mask"].sum(dim=1).tolist()
        else:  # padding-free: one row; sequences start where position_ids restart at 0
            lengths = batch["cu_seq_lens_q"].diff().tolist()
        log.append({
            "slots": input_ids.numel(),
            "tokens": int(sum(lengths)),
            "answer_tokens": int((batch["labels"] != -100).sum()),
            "lengths": [int(n) for n in lengths],
        })
        return batch

    return collate


def model_flops(batch: dict, shape, lora_params: int) -> float:
    """Training FLOPs of one micro-batch that a frozen base with LoRA must do, recomputation not counted.

    Frozen linears: 2 FLOPs per weight per token forward, 2 backward (input gradients only: no weight gradients);
    LoRA: 6 per weight per token; the LM head: 4 per weight per answer token (TRL projects only those);
    causal attention: 2 x q_dim x n(n+1) forward per layer for a sequence of n tokens, twice that backward.
    """
    tokens = batch["tokens"]
    linear = shape.layer_linear_params() * shape.num_hidden_layers
    q_dim = shape.num_attention_heads * shape.head_dim
    attention = sum(6 * q_dim * n * (n + 1) for n in batch["lengths"]) * shape.num_hidden_layers
    return 4 * linear * tokens + 6 * lora_params * tokens + 4 * shape.vocab_size * shape.hidden_size * \
        batch["answer_tokens"] + attention


def peak_flops(device_name: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    for key in sorted(PEAK_BF16_FLOPS, key=len, reverse=True):
        if key in device_name:
            return PEAK_BF16_FLOPS[key]
    return None


def variant_settings(args, output_dir: str, cuda: bool):
    """SFTConfig and ModelConfig from sft_config.yaml with the benchmark's and the variant's overrides."""
    from cthulhu_sft.config import SFT_CONFIG, parse_args

    argv = [
        "--config", str(SFT_CONFIG),
        "--model_name_or_path", str(args.model_dir),
        "--output_dir", output_dir,
        "--max_steps", str(args.warmup + args.steps),
        "--per_device_train_batch_size", str(args.batch_size),
        "--gradient_accumulation_steps", str(args.accumulation),
        "--max_length", str(args.max_length),
        "--attn_implementation", args.attn_implementation,
        "--report_to", "none", "--save_strategy", "no", "--eval_strategy", "no", "--logging_steps", "1000",
        "--seed", str(args.seed),
    ]
    argv += [] if cuda else ["--use_cpu", "true", "--bf16", "false", "--dtype", "float32"]
    _, training_args, model_args = parse_args(argv + variant_flags(args.variant))
    return training_args, model_args


def run_variant(args) -> dict:
    """Trains one variant with the trainer train_sft.py builds; returns its measurements."""
    import torch
    from transformers import AutoTokenizer, TrainerCallback

    from cthulhu_sft.data import load_records, tokenize_records
    from cthulhu_sft.format import MistralFormat
    from cthulhu_sft.memory import estimate_for_args
    from cthulhu_sft.training import build_trainer

    cuda = torch.cuda.is_available()
    output_dir = tempfile.mkdtemp(prefix="bench-")
    training_args, model_args = variant_settings(args, output_dir, cuda)
    rows, _ = tokenize_records(load_records(args.data), MistralFormat.from_pretrained(str(args.model_dir)),
                               training_args.max_length)
    estimate = estimate_for_args(training_args, model_args, longest_example=max(len(row["input_ids"]) for row in rows))

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.ends = []

        def on_step_end(self, *_, **__):
            if cuda:
                torch.cuda.synchronize()
            self.ends.append(time.perf_counter())

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(model_args, training_args, rows, {}, AutoTokenizer.from_pretrained(args.model_dir))
    trainer.add_callback(step_times := StepTimes())
    batches = []
    trainer.data_collator = count_batches(trainer.data_collator, batches)
    trainer.train()
    shutil.rmtree(output_dir, ignore_errors=True)
    return summary(args, step_times.ends, batches, estimate)


def summary(args, step_ends: list[float], batches: list[dict], estimate) -> dict:
    """Speed over the timed steps (the warm-up ones left out), peak memory, the estimate, and the MFU on a GPU."""
    import torch

    timed = batches[args.warmup * args.accumulation:(args.warmup + args.steps) * args.accumulation]
    seconds = step_ends[args.warmup + args.steps - 1] - step_ends[args.warmup - 1]
    tokens = sum(b["tokens"] for b in timed)
    result = {
        "variant": args.variant,
        "step_seconds": seconds / args.steps,
        "answer_tokens_per_s": sum(b["answer_tokens"] for b in timed) / seconds,
        "tokens_per_s": tokens / seconds,
        "padding_share": 1 - tokens / sum(b["slots"] for b in timed),
        "examples_per_step": sum(len(b["lengths"]) for b in timed) / args.steps,
        "tokens_per_micro_batch_max": max(b["slots"] for b in timed),
        "estimate_peak_allocated": estimate.peak_allocated,  # for a GPU: beside peak_memory there only
        "estimate_total": estimate.total,
    }
    if not torch.cuda.is_available():
        return result | {"peak_memory": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                         "device": platform.processor() or platform.machine()}
    flops = sum(model_flops(b, estimate.shape, estimate.lora_parameter_count) for b in timed)
    peak = peak_flops(torch.cuda.get_device_name(), args.peak_tflops)
    return result | {"peak_memory": torch.cuda.max_memory_allocated(), "device": torch.cuda.get_device_name(),
                     "mfu": flops / seconds / peak if peak else None}


# --- Exactness ------------------------------------------------------------------------------------------------

def exactness(args) -> list[dict]:
    """Mean loss per answer token over the same examples: each alone vs padded, packed and padding-free batches.

    A control packs the examples into one row without restarting position_ids (so they attend to each other):
    it must differ, which shows the check can see a leak.
    """
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl.data_utils import pack_dataset
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    from cthulhu_sft.data import tokenize_records
    from cthulhu_sft.format import MistralFormat

    fmt = MistralFormat(str(args.model_dir / "tokenizer.model"))
    records = synthetic_records(8, args.seed, answer_chars=(20, 200))
    rows, _ = tokenize_records([{**r, "line": i} for i, r in enumerate(records)], fmt, None)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    implementations = ["sdpa", "eager", "flex_attention"]
    try:
        import flash_attn  # noqa: F401

        implementations += ["flash_attention_2"] if cuda else []
    except ImportError:
        pass

    def loss(model, batch) -> tuple[float, int]:
        inputs = {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items() if k != "labels"}
        with torch.no_grad():
            # As SFTTrainer.compute_loss calls it: with a cache, transformers builds no packed-sequence mask
            logits = model(**inputs, use_cache=False).logits.float()
        labels = batch["labels"].to(device)[:, 1:]
        losses = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1), ignore_index=-100, reduction="sum"
        )
        return losses.item(), int((labels != -100).sum())

    def mean(parts):
        return sum(p[0] for p in parts) / sum(p[1] for p in parts)

    padded = DataCollatorForLanguageModeling(pad_token_id=fmt.eos_id)
    flat = DataCollatorForLanguageModeling(pad_token_id=fmt.eos_id, padding_free=True)
    packed_rows = list(pack_dataset(Dataset.from_list(rows), seq_length=512, strategy="bfd"))
    results = []
    for implementation in implementations:
        # float32 where the kernel allows it, so that rounding does not hide a leak; flash attention needs bfloat16
        dtype = torch.bfloat16 if implementation == "flash_attention_2" else torch.float32
        model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=dtype, attn_implementation=implementation)
        model.to(device).eval()
        reference = mean([loss(model, padded([row])) for row in rows])
        leak = flat(rows)
        leak["position_ids"] = torch.arange(leak["input_ids"].size(1))[None]
        for key in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "seq_idx"):
            leak.pop(key)
        ways = {
            "padded": [loss(model, padded(rows))],
            "padding_free": [loss(model, flat(rows))],
            "packing (bfd)": [loss(model, flat(packed_rows))],
            "control: packed, positions not restarted": [loss(model, leak)],
        }
        for way, parts in ways.items():
            results.append({"attention": implementation, "batching": way, "reference": reference,
                            "loss": mean(parts), "difference": abs(mean(parts) - reference)})
    return results


# --- Driver: arguments, the variants each in its own process, the printed section ------------------------------

def parse_arguments(argv=None) -> argparse.Namespace:
    """The command line, with the defaults of sft_config.yaml (batch, accumulation, max_length) filled in."""
    import torch

    from cthulhu_sft.config import sft_defaults

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny, small, mistral-7b-shaped, or a model folder")
    parser.add_argument("--variants", nargs="+", default=None, help="default: one change at a time from the defaults")
    parser.add_argument("--batch_size", type=int, default=None, help="per_device_train_batch_size (default: "
                        "sft_config.yaml's)")
    parser.add_argument("--accumulation", type=int, default=None, help="gradient_accumulation_steps (default: "
                        "sft_config.yaml's on a GPU, 1 on the CPU)")
    parser.add_argument("--max_length", type=int, default=None, help="(default: sft_config.yaml's)")
    parser.add_argument("--attn_implementation", default="sdpa", help="(default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed optimizer steps (default: 2 GPU, 1 CPU)")
    parser.add_argument("--steps", type=int, default=None, help="timed optimizer steps (default: 5 GPU, 3 CPU)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--peak_tflops", type=float, default=None, help="the GPU's dense bf16 peak, if not known")
    parser.add_argument("--cache_dir", default=str(REPO / ".cache" / "bench"), help="built models are kept here")
    parser.add_argument("--tokenizer_model", type=Path, default=None, help="Mistral's SentencePiece file for a built "
                        "model (default: the copy in the mistral-common package)")
    parser.add_argument("--exactness", action="store_true", help="check the batching strategies' losses instead")
    parser.add_argument("--append_to", default=None, help="append the printed section to this Markdown file")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant, print its JSON
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    shipped = sft_defaults()
    defaults = {  # name: (on a GPU, on the CPU)
        "batch_size": (shipped["per_device_train_batch_size"],) * 2,
        "accumulation": (shipped["gradient_accumulation_steps"], 1),
        "max_length": (shipped["max_length"],) * 2,
        "warmup": (2, 1),
        "steps": (5, 3),
    }
    for name, (on_gpu, on_cpu) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, on_gpu if cuda else on_cpu)
    if args.warmup < 1 or args.steps < 1:
        parser.error("--warmup and --steps must be at least 1")
    if args.model not in ("tiny", "small", "mistral-7b-shaped") and not os.path.isdir(args.model):
        parser.error(f"--model: tiny, small, mistral-7b-shaped or a model folder, got {args.model!r}")
    if args.model == "mistral-7b-shaped" and not cuda:
        parser.error("--model mistral-7b-shaped needs a GPU (14.5 GB of weights)")
    if not args.variant:
        args.variants = args.variants or DEFAULT_VARIANTS + (GPU_EXTRA_VARIANTS if cuda else [])
    for name in args.variants or [args.variant]:
        try:
            variant_flags(name)
        except ValueError as error:
            parser.error(str(error))
    return args


def measure_in_its_own_process(args, variant: str, data: Path) -> dict:
    """One variant's measurements, or {"variant", "error"} naming the exception that stopped it."""
    if variant.endswith("+liger") and importlib.util.find_spec("liger_kernel") is None:
        return {"variant": variant, "error": "liger-kernel is not installed"}
    command = [sys.executable, __file__, "--variant", variant, "--data", str(data), "--model_dir", str(args.model_dir)]
    for name in FORWARDED:
        if getattr(args, name) is not None:
            command += [f"--{name}", str(getattr(args, name))]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, check=False)
    found = [line for line in done.stdout.splitlines() if line.startswith("BENCH_RESULT ")]
    if done.returncode == 0 and found:
        return json.loads(found[-1].removeprefix("BENCH_RESULT "))
    lines = done.stderr.strip().splitlines()
    exceptions = [line for line in lines if re.match(r"[\w.]+(Error|Exception)\b", line)]
    return {"variant": variant, "error": (exceptions or lines or ["no output"])[-1][:200]}


def measure_variants(args) -> tuple[list[dict], dict]:
    """Each variant's measurements on the same synthetic data, and that data's statistics."""
    work = Path(tempfile.mkdtemp(prefix="bench-data-"))
    data_stats = write_data(work / "train.jsonl", args)
    results = []
    for variant in args.variants:
        started = time.time()
        results.append(measure_in_its_own_process(args, variant, work / "train.jsonl"))
        # each result as soon as it is measured: a run stopped at a time limit keeps what it has
        print(f"{variant}: {time.time() - started:.0f} s {json.dumps(results[-1])}", file=sys.stderr)
    (work / "results.json").write_text(json.dumps(results, indent=1))
    print(f"raw results: {work / 'results.json'}", file=sys.stderr)
    return results, data_stats


def gib(n):
    return f"{n / 1024**3:.2f}"


def throughput_table(results: list[dict], cuda: bool) -> list[str]:
    """Peak memory is CUDA's max allocated, beside the estimate and the MFU, on a GPU; peak RSS on the CPU."""
    baseline = results[0]
    head = ["variant", "answer tok/s", "tokens/s", "vs first", "padding", "s/step", "examples/step"]
    head += ["peak GiB", "estimate GiB", "MFU"] if cuda else ["peak RSS GiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        if "error" in r:
            lines.append(f"| {r['variant']} | failed: {r['error']} |" + " |" * (len(head) - 2))
            continue
        cells = [
            r["variant"], f"{r['answer_tokens_per_s']:.0f}", f"{r['tokens_per_s']:.0f}",
            f"{r['answer_tokens_per_s'] / baseline['answer_tokens_per_s']:.2f}x" if "error" not in baseline else "",
            f"{100 * r['padding_share']:.0f} %", f"{r['step_seconds']:.2f}", f"{r['examples_per_step']:.1f}",
            gib(r["peak_memory"]),
        ]
        if cuda:
            cells += [gib(r["estimate_peak_allocated"]), f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else ""]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def throughput_lines(args, results: list[dict], data_stats: dict, cuda: bool) -> list[str]:
    step = (
        f"- Optimizer step: gradient_accumulation_steps {args.accumulation} x per_device_train_batch_size "
        f"{args.batch_size} rows (examples, or packed rows of up to {args.max_length} tokens); "
        f"warm-up steps {args.warmup}, timed steps {args.steps}; attention: {args.attn_implementation}"
    )
    data = (
        f"- Data: {data_stats['examples']} synthetic examples, median {data_stats['tokens_median']} and longest "
        f"{data_stats['tokens_max']} tokens, {data_stats['answer_tokens_per_char']} answer tokens per character"
        + (f"; {data_stats['dropped_over_max_length']} longer than max_length left out"
           if data_stats["dropped_over_max_length"] else "")
    )
    return [step, data, "", *throughput_table(results, cuda)]


def exactness_lines(rows: list[dict]) -> list[str]:
    lines = ["", "| attention | batching | mean loss per answer token | each example alone | difference |",
             "|---|---|---|---|---|"]
    return lines + [f"| {r['attention']} | {r['batching']} | {r['loss']:.6f} | {r['reference']:.6f} | "
                    f"{r['difference']:.1e} |" for r in rows]


def machine_line() -> str:
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name()}, torch {torch.__version__}, CUDA {torch.version.cuda}"
    return f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), no GPU, torch {torch.__version__}"


def main(argv=None):
    import torch

    args = parse_arguments(argv)
    if args.variant:  # a variant's own process
        print("BENCH_RESULT " + json.dumps(run_variant(args)))
        return
    args.model_dir = prepare_model(args.model, Path(args.cache_dir), args.tokenizer_model)
    if args.exactness:
        body = exactness_lines(exactness(args))
    else:
        results, data_stats = measure_variants(args)
        body = throughput_lines(args, results, data_stats, torch.cuda.is_available())
    command = " ".join(["python benchmarks/bench_train.py", *(argv if argv is not None else sys.argv[1:])])
    section = "\n".join([
        f"### {'Exactness' if args.exactness else 'Throughput'}: {args.model} ({datetime.date.today().isoformat()})",
        "",
        f"- Machine: {machine_line()}",
        f"- Command: `{command}`",
        *body,
    ]) + "\n"
    print(section)
    if args.append_to:
        with open(args.append_to, "a", encoding="utf-8") as file:
            file.write("\n" + section)


if __name__ == "__main__":
    main()
