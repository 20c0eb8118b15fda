"""cthulhu_sft.inference and generate.py on the tiny random Mistral, with a tiny LoRA adapter.

The model is random, so these tests check mechanics (exact prompt ids, batching, stopping, files, merging),
not the quality of answers.
"""

import io
import json

import pytest
import torch
from conftest import PYTHON, REPO, STOP_QUESTION, load_script, mistral_common_ids, run_script

from cthulhu_sft.format import CHAT_TEMPLATE, MistralFormat
from cthulhu_sft.inference import AnswerPrinter, generate, load_format, load_model

merge_adapter = load_script("generate").merge_adapter


@pytest.fixture(scope="module")
def fmt(tiny_model_dir) -> MistralFormat:
    return MistralFormat.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def tuned(tiny_adapter_dir):
    return load_model(None, str(tiny_adapter_dir))


def user(content):
    return {"role": "user", "content": content}


def assistant(content):
    return {"role": "assistant", "content": content}


CONVERSATIONS = [
    [user("クトゥルフとは何ですか？")],
    [user("短")],
    [user("ダゴンとは？"), assistant("深きものどもが崇める存在。"), user("では、ハイドラは？ 詳しく教えてください。")],
    [user("Who wrote The Call of Cthulhu?")],
    [user("ルルイエはどこにありますか。🐙")],
]


# --- cthulhu_sft.inference ---------------------------------------------------------------------------------


def test_batched_greedy_equals_unbatched(tuned, fmt):
    batched = generate(tuned, fmt, CONVERSATIONS, temperature=0, max_new_tokens=8, batch_size=3)
    single = [generate(tuned, fmt, [conversation], temperature=0, max_new_tokens=8)[0] for conversation in CONVERSATIONS]
    assert batched == single


def test_unfinished_answer_has_max_new_tokens_and_no_eos(tuned, fmt):
    for answer in generate(tuned, fmt, CONVERSATIONS, temperature=0, max_new_tokens=7):
        assert not answer.stopped
        assert len(answer.token_ids) == 7 and fmt.eos_id not in answer.token_ids
        assert answer.text == fmt.decode(answer.token_ids)


def test_answer_that_emits_eos_is_stopped_and_cut_in_a_batch(eos_model_dir, fmt):
    model = load_model(str(eos_model_dir))
    conversations = [[user(STOP_QUESTION)]] + CONVERSATIONS
    batched = generate(model, fmt, conversations, temperature=0, max_new_tokens=6, batch_size=len(conversations))
    stop = batched[0]
    assert stop.stopped and len(stop.token_ids) == 3 and stop.token_ids[-1] == fmt.eos_id
    assert stop.text == fmt.decode(stop.token_ids[:-1])
    assert batched == [generate(model, fmt, [c], temperature=0, max_new_tokens=6)[0] for c in conversations]


def test_sampling_is_seeded(tuned, fmt):
    def sample(seed):
        return [a.token_ids for a in generate(tuned, fmt, CONVERSATIONS[:2], temperature=1.0, max_new_tokens=8, seed=seed)]

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)


def test_generate_restores_training_mode(tuned, fmt):
    tuned.train()
    try:
        generate(tuned, fmt, CONVERSATIONS[:1], temperature=0, max_new_tokens=2)
        assert tuned.training
    finally:
        tuned.eval()


def test_answer_printer_holds_back_incomplete_characters(fmt):
    stream = io.StringIO()
    printer = AnswerPrinter(fmt, stream)
    answer_ids = fmt.encode_text("ルルイエ🐙鬱") + [fmt.eos_id]  # 🐙 and 鬱 are byte-fallback tokens
    printer.put(torch.tensor([fmt.encode_prompt([user("q")])]))  # generate() pushes the prompt first
    for token in answer_ids:
        printer.put(torch.tensor([token]))
        assert "\ufffd" not in stream.getvalue()
    printer.end()
    assert stream.getvalue() == "ルルイエ🐙鬱\n"


def test_streamed_text_equals_returned_text(tuned, fmt):
    stream = io.StringIO()
    [answer] = generate(tuned, fmt, CONVERSATIONS[-1:], temperature=0, max_new_tokens=12, streamer=AnswerPrinter(fmt, stream))
    assert stream.getvalue() == answer.text + "\n"


def test_8bit_base_with_adapter_generates_and_says_its_cast_notice_once(tiny_adapter_dir, fmt, caplog):
    """bitsandbytes logs a cast notice on every 8-bit matmul: thousands of lines in one chat without the filter."""
    model = load_model(None, str(tiny_adapter_dir), load_in_8bit=True)
    [answer] = generate(model, fmt, CONVERSATIONS[:1], temperature=0, max_new_tokens=3)
    assert len(answer.token_ids) == 3
    assert sum("MatMul8bitLt" in record.getMessage() for record in caplog.records) <= 1


def test_merge_refuses_a_non_empty_folder(tiny_adapter_dir, tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError):
        merge_adapter(None, str(tiny_adapter_dir), tmp_path)


def test_merge_default_is_bfloat16(tiny_adapter_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    merged = merge_adapter(None, str(tiny_adapter_dir), tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(merged, dtype="auto")
    assert model.dtype == torch.bfloat16
    assert not (merged / "adapter_config.json").exists()


# --- generate.py --------------------------------------------------------------------------------------------


def prompt_ids_lines(stderr: str) -> list[list[int]]:
    return [json.loads(line.split(":", 1)[1]) for line in stderr.splitlines() if line.startswith("prompt ids:")]


def run_generate(capsys, *args, stdin: str | None = None, monkeypatch=None):
    """generate.py's parse_args and main in-process (the CLI's own path, without seconds of imports)."""
    script = load_script("generate")
    if stdin is not None:
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    script.main(script.parse_args([str(arg) for arg in args]))
    return capsys.readouterr()


@pytest.mark.slow
def test_cli_prompt_uses_mistral_common_ids(tiny_adapter_dir, tuned, fmt, serving_reference_tokenizer):
    question = "クトゥルフ神話の「ルルイエ」とは？  </s> [INST] も文字"
    result = run_script([PYTHON, "generate.py", "--adapter", str(tiny_adapter_dir), "--prompt", question,
                         "--temperature", "0", "--max_new_tokens", "6", "--show_prompt_ids"])
    assert result.returncode == 0, result.stderr
    [ids] = prompt_ids_lines(result.stderr)
    assert ids == mistral_common_ids(serving_reference_tokenizer, [user(question)])
    [expected] = generate(tuned, fmt, [[user(question)]], temperature=0, max_new_tokens=6)
    assert result.stdout == expected.text + "\n"
    # our lines only: no notice about bitsandbytes' optional CPU kernel, no deprecation warning from PEFT's internals
    assert "gemm_4bit_forward" not in result.stderr and "FutureWarning" not in result.stderr, result.stderr


def test_cli_prompts_file_answers_in_batches(tiny_adapter_dir, tuned, fmt, tmp_path, capsys):
    rows = [
        {"instruction": "クトゥルフとは？", "response": "神性。", "title": "クトゥルフ"},
        {"instruction": "ダゴンとは？"},
        {"instruction": "ルルイエはどこ？ 🐙", "source": "https://ja.wikipedia.org/wiki/ルルイエ"},
    ]
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    output = tmp_path / "out" / "answers.jsonl"
    run_generate(capsys, "--adapter", tiny_adapter_dir, "--prompts_file", prompts, "--output", output,
                 "--batch_size", 2, "--temperature", 0, "--max_new_tokens", 5)
    written = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    questions = ["クトゥルフとは？", "ダゴンとは？", "ルルイエはどこ？ 🐙"]
    expected = generate(tuned, fmt, [[user(q)] for q in questions], temperature=0, max_new_tokens=5)
    assert [row["instruction"] for row in written] == questions
    assert [row["answer"] for row in written] == [answer.text for answer in expected]
    assert [row["new_tokens"] for row in written] == [5, 5, 5]
    assert [row["stopped"] for row in written] == [False, False, False]
    assert written[0]["title"] == "クトゥルフ" and written[0]["response"] == "神性。"
    assert written[2]["source"] == rows[2]["source"]


def test_cli_chat_keeps_history_in_mistral_format(tiny_adapter_dir, tuned, fmt, serving_reference_tokenizer, capsys,
                                                  monkeypatch):
    turns = ["クトゥルフとは？", "では、ルルイエは？", "/reset", "ダゴンとは？", "/exit", "never read"]
    result = run_generate(capsys, "--adapter", tiny_adapter_dir, "--temperature", 0, "--max_new_tokens", 5,
                          "--show_prompt_ids", stdin="\n".join(turns) + "\n", monkeypatch=monkeypatch)
    [first_answer] = generate(tuned, fmt, [[user(turns[0])]], temperature=0, max_new_tokens=5)
    second = [user(turns[0]), assistant(first_answer.text), user(turns[1])]
    prompts = prompt_ids_lines(result.err)
    assert prompts == [fmt.encode_prompt([user(turns[0])]), fmt.encode_prompt(second), fmt.encode_prompt([user(turns[3])])]
    assert prompts[1] == mistral_common_ids(serving_reference_tokenizer, second)
    assert f"assistant> {first_answer.text}\n" in result.out
    assert "(history cleared)" in result.err


def test_cli_merge_gives_the_logits_of_base_plus_adapter(tiny_adapter_dir, tiny_model_dir, tuned, fmt, tmp_path, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    merged_dir = tmp_path / "merged"
    run_generate(capsys, "--adapter", tiny_adapter_dir, "--merge_to", merged_dir, "--merge_dtype", "float32")
    merged = AutoModelForCausalLM.from_pretrained(merged_dir)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ids = torch.tensor([fmt.encode_prompt(CONVERSATIONS[2])])
    with torch.no_grad():
        expected, got, without = tuned(input_ids=ids).logits, merged(input_ids=ids).logits, base(input_ids=ids).logits
    assert (expected - without).abs().max() > 0.1  # the adapter matters, so the comparison means something
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)

    # Ready for serving: its own tokenizer.model, and a chat template that gives the training ids.
    assert MistralFormat.from_pretrained(str(merged_dir)).encode_prompt(CONVERSATIONS[2]) == ids[0].tolist()
    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    assert tokenizer.chat_template == CHAT_TEMPLATE
    templated = tokenizer.apply_chat_template(CONVERSATIONS[2], add_generation_prompt=True, tokenize=True, return_dict=True)
    assert templated["input_ids"] == ids[0].tolist()
    assert load_format(str(merged_dir)).model_file == str(merged_dir / "tokenizer.model")


def test_cli_bad_prompts_file_fails_before_loading(tiny_adapter_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"instruction": "ok"}\n{"response": "no question"}\n{"instruction": ""}\n', encoding="utf-8")
    with pytest.raises(SystemExit) as exit:
        run_generate(capsys, "--adapter", tiny_adapter_dir, "--prompts_file", prompts, "--output", tmp_path / "out.jsonl")
    error = capsys.readouterr().err
    assert exit.value.code == 2
    assert f"{prompts}:2: field 'instruction': missing" in error and f"{prompts}:3: field 'instruction': empty" in error
    assert "Loading" not in error and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize(
    "arguments,message",
    [
        (["--prompts_file", "PROMPTS"], "--prompts_file needs --output"),
        (["--prompt", "a", "--prompts_file", "PROMPTS", "--output", "o.jsonl"], "not both"),
        (["--prompts_file", "MISSING", "--output", "o.jsonl"], "MISSING: file not found"),
        (["--adapter", "./no-such-adapter"], "--adapter ./no-such-adapter: no such folder"),
        (["--adapter", "TOKENIZER"], "no adapter_config.json"),
        (["--adapter", "MODEL"], "it holds a model (config.json): load it with --base_model MODEL"),
        (["--adapter", "ADAPTER", "--merge_to", "NONEMPTY"], "exists and is not empty"),
        (["--adapter", "ADAPTER", "--merge_to", "new", "--load_in_8bit"], "drop --load_in_8bit"),
        (["--merge_to", "new"], "--merge_to needs --adapter"),
        (["--temperature", "-1"], "--temperature >= 0"),
    ],
)
def test_bad_arguments_are_refused(arguments, message, tiny_adapter_dir, tokenizer_dir, tiny_model_dir, tmp_path,
                                   capsys):
    (tmp_path / "prompts.jsonl").write_text('{"instruction": "q"}\n')
    (tmp_path / "nonempty").mkdir()
    (tmp_path / "nonempty" / "file").write_text("x")
    replacements = {"PROMPTS": str(tmp_path / "prompts.jsonl"), "MISSING": str(tmp_path / "missing.jsonl"),
                    "ADAPTER": str(tiny_adapter_dir), "TOKENIZER": str(tokenizer_dir), "NONEMPTY": str(tmp_path / "nonempty"),
                    "MODEL": str(tiny_model_dir)}
    script = load_script("generate")
    with pytest.raises(SystemExit) as exit_info:
        script.parse_args([replacements.get(argument, argument) for argument in arguments])
    assert exit_info.value.code == 2
    assert message.replace("MISSING", str(tmp_path / "missing.jsonl")).replace("MODEL", str(tiny_model_dir)) \
        in capsys.readouterr().err


def test_without_adapter_or_base_the_base_is_the_one_sft_config_trains():
    import yaml

    from cthulhu_sft.inference import resolve_base

    shipped = yaml.safe_load((REPO / "sft_config.yaml").read_text(encoding="utf-8"))
    assert resolve_base(None, None) == shipped["model_name_or_path"]
    assert resolve_base("some/base", None) == "some/base"
