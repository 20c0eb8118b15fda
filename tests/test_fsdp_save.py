"""Saving the adapter under FSDP (configs/fsdp_qlora.yaml), on the CPU.

accelerate 1.16 enables FSDP only on GPUs (its state never sets DistributedType.FSDP over a CPU process group), so
no FSDP run can happen here. What decides whether Trainer.save_model writes an adapter under FSDP is the FSDP
plugin's state dict type; these tests give the trainer build_trainer makes the plugin of configs/fsdp_qlora.yaml
and call the save path train_sft.py calls.
"""

import pytest
import torch
from conftest import REPO
from test_memory import parse_shipped_config

from cthulhu_sft.training import ADAPTER_FILE, build_trainer, check_adapter_written, save_adapter


@pytest.fixture
def fsdp_trainer(tiny_model_dir, tmp_path, monkeypatch):
    """A 4-bit LoRA trainer as train_sft.py builds it, with the FSDP plugin fsdp_qlora.yaml configures."""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import AutoTokenizer

    training_args, model_args = parse_shipped_config(
        "--model_name_or_path", str(tiny_model_dir), "--use_cpu", "true", "--report_to", "none",
        "--eval_strategy", "no", "--output_dir", str(tmp_path / "out"), "--load_in_8bit", "false",
        "--load_in_4bit", "true")
    rows = [{"input_ids": [1, 3, 4, 2], "labels": [-100, -100, 4, 2]}]
    trainer = build_trainer(model_args, training_args, rows, {}, AutoTokenizer.from_pretrained(tiny_model_dir))
    shipped = load_config_from_file(str(REPO / "configs" / "fsdp_qlora.yaml")).fsdp_config
    plugin = FullyShardedDataParallelPlugin(fsdp_version=shipped["fsdp_version"],
                                            state_dict_type=shipped["fsdp_state_dict_type"])
    monkeypatch.setattr(trainer.accelerator.state, "fsdp_plugin", plugin, raising=False)
    monkeypatch.setattr(trainer, "is_fsdp_enabled", True)
    return trainer


def test_the_shipped_fsdp_state_dict_type_alone_saves_no_adapter_and_is_refused(fsdp_trainer, tmp_path):
    """The failure save_adapter exists for: Trainer.save_model under SHARDED_STATE_DICT writes no adapter, and a
    folder without one is refused (exit 1, naming the file), so the run is not recorded as finished."""
    fsdp_trainer.save_model(str(tmp_path / "plain"))
    assert not (tmp_path / "plain" / ADAPTER_FILE).exists()
    with pytest.raises(SystemExit) as refused:
        check_adapter_written(str(tmp_path / "plain"))
    assert ADAPTER_FILE in str(refused.value) and "not recorded as finished" in str(refused.value)


def test_save_adapter_under_fsdp_writes_the_whole_adapter(fsdp_trainer, tmp_path):
    from safetensors.torch import load_file

    save_adapter(fsdp_trainer, str(tmp_path / "saved"))
    assert "FULL_STATE_DICT" in str(fsdp_trainer.accelerator.state.fsdp_plugin.state_dict_type)
    saved = load_file(tmp_path / "saved" / ADAPTER_FILE)
    lora = {name: param for name, param in fsdp_trainer.model.named_parameters() if param.requires_grad}
    assert len(saved) == len(lora) > 0
    for name, param in lora.items():
        key = name.replace(".default", "")  # PEFT saves without the adapter's name
        assert torch.equal(saved[key], param.detach()), name
