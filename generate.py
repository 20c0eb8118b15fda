"""Chat with the fine-tuned model, answer a file of prompts, or merge the adapter into the base for serving.

Prompts are built exactly as in training (mistral-common's Mistral instruct format, tokenizer v1), so the
model sees the ids it learned from. The base model comes from the adapter's adapter_config.json unless
--base_model is given; --adapter and --base_model take local folders or Hub ids.

    # one answer, streamed
    python generate.py --adapter output/cthulhu-mistral --load_in_8bit --prompt "クトゥルフとは何ですか？"
    # many answers in batches: JSONL with "instruction" (data/eval.jsonl works too) -> JSONL with "answer"
    python generate.py --adapter output/cthulhu-mistral --prompts_file data/eval.jsonl --output output/answers.jsonl
    # interactive chat with history; /reset clears it, /exit (or Ctrl-D) quits
    python generate.py --adapter output/cthulhu-mistral --load_in_8bit
    # merge the adapter into a bf16 copy of the base, with tokenizer and chat template, ready for serving
    python generate.py --adapter output/cthulhu-mistral --merge_to output/cthulhu-mistral-merged
    # the merged model then loads on its own
    python generate.py --base_model output/cthulhu-mistral-merged --prompt "ルルイエとは？"

--temperature 0 is greedy decoding; the defaults (sft_config.yaml's sample_* settings) favour accuracy.
"""

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cthulhu_sft.config import AdapterArguments, DecodingArguments, LoadArguments, parse_script_args
from cthulhu_sft.data import DataError, read_prompts, write_jsonl_atomic
from cthulhu_sft.inference import model_location_problem


@dataclass
class GenerateArguments:
    """What to do (default: interactive chat)."""

    prompt: str | None = field(default=None, metadata={"help": "answer this one question and exit"})
    prompts_file: str | None = field(default=None, metadata={"help": "JSONL with an 'instruction' per line; needs --output"})
    output: str | None = field(default=None, metadata={"help": "JSONL to write: each input line plus 'answer', 'stopped', 'new_tokens'"})
    batch_size: int = field(default=8, metadata={"help": "prompts per batch for --prompts_file"})
    merge_to: str | None = field(default=None, metadata={"help": "merge the adapter into the base, save to this new folder, exit"})
    merge_dtype: str = field(default="bfloat16", metadata={"choices": ["bfloat16", "float16", "float32"],
                                                           "help": "dtype of the merged model"})
    show_prompt_ids: bool = field(default=False, metadata={"help": "print each prompt's token ids (JSON) to stderr"})


def parse_args(argv=None):
    parser, args = parse_script_args((AdapterArguments, LoadArguments, DecodingArguments, GenerateArguments), argv,
                                     __doc__)
    # Everything that can be checked without a model is checked here, before minutes of loading.
    if args.prompt is not None and args.prompts_file:
        parser.error("give --prompt or --prompts_file, not both")
    if args.prompts_file and not args.output:
        parser.error("--prompts_file needs --output")
    if args.output and not args.prompts_file:
        parser.error("--output goes with --prompts_file")
    if args.prompt is not None and not args.prompt.strip():
        parser.error("--prompt is empty")
    problem = DecodingArguments.problem(args)
    if problem or args.batch_size < 1:
        parser.error(problem or "--batch_size must be >= 1")
    for value, what, adapter in ((args.adapter, "--adapter", True), (args.base_model, "--base_model", False)):
        problem = value and model_location_problem(value, what, adapter=adapter)
        if problem:
            parser.error(problem)
    if args.merge_to:
        if not args.adapter:
            parser.error("--merge_to needs --adapter")
        if args.load_in_8bit or args.load_in_4bit:
            parser.error("--merge_to merges into an unquantized copy of the base; drop --load_in_8bit/--load_in_4bit")
        if args.prompt is not None or args.prompts_file:
            parser.error("--merge_to only merges; run generate.py on the merged folder afterwards")
        if os.path.isdir(args.merge_to) and os.listdir(args.merge_to):
            parser.error(f"--merge_to {args.merge_to}: exists and is not empty")
    args.records = None
    if args.prompts_file:
        try:
            args.records = read_prompts(args.prompts_file)
        except DataError as error:
            parser.error(str(error))
    return args


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(args) -> None:
    from tqdm.auto import tqdm
    from transformers import set_seed

    from cthulhu_sft.inference import AnswerPrinter, generate, load_format, load_model, resolve_base

    # 1. Merge and exit.
    base = resolve_base(args.base_model, args.adapter, args.adapter_revision)
    if args.merge_to:
        log(f"Merging {args.adapter} into {base} ({args.merge_dtype})")
        merge_adapter(
            base, args.adapter, args.merge_to, dtype=args.merge_dtype,
            trust_remote_code=args.trust_remote_code, revision=args.revision, adapter_revision=args.adapter_revision,
        )
        log(f"Saved the merged model, tokenizer and chat template to {args.merge_to}")
        return

    # 2. Load the tokenizer's format and the model (base, + adapter).
    log(f"Loading {base}" + (f" + adapter {args.adapter}" if args.adapter else ""))
    fmt = load_format(base, args.adapter, args.revision, args.adapter_revision)
    model = load_model(
        base, args.adapter, load_in_8bit=args.load_in_8bit, load_in_4bit=args.load_in_4bit, dtype=args.dtype,
        trust_remote_code=args.trust_remote_code, revision=args.revision, adapter_revision=args.adapter_revision,
    )
    sampling = dict(temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                    repetition_penalty=args.repetition_penalty)
    if args.seed is not None:
        set_seed(args.seed)

    def show_prompt(conversation):
        if args.show_prompt_ids:
            log("prompt ids: " + json.dumps(fmt.encode_prompt(conversation)))

    # 3a. One prompt, streamed to stdout.
    if args.prompt is not None:
        conversation = [{"role": "user", "content": args.prompt.strip()}]
        show_prompt(conversation)
        generate(model, fmt, [conversation], **sampling, seed=None, streamer=AnswerPrinter(fmt))
        return

    # 3b. A file of prompts, in batches.
    if args.records is not None:
        conversations = [[{"role": "user", "content": record["instruction"]}] for record in args.records]
        for conversation in conversations:
            show_prompt(conversation)
        with tqdm(total=len(conversations), desc="answers", unit="answer", file=sys.stderr) as bar:
            answers = generate(
                model, fmt, conversations, **sampling, seed=None, batch_size=args.batch_size, progress=bar
            )
        rows = [
            {**{k: v for k, v in record.items() if k != "line"}, "answer": answer.text, "stopped": answer.stopped,
             "new_tokens": len(answer.token_ids)}
            for record, answer in zip(args.records, answers)
        ]
        write_jsonl_atomic(args.output, rows)
        stopped = sum(answer.stopped for answer in answers)
        log(f"Wrote {len(rows)} answers to {args.output} ({stopped} ended with </s>, "
            f"{len(rows) - stopped} hit --max_new_tokens {args.max_new_tokens})")
        return

    # 3c. Interactive chat: the history is re-encoded in the Mistral format each turn.
    log("Chat with the model. /reset clears the history, /exit or Ctrl-D quits.")
    printer, history = AnswerPrinter(fmt), []
    while True:
        try:
            line = input("user> ").strip()
        except EOFError:
            print()
            break
        if not line:
            continue
        if line == "/exit":
            break
        if line == "/reset":
            history = []
            log("(history cleared)")
            continue
        conversation = history + [{"role": "user", "content": line}]
        show_prompt(conversation)
        print("assistant> ", end="", flush=True)
        [answer] = generate(model, fmt, [conversation], **sampling, seed=None, streamer=printer)
        if not answer.stopped:
            log(f"(the answer was cut at --max_new_tokens {args.max_new_tokens})")
        history = conversation + [{"role": "assistant", "content": answer.text}]


def merge_adapter(base: str | None, adapter: str, output_dir: str | os.PathLike, dtype: str = "bfloat16",
                  trust_remote_code: bool = False, revision: str | None = None, adapter_revision: str | None = None) -> Path:
    """Merges the adapter into an unquantized copy of the base and saves a standalone model for serving.

    The folder gets the weights (safetensors), the tokenizer with the training chat template, and
    tokenizer.model so that `MistralFormat.from_pretrained(output_dir)` works. It is written next to its
    final place and renamed into it, so it appears complete or not at all.
    """
    from transformers import AutoTokenizer

    from cthulhu_sft.format import CHAT_TEMPLATE
    from cthulhu_sft.inference import load_format, load_model, resolve_base

    output_dir = Path(output_dir)
    if output_dir.exists() and any(output_dir.iterdir()):
        raise FileExistsError(f"{output_dir} exists and is not empty; remove it or choose another folder")
    base = resolve_base(base, adapter, adapter_revision)
    fmt = load_format(base, adapter, revision, adapter_revision)
    model = load_model(base, adapter, dtype=dtype, trust_remote_code=trust_remote_code, revision=revision,
                       adapter_revision=adapter_revision)
    merged = model.merge_and_unload()
    # The tokenizer saved with the adapter (train_sft.py writes one), else the base model's.
    if os.path.isfile(os.path.join(adapter, "tokenizer_config.json")):
        tokenizer = AutoTokenizer.from_pretrained(adapter)
    else:
        tokenizer = AutoTokenizer.from_pretrained(base, revision=revision, trust_remote_code=trust_remote_code)
    tokenizer.chat_template = CHAT_TEMPLATE

    temporary = output_dir.with_name(f".{output_dir.name}.tmp")
    if temporary.exists():
        shutil.rmtree(temporary)
    merged.save_pretrained(temporary)
    tokenizer.save_pretrained(temporary)
    shutil.copyfile(fmt.model_file, temporary / "tokenizer.model")
    if output_dir.exists():
        output_dir.rmdir()  # empty, checked above
    os.replace(temporary, output_dir)
    return output_dir


if __name__ == "__main__":
    main(parse_args())
