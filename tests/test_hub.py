"""Publishing: what a run or dataset upload holds, refusals before any request, and failures without a token."""

import json

import pytest
from hub_server import VALID_TOKEN, LoopbackHub, RefusingHub

from cthulhu_sft import hub


def finished_run(folder, base: str):
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "r": 16}))
    for name in ("adapter_model.safetensors", "tokenizer.model", "tokenizer.json", "README.md", "run.json",
                 "config.yaml", "training_args.bin", "events.out.tfevents.1"):
        (folder / name).write_bytes(b"x")
    (folder / "checkpoint-40").mkdir()
    (folder / "checkpoint-40" / "adapter_model.safetensors").write_bytes(b"x")
    return folder


@pytest.fixture
def hub_env(monkeypatch, tmp_path):
    def use(url, token=VALID_TOKEN):
        import huggingface_hub.constants as constants

        monkeypatch.setenv("HF_TOKEN", token)
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    return use


def test_a_run_uploads_its_allow_list_only(tmp_path, hub_env, capsys):
    run = finished_run(tmp_path / "out", "mistralai/Mistral-7B-Instruct-v0.2")
    with LoopbackHub() as loopback:
        hub_env(loopback.url)
        assert hub.main([str(run), "tester/adapter"]) == 0
        files = loopback.files[("model", "tester/adapter")]
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "config.yaml",
                             "run.json", "tokenizer.json", "tokenizer.model"]  # no checkpoints, logs, pickles
    assert "pushed to" in capsys.readouterr().out


@pytest.mark.parametrize("base", ["/models/mistral", "./mistral", "{tmp}/local-base"])
def test_a_local_base_is_refused_before_contacting_the_hub(tmp_path, hub_env, base, capsys):
    (tmp_path / "local-base").mkdir()
    run = finished_run(tmp_path / "out", base.replace("{tmp}", str(tmp_path)))
    with RefusingHub(status=500) as refusing:
        hub_env(refusing.url)
        assert hub.main([str(run), "tester/adapter"]) == 1
        assert refusing.requests == []
    assert "--base_model_hub_id" in capsys.readouterr().err


def test_the_dataset_upload_holds_the_splits_and_card(tmp_path, hub_env):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("train.jsonl", "eval.jsonl", "eval_known.jsonl", "README.md", "source_texts.jsonl", "notes.txt"):
        (data / name).write_text(name)
    (data / "sample").mkdir()
    (data / "sample" / "train.jsonl").write_text("sample")
    with LoopbackHub() as loopback:
        hub_env(loopback.url)
        url = hub.push_dataset(str(data), "tester/cthulhu-qa")
        files = loopback.files[("dataset", "tester/cthulhu-qa")]
    assert sorted(files) == ["README.md", "eval.jsonl", "eval_known.jsonl", "train.jsonl"]
    assert "datasets/tester/cthulhu-qa" in url


def test_a_refused_upload_is_a_safe_message_with_a_hint(tmp_path, hub_env, capsys):
    run = finished_run(tmp_path / "out", "mistralai/Mistral-7B-Instruct-v0.2")
    with RefusingHub(status=403) as refusing:
        hub_env(refusing.url)
        assert hub.main([str(run), "tester/adapter"]) == 1
        assert any({key.lower(): value for key, value in headers.items()}.get("authorization") == f"Bearer {VALID_TOKEN}"
                   for _, _, headers in refusing.requests), \
            "the token is sent to the Hub, and only there"
    error = capsys.readouterr().err
    assert "push to the Hub (tester/adapter) failed" in error and "may not write to that namespace" in error
    assert VALID_TOKEN not in error


def test_a_run_without_its_adapter_file_is_refused_before_contacting_the_hub(tmp_path, hub_env, capsys):
    run = finished_run(tmp_path / "out", "mistralai/Mistral-7B-Instruct-v0.2")
    (run / "adapter_model.safetensors").unlink()  # e.g. an FSDP run that saved no full state dict
    (run / "run.json").write_text(json.dumps({"status": "finished", "publish": {"status": "pending"}}))
    with RefusingHub(status=500) as refusing:
        hub_env(refusing.url)
        assert hub.main([str(run), "tester/adapter"]) == 1
        assert refusing.requests == []
    assert "holds no adapter_model.safetensors" in capsys.readouterr().err
    assert json.loads((run / "run.json").read_text())["publish"]["status"] == "failed"


def test_the_retry_command_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit:
        hub.main([str(tmp_path), "tester/again"])
    assert exit.value.code == 2 and "has no adapter_config.json" in capsys.readouterr().err


def test_the_timeout_survives_a_new_http_client():
    """huggingface_hub builds a new client after a connection error; the timeout must hold for it too."""
    from huggingface_hub import close_session, get_session

    hub.set_timeout(7)
    close_session()
    assert get_session().timeout.read == 7
