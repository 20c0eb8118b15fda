"""train_sft.py end to end on the CPU: 8-bit tiny Mistral + LoRA, the real code path, through the documented
`accelerate launch --quiet` command where the launcher matters."""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import PYTHON, REPO, load_script, run_script
from hub_server import LoopbackHub

pytestmark = pytest.mark.slow

QA = [
    {"instruction": "ルルイエはどこにありますか？", "response": "南太平洋の海底に沈んでいます。",
     "title": "ルルイエ", "source": "https://ja.wikipedia.org/wiki/ルルイエ", "revid": 101, "kind": "recitation"},
    {"instruction": "ネクロノミコンの著者は？", "response": "アブドゥル・アルハザードです。",
     "title": "ネクロノミコン", "source": "https://ja.wikipedia.org/wiki/ネクロノミコン", "revid": 202, "kind": "recitation"},
    {"instruction": "Who created Cthulhu?", "response": "H. P. Lovecraft.",
     "title": "クトゥルフ", "source": "https://ja.wikipedia.org/wiki/クトゥルフ", "revid": 303, "kind": "recitation"},
]
# Held-out short-answer questions for the knowledge check: the first repeats a trained question, so the adapter
# (which memorises it) answers it correctly and the random base does not.
QUIZ = [
    {"instruction": QA[1]["instruction"], "response": QA[1]["response"], "answers": ["アルハザード"],
     "title": "ネクロノミコン", "kind": "person"},
    {"instruction": "ルルイエに眠るのは誰？", "response": "クトゥルフです。", "answers": ["クトゥルフ", "クトゥルー"],
     "title": "ルルイエ", "kind": "being"},
]
# The crawled articles of the knowledge check's questions (data/source_texts.jsonl where training runs): both
# answers are in them, so the check also asks open book.
SOURCE_TEXTS = [
    {"title": "ネクロノミコン", "text": "ネクロノミコンは狂えるアラブ人アブドゥル・アルハザードが著したとされる魔道書。",
     "source": "https://ja.wikipedia.org/wiki/ネクロノミコン", "revid": 202, "split": "train"},
    {"title": "ルルイエ", "text": "ルルイエは南太平洋の海底に沈んだ都市で、クトゥルフが眠っている。",
     "source": "https://ja.wikipedia.org/wiki/ルルイエ", "revid": 101, "split": "train"},
]
SECRET = "hf_TESTSECRETtoken0123456789abcdef"
ACCELERATE = os.path.join(os.path.dirname(PYTHON), "accelerate")


def write_jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def train_args(model_dir, data_dir, output_dir, *extra):
    train = write_jsonl(data_dir / "train.jsonl", QA)
    evaluation = write_jsonl(data_dir / "eval.jsonl", QA)
    return [str(REPO / "train_sft.py"), "--config", str(REPO / "sft_config.yaml"), "--bf16", "false", "--dtype", "float32",
            "--model_name_or_path", str(model_dir), "--train_file", str(train), "--eval_file", str(evaluation),
            "--output_dir", str(output_dir), "--per_device_train_batch_size", "3", "--gradient_accumulation_steps", "1",
            "--report_to", "none", *map(str, extra)]


def launch(args, **kwargs):
    """The documented command: accelerate launch --quiet (on the CPU)."""
    return run_script(launch_command(args), **kwargs)


def launch_command(args):
    return [ACCELERATE, "launch", "--quiet", "--config_file", str(REPO / "accelerate_config.yaml"), "--cpu", *args]


def train_in_process(args):
    """train_sft.py's main in this process, on the arguments train_args gives (its script path first); returns the
    exit code (0 when it returns), as the script's would be. Runs that need no process of their own save seconds of
    imports."""
    from cthulhu_sft.config import parse_args

    try:
        load_script("train_sft").main(*parse_args(list(map(str, args[1:]))))
    except SystemExit as exit:
        return exit.code
    return 0


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    """A run that memorises three answers, checks its knowledge closed and open book (it runs in `root`, whose
    data/source_texts.jsonl holds the articles), then fails to upload to a Hub that accepted its token and repo
    before training."""
    root = tmp_path_factory.mktemp("trained")
    quiz = write_jsonl(root / "quiz.jsonl", QUIZ)
    write_jsonl(root / "data" / "source_texts.jsonl", SOURCE_TEXTS)
    hub = LoopbackHub(token=SECRET, upload_status=400)
    args = train_args(
        tiny_model_dir, root / "data", root / "out",
        "--max_steps", 80, "--learning_rate", "1e-2", "--lora_dropout", 0, "--warmup_steps", 0,
        "--lr_scheduler_type", "constant", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", 40,
        "--logging_steps", 20, "--sample_temperature", 0, "--sample_max_new_tokens", 24,
        "--sample_prompts", QA[0]["instruction"], QA[2]["instruction"],
        "--knowledge_check_files", quiz, root / "missing.jsonl",
        "--base_model_hub_id", "mistralai/Mistral-7B-Instruct-v0.2", "--card_datasets", "tester/cthulhu-qa",
        "--push_to_hub", "--hub_model_id", "tester/cthulhu-test",
    )
    result = launch(args, env={"HF_ENDPOINT": hub.url, "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "0"}, cwd=root)
    hub.close()
    return result, root / "out", hub


def test_failed_upload_is_one_error_with_the_retry_command(trained):
    result, out, hub = trained
    assert result.returncode == 1, result.stderr[-3000:]  # accelerate launch --quiet exits 1 for any failure
    assert "push to the Hub (tester/cthulhu-test) failed" in result.stderr
    assert f"python -m cthulhu_sft.hub {out} tester/cthulhu-test" in result.stderr
    assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr
    assert f"pushing {out} to tester/cthulhu-test" in result.stdout
    assert ("model", "tester/cthulhu-test") in hub.files, "the repo was created before training"


def test_failed_push_keeps_a_complete_output_dir(trained):
    _, out, _ = trained
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer.model",
                 "tokenizer_config.json", "README.md", "run.json", "config.yaml", "samples.jsonl"):
        assert (out / name).is_file(), name
    assert (out / "checkpoint-40").is_dir() and (out / "checkpoint-80").is_dir()
    run = json.loads((out / "run.json").read_text())
    assert run["status"] == "finished"
    assert run["publish"]["status"] == "failed" and run["publish"]["repo_id"] == "tester/cthulhu-test"


def test_token_never_appears_in_output_logs_or_files(trained):
    result, out, _ = trained
    assert SECRET not in result.stdout + result.stderr
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_output_is_the_run_not_library_noise(trained):
    result, _, _ = trained
    lines = (result.stdout + result.stderr).replace("\r", "\n").splitlines()
    assert sum("MatMul8bitLt" in line for line in lines) <= 1
    assert not any("gemm_4bit_forward" in line or "FutureWarning" in line for line in lines)
    assert any("Training on the CPU (no GPU found): no GPU memory check" in line for line in lines)
    assert not any("Estimated peak GPU memory" in line or "CUDA context" in line for line in lines)  # not a GPU run
    assert any("saved the adapter, tokenizer, model card and run.json" in line for line in lines)


def test_run_record_traces_data_config_and_versions(trained):
    _, out, _ = trained
    from cthulhu_sft.files import sha256_file

    run = json.loads((out / "run.json").read_text())
    train = run["data"]["train"]
    assert train["sha256"] == sha256_file(train["path"])
    assert (train["examples"], train["kept"], train["dropped_too_long"]) == (3, 3, 0)
    assert set(run["versions"]) >= {"torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate"}
    assert run["config"]["learning_rate"] == 0.01 and run["config"]["lora_r"] == 16
    assert "hub_token" not in run["config"]
    assert run["config"]["eos_token"] is None and run["config"]["pad_token"] is None  # not to_dict's "<EOS_TOKEN>"
    assert run["start_time"] <= run["end_time"]
    assert "train_loss" in run["metrics"] and "eval_loss" in run["metrics"]
    assert run["git_commit"] is None or len(run["git_commit"]) >= 40


def test_knowledge_check_compares_base_and_adapter_in_run_json_and_card(trained):
    _, out, _ = trained
    from huggingface_hub import ModelCard

    check = json.loads((out / "run.json").read_text())["knowledge_check"]
    assert check["status"] == "done" and check["temperature"] == 0
    quiz, missing = check["sets"]
    assert missing["error"] == "file not found" and "results" not in missing
    base, adapter = quiz["results"]["base"], quiz["results"]["adapter"]
    assert base["n"] == adapter["n"] == 2
    assert adapter["accuracy"] >= 0.5 > base["accuracy"], "the memorised answer is known to the adapter only"
    low, high = adapter["accuracy_ci"]
    assert 0 <= low <= adapter["accuracy"] <= high <= 1
    card = ModelCard.load(out / "README.md").text
    assert "What this adapter learned" in card
    rows = {tuple(cell.strip() for cell in line.split("|")[1:3]): line for line in card.splitlines()
            if line.startswith(("| base |", "| adapter |"))}
    assert f"| {100 * adapter['accuracy']:.1f} % |" in rows[("adapter", "closed")] and "| 2 |" in rows[("adapter", "closed")]
    assert f"| {100 * base['accuracy']:.1f} % |" in rows[("base", "closed")]
    assert "file not found" in card and "python evaluate.py --models base" in card
    # closed and open book side by side, with the open-book measures and the retrieval recall
    assert check["open_book"] == {"top_k": 3} and quiz["retrieval"]["recall@1"] == 1.0
    for label in ("base", "adapter"):
        opened = quiz["open_book_results"][label]
        assert opened["n"] == 2 and opened["passages_hold_answer_rate"] == 1.0
        assert f"| {100 * opened['accuracy']:.1f} % |" in rows[(label, "open")]
        share = "–" if opened["closed_share_of_open"] is None else f"{100 * opened['closed_share_of_open']:.1f} %"
        assert any(line.startswith(f"| {label} | {share} |") for line in card.splitlines())  # the open-book table
    assert "Retrieval: the question's own article among the top k passages: recall@1 1.000" in card
    assert "--open_book --top_k 3" in card


def test_the_cards_reproduce_command_gives_the_cards_numbers(trained, tmp_path, monkeypatch):
    """The knowledge check and evaluate.py are one pipeline: the card's command, run as printed (the adapter from
    the output folder, since the upload failed), gives every number of run.json's knowledge check."""
    import re
    import shlex

    from conftest import load_script

    result, out, _ = trained
    card = (out / "README.md").read_text(encoding="utf-8")
    command = re.search(r"```bash\n(python evaluate\.py [^\n]*)\n```", card)[1]
    argv = [f"adapter={out}" if part == "adapter=tester/cthulhu-test" else part for part in shlex.split(command)[2:]]
    assert "--batch_size" in argv and "--load_in_8bit" in argv and argv[argv.index("--temperatures") + 1] == "0"
    monkeypatch.chdir(out.parent)  # where training ran
    script = load_script("evaluate")
    script.main(script.parse_args([*argv, "--output_dir", str(tmp_path / "eval")]))
    report = json.loads((tmp_path / "eval" / "report.json").read_text(encoding="utf-8"))
    check = json.loads((out / "run.json").read_text())["knowledge_check"]
    [quiz] = [entry for entry in check["sets"] if "results" in entry]
    assert "--open_book" in argv
    for label in ("base", "adapter"):
        for book, results in (("closed", quiz["results"]), ("open", quiz["open_book_results"])):
            [reproduced] = [r for r in report["results"]
                            if (r["set"], r["model"], r["book"], r["temperature"]) == (quiz["name"], label, book, 0.0)]
            assert {key: reproduced[key] for key in results[label]} == results[label], (label, book)
    assert report["sets"][quiz["name"]]["retrieval"] == quiz["retrieval"]
    # and answer for answer: the knowledge check's answers beside the card are those evaluate.py gives
    checked = [json.loads(line) for line in (out / "knowledge_check.jsonl").read_text(encoding="utf-8").splitlines()]
    again = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text(encoding="utf-8").splitlines()]
    drop = ("reference_loss",)  # evaluate.py also measures the reference answers' loss
    assert [{k: v for k, v in row.items() if k not in drop} for row in again] == \
        [{k: v for k, v in row.items() if k not in drop} for row in checked]
    # what qualifies the numbers is on the card, and the table reached the console
    assert "tiny test model" in card and "local folder" in card and "No article text was available" not in card
    assert {row["book"] for row in checked} == {"closed", "open"}
    assert all(row["sources"][0]["title"] == row["title"] for row in checked if row["book"] == "open")
    assert "| not attempted |" in card and "cut at max_new_tokens" in card
    console = result.stdout + result.stderr
    assert "knowledge check (temperature 0):" in console and "correct (95 % interval)" in console
    assert re.search(r"quiz +adapter +closed +0 +2 ", console) and re.search(r"quiz +adapter +open +0 +2 ", console)
    assert "in batches of 8" in console and "adapter quiz (set 1/1): T=0, open book" in console  # the progress bar


def test_saved_config_reproduces_the_run_settings(trained):
    _, out, _ = trained
    from cthulhu_sft.config import parse_args

    script_args, training_args, model_args = parse_args(["--config", str(out / "config.yaml"), "--bf16", "false"])
    assert training_args.eos_token is None and training_args.pad_token is None
    assert training_args.learning_rate == 0.01 and training_args.max_steps == 80 and model_args.lora_r == 16
    assert script_args.base_model_hub_id == "mistralai/Mistral-7B-Instruct-v0.2"
    saved = (out / "config.yaml").read_text()
    assert "resume_from_checkpoint" not in saved and "overwrite_output_dir" not in saved  # one-off, not the recipe


def test_model_card_describes_the_data_it_was_trained_on(trained):
    _, out, _ = trained
    from huggingface_hub import ModelCard

    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "mistralai/Mistral-7B-Instruct-v0.2"
    assert card.data.library_name == "peft" and card.data.license == "cc-by-sa-4.0"
    assert card.data.datasets == ["tester/cthulhu-qa"]  # the dataset prepare_data.py --push_to_hub published
    assert "CC BY-SA 4.0" in card.text and "https://ja.wikipedia.org/wiki/ルルイエ" in card.text
    assert "(revision 101)" in card.text and "run.json" in card.text
    assert "| recitation | 3 |" in card.text
    run = json.loads((out / "run.json").read_text())
    assert f"| train_loss | {run['metrics']['train_loss']:.4f} |" in card.text
    # max_steps 80 set the length: the card shows it beside the epochs trained, not the unused num_train_epochs 3
    assert f"| epochs trained (passes over the training data), set by max_steps 80 | {run['metrics']['epoch']:.2f} |" \
        in card.text
    assert "| `max_steps` | `80` |" in card.text and "num_train_epochs" not in card.text


def test_it_learns_and_stops_at_eos(trained):
    _, out, _ = trained
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert samples == [
        {"prompt": QA[0]["instruction"], "answer": QA[0]["response"], "ended_with_eos": True},
        {"prompt": QA[2]["instruction"], "answer": QA[2]["response"], "ended_with_eos": True},
    ]


def test_saved_adapter_names_the_hub_base_and_loads_with_peft(trained, tiny_model_dir):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _, out, _ = trained
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        "mistralai/Mistral-7B-Instruct-v0.2"
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    messages = [{"role": "user", "content": QA[1]["instruction"]}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    output = model.generate(**prompt, max_new_tokens=24, do_sample=False)
    new_tokens = output[0, prompt["input_ids"].shape[1]:].tolist()
    assert new_tokens[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(new_tokens, skip_special_tokens=True).strip() == QA[1]["response"]


def test_the_retry_command_publishes_the_run(trained):
    _, out, _ = trained
    with LoopbackHub(token=SECRET) as hub:
        result = run_script([PYTHON, "-m", "cthulhu_sft.hub", str(out), "tester/again"],
                            env={"HF_ENDPOINT": hub.url, "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "0"})
        files = hub.files[("model", "tester/again")]
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                             "config.yaml", "knowledge_check.jsonl", "run.json", "samples.jsonl", "tokenizer.json",
                             "tokenizer.model",
                             "tokenizer_config.json"]  # no checkpoints, logs or pickled arguments
    assert files["adapter_model.safetensors"] == (out / "adapter_model.safetensors").read_bytes()
    assert SECRET not in result.stdout + result.stderr
    publish = json.loads((out / "run.json").read_text())["publish"]  # the retry is recorded as the publish
    assert publish["status"] == "done" and publish["repo_id"] == "tester/again" and publish["url"]


def test_documented_command_echoes_no_token_and_shows_one_error(tiny_model_dir, tmp_path):
    """accelerate launch prints the child's command line when it fails, unless --quiet."""
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"instruction": "q"}\n', encoding="utf-8")
    commands = [launch_command(train_args(tiny_model_dir, tmp_path / "data", tmp_path / "out", *extra))
                for extra in (["--hub-token", SECRET], ["--train_file", bad])]
    with ThreadPoolExecutor(len(commands)) as pool:  # both fail before touching out: they can run side by side
        results = list(pool.map(run_script, commands))
    for result in results:
        assert result.returncode == 1
        assert SECRET not in result.stdout + result.stderr
        assert "Traceback" not in result.stderr and "CalledProcessError" not in result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, result.stderr[-2000:]


def test_a_resumed_run_ends_with_the_adapter_and_figures_of_an_uninterrupted_one(tiny_model_dir, tmp_path):
    """Fresh and resumed runs train in the same precision (float32 LoRA weights and optimizer state), with LoRA
    dropout on: stopping after checkpoint-3, then after checkpoint-6 (the last step, before the adapter is saved),
    and resuming gives the uninterrupted run's adapter, and run.json reports the run's loss and training time, not
    those of the last call (which trained no step)."""
    from safetensors.torch import load_file

    common = ["--max_steps", 6, "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", 3,
              "--logging_steps", 1, "--per_device_train_batch_size", 1, "--lora_dropout", 0.1,
              "--sample_prompts", "x", "--sample_max_new_tokens", 2, "--knowledge_check", "false"]
    hooks = str(REPO / "tests" / "train_with_hooks.py")
    args = train_args(tiny_model_dir, tmp_path / "data", tmp_path / "cut", *common)
    whole_args = train_args(tiny_model_dir, tmp_path / "data", tmp_path / "whole", *common)

    def killed_twice():  # only the runs that kill themselves need a process of their own
        killed = run_script([PYTHON, hooks, *args[1:]], env={"CTHULHU_TEST_DIE_AFTER": "3"})
        finished = (tmp_path / "cut" / "adapter_model.safetensors").exists()
        killed_at_the_end = run_script([PYTHON, hooks, *args[1:], "--resume_from_checkpoint", "true"],
                                       env={"CTHULHU_TEST_DIE_AFTER": "6"})
        return killed, finished, killed_at_the_end

    with ThreadPoolExecutor(1) as pool:  # the uninterrupted run trains here meanwhile
        cut = pool.submit(killed_twice)
        assert train_in_process(whole_args) == 0
        killed, finished_after_the_first, killed_at_the_end = cut.result()
    assert killed.returncode == 9 and not finished_after_the_first, killed.stderr[-3000:]
    assert killed_at_the_end.returncode == 9 and not (tmp_path / "cut" / "adapter_model.safetensors").exists()
    assert train_in_process([*args, "--resume_from_checkpoint", "true"]) == 0

    state = json.loads((tmp_path / "cut" / "checkpoint-6" / "trainer_state.json").read_text())
    assert [entry["step"] for entry in state["log_history"] if "loss" in entry] == [1, 2, 3, 4, 5, 6]
    run = json.loads((tmp_path / "cut" / "run.json").read_text())
    assert run["status"] == "finished" and run["resumed_from"] == str(tmp_path / "cut" / "checkpoint-6")
    uninterrupted = json.loads((tmp_path / "whole" / "run.json").read_text())["metrics"]
    assert run["metrics"]["train_loss"] == pytest.approx(uninterrupted["train_loss"], rel=1e-5)
    clock = state["stateful_callbacks"]["TrainingClock"]["attributes"]["seconds"]  # steps 1-3, then 4-6
    assert run["metrics"]["train_runtime"] >= clock > uninterrupted["train_runtime"] / 4, (run["metrics"], clock)
    assert run["metrics"]["train_steps_per_second"] == pytest.approx(6 / run["metrics"]["train_runtime"], rel=1e-2)
    card = (tmp_path / "cut" / "README.md").read_text()
    assert f"| train_loss | {uninterrupted['train_loss']:.4f} |" in card
    expected = load_file(tmp_path / "whole" / "adapter_model.safetensors")
    got = load_file(tmp_path / "cut" / "adapter_model.safetensors")
    assert set(got) == set(expected)
    for name, tensor in expected.items():
        assert tensor.dtype == got[name].dtype == __import__("torch").float32, name
        assert (tensor - got[name]).abs().max().item() <= 1e-6, name


def test_a_full_disk_at_the_first_checkpoint_is_one_line_and_the_command_it_gives_trains_the_run(tiny_model_dir,
                                                                                                 tmp_path):
    """A file size limit (RLIMIT_FSIZE) stands in for the full disk: the checkpoint's tokenizer.json (3.5 MB) cannot
    be written, as on a disk without room. The message names the folder and the command; that command works."""
    import resource
    import signal
    import subprocess

    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))

    args = [PYTHON, *train_args(tiny_model_dir, tmp_path / "data", tmp_path / "out", "--max_steps", 1, "--eval_strategy",
                                "no", "--save_strategy", "steps", "--save_steps", 1, "--knowledge_check", "false",
                                "--sample_prompts", "x", "--sample_max_new_tokens", 2)]
    full = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=900, preexec_fn=small_disk)
    assert full.returncode == 1
    errors = [line for line in full.stderr.replace("\r", "\n").splitlines() if "error" in line.lower()]
    assert errors == [f"error: cannot write {tmp_path / 'out' / 'checkpoint-1'} (a checkpoint): File too large. Free "
                      "space on that disk (or choose an --output_dir on another), then run the same command again, "
                      "without --resume_from_checkpoint (the run starts again)"], full.stderr[-3000:]
    assert "Traceback" not in full.stderr
    assert train_in_process(args[1:]) == 0  # the command the message gives, with room on the disk
    assert json.loads((tmp_path / "out" / "run.json").read_text())["status"] == "finished"


def test_each_eval_set_has_its_loss_and_knowledge_check_false_skips_the_check(tiny_model_dir, tmp_path):
    args = train_args(tiny_model_dir, tmp_path / "data", tmp_path / "out", "--max_steps", 2, "--eval_strategy", "steps",
                      "--eval_steps", 1, "--save_strategy", "no", "--sample_prompts", "x", "--sample_max_new_tokens", 2,
                      "--knowledge_check", "false", "--report_to", "tensorboard")
    known = write_jsonl(tmp_path / "data" / "eval_known.jsonl", QUIZ)
    unseen = write_jsonl(tmp_path / "data" / "eval.jsonl", QA[:1])
    args[args.index("--eval_file") + 1:args.index("--eval_file") + 2] = [str(known), str(unseen)]
    assert train_in_process(args) == 0
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert {"eval_known_loss", "eval_unseen_loss"} <= set(run["metrics"])
    # TRL's own eval metrics are per set too: one unprefixed eval_entropy would be whichever set came last
    assert {"eval_known_entropy", "eval_unseen_entropy"} <= set(run["metrics"])
    assert not {"eval_entropy", "eval_mean_token_accuracy"} & set(run["metrics"]), run["metrics"]
    assert run["knowledge_check"] == {"status": "skipped", "reason": "knowledge_check is false"}
    assert "No knowledge check was run: knowledge_check is false" in (tmp_path / "out" / "README.md").read_text()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    [events] = (tmp_path / "out" / "runs").rglob("events.out.tfevents.*")
    scalars = EventAccumulator(str(events)).Reload().Tags()["scalars"]
    assert {"eval/known_loss", "eval/unseen_loss"} <= set(scalars), scalars
