"""What a push publishes: the run's files, with an adapter_config.json that names the base by its Hub id."""

import json

import pytest
import yaml
from conftest import PYTHON, run_script
from hub_server import RefusingHub

from cthulhu_sft.hub import PushError, published_base, upload_operations


def finished_run(folder, base_path: str, base_model_hub_id: str | None, base_local: bool | None = None):
    folder.mkdir()
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base_path, "r": 16}))
    (folder / "config.yaml").write_text(yaml.safe_dump({"base_model_hub_id": base_model_hub_id, "lora_r": 16}))
    run = {"status": "finished"} | ({} if base_local is None else {"base_model_local": base_local})
    (folder / "run.json").write_text(json.dumps(run))
    for name in ("adapter_model.safetensors", "tokenizer.model", "tokenizer.json", "README.md",
                 "training_args.bin", "events.out.tfevents.1"):
        (folder / name).write_bytes(b"x")
    (folder / "checkpoint-40").mkdir()
    (folder / "checkpoint-40" / "adapter_model.safetensors").write_bytes(b"x")
    return folder


def uploaded(operations) -> dict:
    return {op.path_in_repo: op for op in operations}


def test_a_run_on_a_local_base_publishes_the_hub_id(tmp_path):
    run = finished_run(tmp_path / "out", str(tmp_path / "local-base"), "mistralai/Mistral-7B-Instruct-v0.2")
    (tmp_path / "local-base").mkdir()
    base = published_base(str(run))
    assert base == "mistralai/Mistral-7B-Instruct-v0.2"
    files = uploaded(upload_operations(str(run), base))
    assert sorted(files) == ["README.md", "adapter_config.json", "adapter_model.safetensors", "config.yaml",
                             "run.json", "tokenizer.json", "tokenizer.model"]  # no checkpoints, logs, pickles
    adapter_config = json.loads(files["adapter_config.json"].path_or_fileobj)
    assert adapter_config == {"base_model_name_or_path": "mistralai/Mistral-7B-Instruct-v0.2", "r": 16}
    # the local run keeps pointing at the local base, which generate.py can load without the Hub
    assert json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tmp_path / "local-base")


def test_a_run_on_a_hub_base_publishes_it_unchanged(tmp_path):
    run = finished_run(tmp_path / "out", "mistralai/Mistral-7B-Instruct-v0.2", None)
    assert published_base(str(run)) == "mistralai/Mistral-7B-Instruct-v0.2"
    assert published_base(str(run), "someone/other-copy") == "someone/other-copy"  # given explicitly


def test_a_local_base_without_a_hub_id_is_refused(tmp_path):
    (tmp_path / "local-base").mkdir()
    run = finished_run(tmp_path / "out", str(tmp_path / "local-base"), None)
    with pytest.raises(PushError, match="name its Hub id with --base_model_hub_id"):
        published_base(str(run))


def test_a_relative_local_base_is_refused_from_any_folder(tmp_path):
    """run.json says the base was a folder where train_sft.py ran, though the relative path means nothing here."""
    run = finished_run(tmp_path / "out", "models/mistral", None, base_local=True)
    with pytest.raises(PushError, match="local folder models/mistral"):
        published_base(str(run))
    hub_named = finished_run(tmp_path / "out2", "someone/mistral-copy", None, base_local=False)
    assert published_base(str(hub_named)) == "someone/mistral-copy"


def test_the_retry_command_refuses_a_local_base_before_contacting_the_hub(tmp_path):
    (tmp_path / "local-base").mkdir()
    run = finished_run(tmp_path / "out", str(tmp_path / "local-base"), None)
    hub = RefusingHub(status=500)
    result = run_script([PYTHON, "-m", "cthulhu_sft.hub", str(run), "someone/repo"],
                        env={"HF_ENDPOINT": hub.url, "HF_TOKEN": "hf_x", "HF_HUB_OFFLINE": "0"})
    hub.close()
    assert result.returncode == 1
    assert "--base_model_hub_id" in result.stderr and "Traceback" not in result.stderr
    assert hub.requests == []
