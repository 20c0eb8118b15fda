"""train_sft.py before the model: configuration, validation, output_dir and Hub checks, --dump_tokenized.

In-process through `train_sft.main(*parse_args(...))`, the CLI's own path (a subprocess would spend seconds
importing torch for each case); the documented launcher itself is run in test_train_e2e.py.
"""

import hashlib
import json
import time

import pytest
import yaml
from conftest import REPO, load_script, mistral_common_ids
from hub_server import VALID_TOKEN, LoopbackHub, RefusingHub, SilentHub

from cthulhu_sft.config import parse_args

RECORDS = [
    {"instruction": "クトゥルフとは？", "response": "ルルイエに眠る存在。"},
    {"instruction": "文中の </s> と [INST] は？", "response": "ただの文字 </s> です。\n改行\tタブ　全角"},
    {"instruction": "emoji 🐙", "response": "🦑"},
    {"instruction": "長い", "response": "あ。" * 200},
]
train_sft = load_script("train_sft")


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def run_main(*args, model="does/not-exist"):
    """train_sft.py's main on sft_config.yaml with these overrides; returns its exit code (0 when it returns)."""
    argv = ["--config", str(REPO / "sft_config.yaml"), "--bf16", "false", "--model_name_or_path", str(model),
            *map(str, args)]
    try:
        train_sft.main(*parse_args(argv))
    except SystemExit as exit:
        return exit.code
    return 0


@pytest.fixture
def said(capsys, caplog):
    """Everything the run printed or logged so far."""
    caplog.set_level("INFO")

    def text():
        captured = capsys.readouterr()
        return captured.out + captured.err + caplog.text

    return text


@pytest.fixture
def train(tmp_path):
    return write_jsonl(tmp_path / "train.jsonl", RECORDS[:1])


def test_dump_tokenized_equals_mistral_common_and_drops_too_long(tmp_path, tiny_model_dir, reference_tokenizer, said):
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS)
    dump = tmp_path / "dump.jsonl"
    code = run_main("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--max_length", 200, "--dump_tokenized", dump,
                    "--output_dir", tmp_path / "out", model=tiny_model_dir)
    assert code == 0
    assert "1 of 4 examples are longer than max_length=200" in said()
    rows = [json.loads(line) for line in dump.read_text().splitlines()]
    assert len(rows) == 3
    for record, row in zip(RECORDS, rows):
        messages = [{"role": "user", "content": record["instruction"]}, {"role": "assistant", "content": record["response"]}]
        expected = mistral_common_ids(reference_tokenizer, messages)
        assert row["input_ids"] == expected
        prompt_length = len(expected) - len(row["labels"]) + row["labels"].count(-100)
        assert row["labels"] == [-100] * prompt_length + expected[prompt_length:]
        assert row["labels"][-1] == 2 and row["input_ids"].count(1) == 1
    assert not (tmp_path / "out").exists(), "--dump_tokenized must not start a run"


@pytest.mark.parametrize(
    "content,message",
    [
        ('{"instruction": "q", "response": "a"}\n{"instruction": "q2", "response": \n', "train.jsonl:2: invalid JSON"),
        ('{"instruction": "q"}\n', "train.jsonl:1: field 'response': missing"),
        ('{"instruction": "q", "response": ""}\n', "train.jsonl:1: field 'response': empty"),
        ('{"instruction": ["q"], "response": "a"}\n', "train.jsonl:1: field 'instruction': expected a string"),
        ('[{"text": "q", "output": "a"}]\n', "train.jsonl:1: a JSON array, not JSON Lines: convert it once with"),
    ],
)
def test_bad_training_data_fails_before_any_model_is_loaded(tmp_path, content, message, said):
    train = tmp_path / "train.jsonl"
    train.write_text(content, encoding="utf-8")
    # The model id does not exist anywhere: reaching the model (or tokenizer) would fail differently.
    assert run_main("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", tmp_path / "out") == 2
    assert message in said()


def test_a_yaml_typo_names_the_key_and_the_nearest_valid_one(tmp_path, capsys):
    config = yaml.safe_load((REPO / "sft_config.yaml").read_text())
    config["lerning_rate"] = 1e-4
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    with pytest.raises(SystemExit) as exit:
        parse_args(["--config", str(path)])  # reported before bf16 is even looked at
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert "typo.yaml: unknown key 'lerning_rate'; did you mean 'learning_rate'?" in error
    assert "fail_with_unknown_args" not in error


@pytest.mark.parametrize("option,nearest", [("--num_epochs", "num_train_epochs"), ("--max_step", "max_steps")])
def test_unknown_or_abbreviated_options_are_errors_naming_the_nearest(option, nearest, capsys):
    """`--max_step 20` must not silently be taken as --max_steps (argparse's prefix matching)."""
    with pytest.raises(SystemExit) as exit:
        parse_args(["--config", str(REPO / "sft_config.yaml"), "--bf16", "false", option, "2"])
    assert exit.value.code == 2
    assert f"unknown option {option}; did you mean '{nearest}'?" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--hub_token", "hf_secret123"], ["--hub_token=hf_secret123"],
                                  ["--hub-token", "hf_secret123"], ["--push_to_hub_token", "hf_secret123"]])
def test_a_token_on_the_command_line_is_refused_without_echoing_it(args, capsys):
    with pytest.raises(SystemExit) as exit:
        parse_args(["--config", str(REPO / "sft_config.yaml"), "--bf16", "false", *args])
    assert exit.value.code == 2
    error = capsys.readouterr().err
    assert "is not accepted on the command line" in error and "hf auth login" in error and "HF_TOKEN" in error
    assert "hf_secret123" not in error


def test_a_token_in_the_config_file_is_refused_without_echoing_it(tmp_path, capsys):
    """A token in the YAML would be pickled into training_args.bin in every checkpoint."""
    config = yaml.safe_load((REPO / "sft_config.yaml").read_text()) | {"hub_token": "hf_secret123"}
    path = tmp_path / "with-token.yaml"
    path.write_text(yaml.safe_dump(config, allow_unicode=True))
    with pytest.raises(SystemExit) as exit:
        parse_args(["--config", str(path), "--bf16", "false"])
    error = capsys.readouterr().err
    assert exit.value.code == 2 and "does not belong in a config file" in error and "hf_secret123" not in error


@pytest.mark.parametrize("option,value", [("--sample_max_new_tokens", "0"), ("--sample_top_p", "1.5"),
                                          ("--sample_temperature", "-1")])
def test_bad_sample_settings_are_refused_before_training(option, value, capsys):
    with pytest.raises(SystemExit) as exit:
        parse_args(["--config", str(REPO / "sft_config.yaml"), "--bf16", "false", option, value])
    assert exit.value.code == 2 and "sample_" in capsys.readouterr().err


def test_eval_files_that_would_share_a_loss_name_are_refused():
    from cthulhu_sft.data import DataError, eval_set_name

    files = ["data/eval.jsonl", "x/unseen.jsonl"]
    with pytest.raises(DataError, match="eval_unseen_loss"):
        eval_set_name(files[0], files)
    assert [eval_set_name(path, ["a/eval_known.jsonl", "a/eval.jsonl"]) for path in ["a/eval_known.jsonl", "a/eval.jsonl"]] \
        == ["known", "unseen"]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path, tiny_model_dir, train, said):
    assert run_main("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", tmp_path / "out",
                    "--resume_from_checkpoint", "true", model=tiny_model_dir) == 2
    assert "no complete checkpoint-* folder" in said()


def test_shipped_config_parses_with_the_real_parser_and_holds_the_recipe():
    script_args, training_args, model_args = parse_args(["--config", str(REPO / "sft_config.yaml"), "--bf16", "false"])
    assert model_args.model_name_or_path == "mistralai/Mistral-7B-Instruct-v0.2"
    assert model_args.load_in_8bit and model_args.use_peft and model_args.lora_target_modules == "all-linear"
    assert training_args.activation_checkpointing and training_args.activation_checkpointing_kwargs == {"use_reentrant": True}
    assert str(training_args.eval_strategy) in ("epoch", "IntervalStrategy.EPOCH")
    assert script_args.train_file == "data/train.jsonl"
    assert script_args.eval_file == ["data/eval_known.jsonl", "data/eval.jsonl"]
    assert script_args.knowledge_check and "data/quiz/cthulhu_quiz_ja.jsonl" in script_args.knowledge_check_files
    assert yaml.safe_load((REPO / "sft_config.yaml").read_text())["bf16"] is True


def test_command_line_overrides_the_yaml():
    script_args, training_args, model_args = parse_args(
        ["--config", str(REPO / "sft_config.yaml"), "--bf16", "false", "--learning_rate", "1e-4", "--lora_r", "8",
         "--eval_file", "data/eval.jsonl", "--knowledge_check", "false"])
    assert training_args.learning_rate == 1e-4 and model_args.lora_r == 8
    assert script_args.eval_file == ["data/eval.jsonl"] and script_args.knowledge_check is False


def test_bf16_without_gpu_explains_the_fix(capsys):
    with pytest.raises(SystemExit) as exit:
        parse_args(["--config", str(REPO / "sft_config.yaml")])
    error = capsys.readouterr().err
    assert exit.value.code == 2 and error.startswith("error: bf16 is true (sft_config.yaml) but this machine has no GPU: "
                                                     "pass --bf16 false")
    assert "use_cpu" not in error  # the Trainer's advice does not apply to this recipe


def test_evaluation_without_eval_file_is_refused_before_training(tmp_path, tiny_model_dir, train, said):
    assert run_main("--train_file", train, "--eval_file", "", "--output_dir", tmp_path / "out", model=tiny_model_dir) == 2
    assert "eval_strategy is 'epoch' but there is no eval_file" in said()


def test_without_evaluation_the_default_eval_files_are_not_demanded(tmp_path, tiny_model_dir, train, monkeypatch,
                                                                    said):
    """A fresh checkout has no data/eval*.jsonl (sft_config.yaml's eval_file): --eval_strategy no needs none."""
    monkeypatch.chdir(tmp_path)
    dump = tmp_path / "d.jsonl"
    assert run_main("--train_file", train, "--eval_strategy", "no", "--dump_tokenized", dump, model=tiny_model_dir) == 0
    assert dump.is_file()
    assert "eval_file data/eval_known.jsonl, data/eval.jsonl not found: not evaluated (eval_strategy is 'no')" in said()


def test_with_evaluation_a_missing_eval_file_says_how_to_get_it(tmp_path, tiny_model_dir, train, monkeypatch, said):
    monkeypatch.chdir(tmp_path)
    assert run_main("--train_file", train, "--output_dir", tmp_path / "out", model=tiny_model_dir) == 2
    error = said()
    assert "data/eval_known.jsonl: file not found (eval_file, evaluated every epoch)" in error
    assert "python prepare_data.py" in error and "--eval_file data/sample/eval_known.jsonl" in error
    assert "--eval_strategy no" in error and not (tmp_path / "out").exists()


def test_eval_sets_that_are_not_held_out_are_warned_about(tmp_path, tiny_model_dir, said):
    train = write_jsonl(tmp_path / "train.jsonl", RECORDS[:3])
    known = write_jsonl(tmp_path / "eval_known.jsonl", RECORDS[:2] + [{"instruction": "別の質問", "response": "別"}])
    unseen = write_jsonl(tmp_path / "eval.jsonl", [{"instruction": "新しい質問", "response": "新しい答え"}])
    code = run_main("--train_file", train, "--eval_file", known, unseen, train, "--dump_tokenized", tmp_path / "d.jsonl",
                    model=tiny_model_dir)
    assert code == 0
    error = said()
    assert f"{known}: 2 of 3 examples are also in {train}; they are not held out" in error
    assert f"{train} is both train_file and eval_file" in error
    assert str(unseen) not in error


def output_dir_digest(folder):
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(folder.rglob("*")) if path.is_file()}


def finished_run(folder):
    (folder / "checkpoint-4").mkdir(parents=True)
    (folder / "checkpoint-4" / "trainer_state.json").write_text('{"global_step": 4}')
    (folder / "run.json").write_text(json.dumps({"status": "finished", "metrics": {"train_loss": 1.5}}))
    (folder / "adapter_model.safetensors").write_bytes(b"trained")
    (folder / "README.md").write_text("card")
    return output_dir_digest(folder)


def test_resuming_a_finished_run_changes_nothing_and_succeeds(tmp_path, tiny_model_dir, train, said):
    out = tmp_path / "out"
    before = finished_run(out)
    assert run_main("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", out, "--resume_from_checkpoint", "true",
                    model=tiny_model_dir) == 0
    assert output_dir_digest(out) == before, "a finished run is left byte for byte as it was"
    assert "holds a finished run" in said()


def test_resuming_a_finished_run_changes_nothing_even_with_overwrite(tmp_path, tiny_model_dir, train, said):
    out = tmp_path / "out"
    before = finished_run(out)
    assert run_main("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", out,
                    "--resume_from_checkpoint", "true", "--overwrite_output_dir", "true", model=tiny_model_dir) == 0
    assert output_dir_digest(out) == before


def test_resuming_a_finished_run_with_more_steps_is_refused_saying_how(tmp_path, tiny_model_dir, train, said):
    """The Trainer would 'extend' a finished 4-step run on a schedule that ended at step 4; never silently exit 0."""
    out = tmp_path / "out"
    finished_run(out)
    run = json.loads((out / "run.json").read_text()) | {"config": {"max_steps": 4, "num_train_epochs": 3}}
    (out / "run.json").write_text(json.dumps(run))
    before = output_dir_digest(out)
    assert run_main("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", out,
                    "--max_steps", 6, "--resume_from_checkpoint", "true", model=tiny_model_dir) == 2
    error = said()
    assert "finished with max_steps 4" in error and "does not extend a finished run to max_steps 6" in error
    assert "--max_steps 6: choose another --output_dir, or pass --overwrite_output_dir true" in error
    assert output_dir_digest(out) == before


def test_overwrite_clears_the_old_checkpoints_so_no_resume_can_mix_runs(tmp_path):
    from cthulhu_sft.training import check_output_dir

    out = tmp_path / "out"
    finished_run(out)
    check_output_dir(str(out), resuming=False, overwrite=True)
    assert not list(out.glob("checkpoint-*")) and (out / "run.json").is_file()


def test_a_finished_run_is_not_overwritten_and_the_refusal_suggests_nothing_harmful(tmp_path, tiny_model_dir, train,
                                                                                   said):
    out = tmp_path / "out"
    before = finished_run(out)
    assert run_main("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", out, model=tiny_model_dir) == 2
    error = said()
    assert "already holds a finished run" in error and "resume_from_checkpoint" not in error
    assert output_dir_digest(out) == before


def test_an_unfinished_run_with_checkpoints_is_continued_not_overwritten(tmp_path, tiny_model_dir, train, said):
    out = tmp_path / "out"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3}')
    (out / "run.json").write_text(json.dumps({"status": "running"}))
    assert run_main("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", out,
                    model=tiny_model_dir) == 2
    assert "--resume_from_checkpoint true" in said()
    assert json.loads((out / "run.json").read_text()) == {"status": "running"}


@pytest.mark.parametrize("folder", ["mine", "data"])
def test_a_folder_that_is_not_a_run_keeps_its_files(tmp_path, tiny_model_dir, train, folder, said):
    """--output_dir data would replace the dataset card (with its CC BY-SA attribution) by the model card."""
    out = tmp_path / folder
    out.mkdir()
    (out / "README.md").write_text("my own notes")
    assert run_main("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", out,
                    model=tiny_model_dir) == 2
    error = said()
    assert "holds no cthulhu-sft run" in error and "--overwrite_output_dir true" in error
    assert (out / "README.md").read_text() == "my own notes" and sorted(p.name for p in out.iterdir()) == ["README.md"]


def test_a_run_stopped_before_its_first_complete_checkpoint_is_started_again_by_the_command_given(
        tmp_path, tiny_model_dir, train, said):
    """A full disk during the first checkpoint leaves checkpoint-1 without trainer_state.json: the resume's refusal
    names the command that works, and that command (no resume) starts the run again without the partial folder."""
    from cthulhu_sft.training import check_output_dir

    out = tmp_path / "out"
    (out / "checkpoint-1").mkdir(parents=True)
    (out / "checkpoint-1" / "adapter_model.safetensors").write_bytes(b"partial")
    (out / "run.json").write_text(json.dumps({"status": "running"}))
    assert run_main("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", out,
                    "--resume_from_checkpoint", "true", model=tiny_model_dir) == 2
    assert "(checkpoint-1: saved only in part, no trainer_state.json); start the run again: the same command without " \
           "--resume_from_checkpoint" in said()
    check_output_dir(str(out), resuming=False, overwrite=False)  # what that command does with output_dir
    assert not (out / "checkpoint-1").exists() and "removing checkpoint-1 (saved only in part)" in said()


def test_a_full_disk_while_writing_the_run_record_is_one_line_naming_the_file(tmp_path, capsys):
    """A file size limit stands in for the full disk: the write fails with EFBIG as it would with ENOSPC."""
    import resource
    import signal

    from cthulhu_sft import run_record
    from cthulhu_sft.config import resolved_config
    from cthulhu_sft.training import stop_if_disk_full

    config = resolved_config(*parse_args(["--config", str(REPO / "sft_config.yaml"), "--bf16", "false"]))
    record = {"status": "running", "config": config | {"output_dir": str(tmp_path)}}
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1000, hard))
    try:
        with pytest.raises(SystemExit) as exit, stop_if_disk_full(str(tmp_path), str(tmp_path)):
            run_record.finish(str(tmp_path), record, {}, {"status": "skipped", "reason": "test"}, [])
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)
    error = capsys.readouterr().err.strip()
    assert exit.value.code == 1 and "\n" not in error, error
    assert error.startswith(f"error: cannot write {tmp_path / 'config.yaml'}: File too large. Free space on that disk")
    assert "run the same command again" in error and not list(tmp_path.iterdir())  # no partial or temporary file


def test_resume_skips_a_checkpoint_left_incomplete_by_a_kill(tmp_path):
    """A run killed while saving leaves checkpoint-N without trainer_state.json: resume uses the one before."""
    from cthulhu_sft.training import newest_complete_checkpoint

    out = tmp_path / "out"
    (out / "checkpoint-3").mkdir(parents=True)
    (out / "checkpoint-3" / "trainer_state.json").write_text('{"global_step": 3}')
    (out / "checkpoint-6").mkdir()
    (out / "checkpoint-6" / "adapter_model.safetensors").write_bytes(b"partial")
    (out / "checkpoint-10-old").mkdir()  # not a checkpoint name the Trainer writes
    assert newest_complete_checkpoint(str(out)) == str(out / "checkpoint-3")
    (out / "checkpoint-3" / "trainer_state.json").write_text('{"global_st')  # cut mid-write
    assert newest_complete_checkpoint(str(out)) is None


@pytest.mark.parametrize(
    "args,message",
    [
        (["--train_file", ""], "train_file is empty"),
        (["--train_file", "missing/train.jsonl"], "missing/train.jsonl: file not found; build the dataset with `python "
                                                  "prepare_data.py`, or train on the shipped sample: --train_file data/sample/"),
        (["--model_name_or_path", "/no/such/model"], "cannot read tokenizer.model of /no/such/model"),
        (["--push_to_hub", "--hub_model_id", "tester/x", "--model_name_or_path", "{model}"],
         "name its Hub id with --base_model_hub_id"),
        (["--push_to_hub"], "--push_to_hub needs --hub_model_id"),
    ],
)
def test_bad_settings_are_one_clear_error(tmp_path, tiny_model_dir, train, args, message, said):
    args = [arg.replace("{model}", str(tiny_model_dir)) for arg in args]
    code = run_main("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", tmp_path / "out", *args,
                    model=tiny_model_dir)
    assert code == 2
    assert message in said()
    assert not (tmp_path / "out").exists()


def test_a_missing_or_broken_config_is_one_clear_error(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("learning_rate: [1e-4\n", encoding="utf-8")
    for config, message in ((tmp_path / "missing.yaml", "missing.yaml is not a file"), (broken, "broken.yaml")):
        with pytest.raises(SystemExit) as exit:
            parse_args(["--config", str(config), "--bf16", "false"])
        assert exit.value.code == 2
        error = capsys.readouterr().err
        assert "error: --config:" in error and message in error


# --- The Hub is checked before anything is trained


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    def use(url, token=VALID_TOKEN):
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # no saved login
        monkeypatch.setenv("HF_HUB_OFFLINE", "0")
        if token:
            monkeypatch.setenv("HF_TOKEN", token)
        else:
            monkeypatch.delenv("HF_TOKEN", raising=False)
        import huggingface_hub.constants as constants

        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    return use


def push_args(tmp_path, train, repo="tester/cthulhu"):
    return ["--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", tmp_path / "out",
            "--push_to_hub", "--hub_model_id", repo, "--base_model_hub_id", "mistralai/Mistral-7B-Instruct-v0.2"]


def test_push_without_a_token_stops_before_training(tmp_path, train, hub_env, said, tiny_model_dir):
    with LoopbackHub() as hub:
        hub_env(hub.url, token=None)
        assert run_main(*push_args(tmp_path, train), model=tiny_model_dir) == 2
    error = said()
    assert "no Hugging Face token found" in error and "hf auth login" in error and "Nothing was trained" in error
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("token,repo,hint", [
    ("hf_wrongToken000000000000000000000", "tester/cthulhu", "The Hub refused the token"),
    (VALID_TOKEN, "someone-else/cthulhu", "may not write to that namespace"),
])
def test_push_with_a_refused_token_or_namespace_stops_before_training(tmp_path, train, hub_env, token, repo, hint, said,
                                                                     tiny_model_dir):
    with LoopbackHub() as hub:
        hub_env(hub.url, token=token)
        assert run_main(*push_args(tmp_path, train, repo), model=tiny_model_dir) == 2
    error = said()
    assert hint in error and "Nothing was trained" in error
    assert token not in error


def test_a_hub_that_never_answers_is_given_up_on_in_time(tmp_path, train, hub_env, said, tiny_model_dir):
    with SilentHub() as hub:
        hub_env(hub.url)
        started = time.monotonic()
        assert run_main(*push_args(tmp_path, train), "--hub_timeout", 1, model=tiny_model_dir) == 2
        assert time.monotonic() - started < 30
    error = said()
    assert "whoami" in error and "Timeout" in error and VALID_TOKEN not in error


def test_push_check_passes_and_creates_the_repo(tmp_path, train, hub_env, tiny_model_dir, said):
    with LoopbackHub() as hub:
        hub_env(hub.url)
        code = run_main(*push_args(tmp_path, train), "--dump_tokenized", tmp_path / "d.jsonl", model=tiny_model_dir)
        assert code == 0
        assert ("model", "tester/cthulhu") in hub.files
    assert "will push to tester/cthulhu as tester after training" in said()


def unpublished_run(folder, status="pending"):
    """A finished run stopped during its upload (SIGTERM): run.json says the publish it asked for is pending."""
    finished_run(folder)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2"}))
    run = json.loads((folder / "run.json").read_text())
    (folder / "run.json").write_text(json.dumps(run | {"publish": {"repo_id": "tester/cthulhu", "status": status}}))


@pytest.mark.parametrize("resume", [[], ["--resume_from_checkpoint", "true"]])
def test_the_same_command_publishes_a_run_whose_upload_was_stopped(tmp_path, train, hub_env, tiny_model_dir, resume,
                                                                  said):
    unpublished_run(tmp_path / "out")
    with LoopbackHub() as hub:
        hub_env(hub.url)
        assert run_main(*push_args(tmp_path, train), *resume, model=tiny_model_dir) == 0
        files = hub.files[("model", "tester/cthulhu")]
    assert files["adapter_model.safetensors"] == b"trained" and "checkpoint-4/trainer_state.json" not in files
    publish = json.loads((tmp_path / "out" / "run.json").read_text())["publish"]
    assert publish["status"] == "done" and publish["repo_id"] == "tester/cthulhu" and publish["url"]
    assert "did not complete; publishing it now" in said()


def test_a_failed_publish_is_recorded_and_the_rerun_says_how_to_retry(tmp_path, train, hub_env, tiny_model_dir, said):
    unpublished_run(tmp_path / "out")
    with RefusingHub(status=500) as refusing:
        hub_env(refusing.url)
        assert run_main(*push_args(tmp_path, train), "--hub_timeout", 5, model=tiny_model_dir) == 1
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["publish"]["status"] == "failed" and "push to the Hub (tester/cthulhu) failed" in run["publish"]["error"]
    assert VALID_TOKEN not in json.dumps(run)
    assert f"python -m cthulhu_sft.hub {tmp_path / 'out'} tester/cthulhu" in said()
    # Resumed without --push_to_hub: nothing to train, and the publish left to do is named with its command
    assert run_main("--train_file", train, "--eval_file", "", "--eval_strategy", "no", "--output_dir", tmp_path / "out",
                    "--resume_from_checkpoint", "true", model=tiny_model_dir) == 0
    assert f"publish to tester/cthulhu did not complete (failed); publish it with `python -m cthulhu_sft.hub " \
           f"{tmp_path / 'out'} tester/cthulhu`" in said()
