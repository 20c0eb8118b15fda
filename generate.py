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

--temperature 0 is greedy decoding; the defaults (see cthulhu_sft/inference.py) favour accuracy.
"""

import argparse
import json
import os
import sys

from cthulhu_sft.data import DataError, write_jsonl_atomic
from cthulhu_sft.inference import (
    DEFAULT_MAX_NEW_TOKENS,
    DEFAULT_REPETITION_PENALTY,
    DEFAULT_SEED,
    DEFAULT_TEMPERATURE,
    DEFAULT_TOP_P,
    DTYPES,
    model_location_problem,
    read_prompts,
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    model = parser.add_argument_group("model")
    model.add_argument("--adapter", help="LoRA adapter: folder or Hub id (train_sft.py's output_dir)")
    model.add_argument("--base_model", help="base or merged model: folder or Hub id (default: the adapter's base, "
                       "else sft_config.yaml's model_name_or_path)")
    model.add_argument("--revision", help="revision (branch, tag, commit) of --base_model on the Hub")
    model.add_argument("--adapter_revision", help="revision of --adapter on the Hub")
    model.add_argument("--load_in_8bit", action="store_true", help="load the base in 8 bits (bitsandbytes)")
    model.add_argument("--load_in_4bit", action="store_true", help="load the base in 4 bits (NF4)")
    model.add_argument("--dtype", default="auto", choices=list(DTYPES), help="weights' dtype (auto: the checkpoint's)")
    model.add_argument("--trust_remote_code", action="store_true", help="allow model code from the Hub (off: safer)")

    mode = parser.add_argument_group("what to do (default: interactive chat)")
    mode.add_argument("--prompt", help="answer this one question and exit")
    mode.add_argument("--prompts_file", help="JSONL with an 'instruction' per line; needs --output")
    mode.add_argument("--output", help="JSONL to write: each input line plus 'answer', 'stopped', 'new_tokens'")
    mode.add_argument("--batch_size", type=int, default=8, help="prompts per batch for --prompts_file")
    mode.add_argument("--merge_to", help="merge the adapter into the base, save to this new folder, exit")
    mode.add_argument("--merge_dtype", default="bfloat16", choices=[d for d in DTYPES if d != "auto"],
                      help="dtype of the merged model")
    mode.add_argument("--show_prompt_ids", action="store_true", help="print each prompt's token ids (JSON) to stderr")

    sampling = parser.add_argument_group("generation")
    sampling.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="0 means greedy")
    sampling.add_argument("--top_p", type=float, default=DEFAULT_TOP_P)
    sampling.add_argument("--max_new_tokens", type=int, default=DEFAULT_MAX_NEW_TOKENS)
    sampling.add_argument("--repetition_penalty", type=float, default=DEFAULT_REPETITION_PENALTY)
    sampling.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seeds sampling once at the start")
    args = parser.parse_args(argv)

    # Everything that can be checked without a model is checked here, before minutes of loading.
    if args.prompt is not None and args.prompts_file:
        parser.error("give --prompt or --prompts_file, not both")
    if args.prompts_file and not args.output:
        parser.error("--prompts_file needs --output")
    if args.output and not args.prompts_file:
        parser.error("--output goes with --prompts_file")
    if args.prompt is not None and not args.prompt.strip():
        parser.error("--prompt is empty")
    if args.load_in_8bit and args.load_in_4bit:
        parser.error("give --load_in_8bit or --load_in_4bit, not both")
    if args.temperature < 0 or not 0 < args.top_p <= 1 or args.max_new_tokens < 1 or args.batch_size < 1:
        parser.error("need --temperature >= 0, 0 < --top_p <= 1, --max_new_tokens >= 1, --batch_size >= 1")
    if args.repetition_penalty <= 0:
        parser.error("--repetition_penalty must be > 0 (1.0 switches it off)")
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

    from cthulhu_sft.inference import AnswerPrinter, generate, load_format, load_model, merge_adapter, resolve_base

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
    sampling = dict(
        temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
        repetition_penalty=args.repetition_penalty,
    )
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


if __name__ == "__main__":
    main(parse_args())
