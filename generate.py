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
    # open book: each question's top passages of data/source_texts.jsonl go into its prompt; the answer cites them
    python generate.py --adapter output/cthulhu-mistral --load_in_8bit --open_book --prompt "ルルイエはどこにある？"

--temperature 0 is greedy decoding; the defaults (sft_config.yaml's sample_* settings) favour accuracy.

Open book (--open_book): for every question (--prompt, each line of --prompts_file, each chat turn) the retriever
(cthulhu_sft/retrieval.py, BM25 over --source_texts) finds the top --top_k passages; the user turn holds them,
numbered, and asks for an answer from them citing [1], [2] (or 資料からは分かりません。). The answer is printed, then
the passages shown, the cited ones starred, with their revision URLs; --output rows add "sources" and "cited". In
the chat each turn keeps its passages in the history, as the model saw it.
"""

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cthulhu_sft.config import (
    SOURCE_TEXTS,
    AdapterArguments,
    DecodingArguments,
    LoadArguments,
    OpenBookArguments,
    parse_script_args,
)
from cthulhu_sft.data import DataError, read_prompts, write_jsonl_atomic
from cthulhu_sft.inference import model_location_problem


@dataclass
class GenerateArguments:
    """What to do (default: interactive chat)."""

    prompt: str | None = field(default=None, metadata={"help": "answer this one question and exit"})
    prompts_file: str | None = field(default=None, metadata={"help": "JSONL with an 'instruction' per line; needs --output"})
    output: str | None = field(default=None, metadata={
        "help": "JSONL to write: each input line plus 'answer', 'stopped', 'new_tokens' (and, open book, 'sources', "
                "'cited')"})
    batch_size: int = field(default=8, metadata={"help": "prompts per batch for --prompts_file"})
    merge_to: str | None = field(default=None, metadata={"help": "merge the adapter into the base, save to this new folder, exit"})
    merge_dtype: str = field(default="bfloat16", metadata={"choices": ["bfloat16", "float16", "float32"],
                                                           "help": "dtype of the merged model"})
    show_prompt_ids: bool = field(default=False, metadata={"help": "print each prompt's token ids (JSON) to stderr"})
    source_texts: str = field(default=SOURCE_TEXTS, metadata={
        "help": "with --open_book: the crawled articles to retrieve from (prepare_data.py writes them; default: "
                "%(default)s)"})


def parse_args(argv=None):
    parser, args = parse_script_args(
        (AdapterArguments, LoadArguments, DecodingArguments, OpenBookArguments, GenerateArguments), argv, __doc__)
    # Everything that can be checked without a model is checked here, before minutes of loading.
    if args.prompt is not None and args.prompts_file:
        parser.error("give --prompt or --prompts_file, not both")
    if args.prompts_file and not args.output:
        parser.error("--prompts_file needs --output")
    if args.output and not args.prompts_file:
        parser.error("--output goes with --prompts_file")
    if args.prompt is not None and not args.prompt.strip():
        parser.error("--prompt is empty")
    problem = DecodingArguments.problem(args) or OpenBookArguments.problem(args)
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
        if args.prompt is not None or args.prompts_file or args.open_book:
            parser.error("--merge_to only merges; run generate.py on the merged folder afterwards")
        if os.path.isdir(args.merge_to) and os.listdir(args.merge_to):
            parser.error(f"--merge_to {args.merge_to}: exists and is not empty")
    args.records = None
    if args.prompts_file:
        try:
            args.records = read_prompts(args.prompts_file)
        except DataError as error:
            parser.error(str(error))
    args.retriever = open_book_retriever(parser, args.source_texts) if args.open_book else None
    return args


def open_book_retriever(parser, source_texts: str):
    """The retriever of `source_texts` (its index built once and cached beside it), before any model loads."""
    from cthulhu_sft.retrieval import open_retriever

    if not os.path.isfile(source_texts):
        parser.error(f"--source_texts {source_texts}: file not found; --open_book retrieves from the crawled articles, "
                     f"which `python prepare_data.py` writes to {SOURCE_TEXTS}")
    try:
        retriever = open_retriever(source_texts)
    except DataError as error:
        parser.error(str(error))
    log(f"Open book: {len(retriever.passages)} passages of {len(retriever.articles)} articles in {source_texts}")
    return retriever


def print_sources(shown: list, answer_text: str) -> None:
    """The passages the model was shown, numbered as in its prompt, the ones its answer cites starred."""
    from cthulhu_sft.retrieval import parse_citations, revision_url

    if not shown:
        print("資料 / sources: なし（質問と語を共有する資料がありません / no passage shares a word with the question）")
        return
    cited = set(parse_citations(answer_text))
    print("資料 / sources (* = 引用 / cited):")
    for number, hit in enumerate(shown, start=1):
        heading = hit.heading
        print(f"{'*' if number in cited else ' '} [{number}] {heading}  {revision_url(hit.url, hit.revid) or '-'}")


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

    def user_turn(question: str) -> tuple[str, list]:
        """The user turn for a question, and the passages it shows (none when closed book)."""
        if args.retriever is None:
            return question, []
        from cthulhu_sft.retrieval import open_book_turn

        return open_book_turn(args.retriever, question, fmt, top_k=args.top_k)

    # 3a. One prompt, streamed to stdout.
    if args.prompt is not None:
        content, shown = user_turn(args.prompt.strip())
        conversation = [{"role": "user", "content": content}]
        show_prompt(conversation)
        [answer] = generate(model, fmt, [conversation], **sampling, seed=None, streamer=AnswerPrinter(fmt))
        if args.open_book:
            print_sources(shown, answer.text)
        return

    # 3b. A file of prompts, in batches.
    if args.records is not None:
        turns = [user_turn(record["instruction"]) for record in args.records]
        conversations = [[{"role": "user", "content": content}] for content, _ in turns]
        for conversation in conversations:
            show_prompt(conversation)
        with tqdm(total=len(conversations), desc="answers", unit="answer", file=sys.stderr) as bar:
            answers = generate(
                model, fmt, conversations, **sampling, seed=None, batch_size=args.batch_size, progress=bar
            )
        rows = [
            {**{k: v for k, v in record.items() if k != "line"}, "answer": answer.text, "stopped": answer.stopped,
             "new_tokens": len(answer.token_ids)} | (open_book_fields(shown, answer.text) if args.open_book else {})
            for record, answer, (_, shown) in zip(args.records, answers, turns)
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
        content, shown = user_turn(line)
        conversation = history + [{"role": "user", "content": content}]
        show_prompt(conversation)
        print("assistant> ", end="", flush=True)
        [answer] = generate(model, fmt, [conversation], **sampling, seed=None, streamer=printer)
        if not answer.stopped:
            log(f"(the answer was cut at --max_new_tokens {args.max_new_tokens})")
        if args.open_book:
            print_sources(shown, answer.text)
        history = conversation + [{"role": "assistant", "content": answer.text}]


def open_book_fields(shown: list, answer_text: str) -> dict:
    """An --output row's open-book fields: the passages shown (numbered from 1 in this order) and those cited."""
    from cthulhu_sft.retrieval import parse_citations

    return {"sources": [hit.as_json() for hit in shown], "cited": parse_citations(answer_text)}


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
