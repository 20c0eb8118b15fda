"""bf16 compute on the k-bit bases, and what activation checkpointing frees, through the trainer train_sft.py builds.

The CPU runs the same bitsandbytes paths as an A100 in these respects: an 8-bit linear returns its input's dtype
and keeps its input on its autograd context (`ctx.A` on the CPU, `ctx.tensors` on CUDA), out of reach of the
saved-tensor hooks that non-reentrant checkpointing works through.
"""

import weakref

import pytest
import torch
from test_memory import parse_shipped_config, saved_activation_bytes, small_mistral_config

from cthulhu_sft.memory import ModelShape, Precision, checkpointed_layer_bytes_per_token

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
BASES = {"8bit": ["--load_in_8bit", "true"], "4bit": ["--load_in_8bit", "false", "--load_in_4bit", "true"]}


def quantized_class(base: str):
    import bitsandbytes as bnb

    return bnb.nn.Linear8bitLt if base == "8bit" else bnb.nn.Linear4bit


class LinearWatch:
    """Forward hooks on a model's quantized linears: the dtypes that reach layer 0's, and weak references to every
    input, counted as still alive when the final norm runs (every layer's forward done, no backward yet)."""

    def __init__(self, model, linear_class):
        self.layer0, self.inputs, self.alive_at_final_norm = {}, [], []
        for name, module in model.named_modules():
            if isinstance(module, linear_class):
                module.register_forward_hook(self.linear_hook(name))
            if name.endswith("model.norm"):
                module.register_forward_hook(self.final_norm_hook)

    def linear_hook(self, name):
        def hook(module, args, output):
            self.inputs.append(weakref.ref(args[0]))
            if ".layers.0." in name:
                projection = next(part for part in PROJECTIONS if f".{part}" in name)
                self.layer0.setdefault(projection, (args[0].dtype, output.dtype))
        return hook

    def final_norm_hook(self, module, args, output):
        self.alive_at_final_norm.append([ref() for ref in self.inputs if ref() is not None])
        self.inputs = []


def trained_one_step(tiny_model_dir, tmp_path, *flags):
    """The trainer build_trainer makes from sft_config.yaml (dtype bfloat16, its checkpointing), one step trained."""
    from transformers import AutoTokenizer

    from cthulhu_sft.training import build_trainer

    training_args, model_args = parse_shipped_config(
        "--model_name_or_path", str(tiny_model_dir), "--use_cpu", "true", "--report_to", "none",
        "--eval_strategy", "no", "--save_strategy", "no", "--max_steps", "1", "--per_device_train_batch_size", "2",
        "--gradient_accumulation_steps", "1", "--output_dir", str(tmp_path / "out"), *flags)
    assert model_args.dtype == "bfloat16"  # the shipped compute dtype
    rows = [{"input_ids": [1, 3, 4, 5, 6, 2], "labels": [-100, -100, 4, 5, 6, 2]},
            {"input_ids": [1, 7, 8, 9, 2], "labels": [-100, -100, 8, 9, 2]}]
    trainer = build_trainer(model_args, training_args, rows, {}, AutoTokenizer.from_pretrained(tiny_model_dir))
    base = "8bit" if model_args.load_in_8bit else "4bit"
    watch = LinearWatch(trainer.model, quantized_class(base))
    trainer.train()
    return trainer, watch


@pytest.mark.parametrize("base", ["8bit", "4bit"])
def test_quantized_linears_compute_in_bf16_under_the_shipped_config(tiny_model_dir, tmp_path, base):
    """No float32 residual stream: layer 0's quantized linears get and return bf16, and every unquantized base
    weight (embeddings, norms, lm_head) stays in bf16; only the LoRA weights are float32."""
    trainer, watch = trained_one_step(tiny_model_dir, tmp_path, *BASES[base])
    assert watch.layer0 == {name: (torch.bfloat16, torch.bfloat16) for name in PROJECTIONS}
    for name, param in trainer.model.named_parameters():
        if param.requires_grad:
            assert param.dtype == torch.float32, name
        elif param.dtype.is_floating_point:
            assert param.dtype == torch.bfloat16, name


@pytest.mark.parametrize("reentrant, freed", [(True, True), (False, False)])
def test_shipped_checkpointing_frees_the_8bit_linears_inputs(tiny_model_dir, tmp_path, reentrant, freed):
    """sft_config.yaml's reentrant checkpointing leaves no 8-bit linear input alive between forward and backward;
    the non-reentrant kind keeps every one (the control: the check can see a kept input)."""
    flags = [] if reentrant else ["--activation_checkpointing_kwargs", '{"use_reentrant": false}']
    trainer, watch = trained_one_step(tiny_model_dir, tmp_path, *BASES["8bit"], *flags)
    assert trainer.args.activation_checkpointing
    assert trainer.args.activation_checkpointing_kwargs == {"use_reentrant": reentrant}
    [alive] = watch.alive_at_final_norm  # one forward before the backward
    if freed:
        assert alive == []
    else:  # per layer: the two norms' outputs (q, k, v and gate, up share them), o_proj's and down_proj's inputs
        assert len({tensor.untyped_storage().data_ptr() for tensor in alive}) == 4 * 2


def kept_bytes(model, input_ids) -> int:
    """Bytes autograd's saved tensors hold after one forward, plus the 8-bit linears' inputs still alive then."""
    import bitsandbytes as bnb

    watch = LinearWatch(model, bnb.nn.Linear8bitLt)
    storages = {}
    saved_activation_bytes(model, input_ids, storages)
    [alive] = watch.alive_at_final_norm
    storages |= {tensor.untyped_storage().data_ptr(): tensor.untyped_storage().nbytes() for tensor in alive}
    return sum(storages.values())


@pytest.mark.parametrize("reentrant", [True, False])
def test_memory_estimate_counts_what_a_checkpointed_8bit_layer_keeps(tmp_path, reentrant):
    """Two 8-bit bf16 models that differ only in depth give the bytes one checkpointed layer keeps per token; the
    estimate's formula (memory.checkpointed_layer_bytes_per_token) must match them exactly."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, MistralForCausalLM

    tokens, measured = 96, {}
    for layers in (2, 4):
        torch.manual_seed(0)
        config = small_mistral_config(layers=layers)
        MistralForCausalLM(config).save_pretrained(tmp_path / str(layers))
        model = AutoModelForCausalLM.from_pretrained(
            tmp_path / str(layers), dtype=torch.bfloat16, attn_implementation="sdpa", device_map={"": "cpu"},
            quantization_config=BitsAndBytesConfig(load_in_8bit=True))
        model.activation_checkpointing_enable({"use_reentrant": reentrant})
        model = get_peft_model(model, LoraConfig(r=8, target_modules="all-linear", lora_dropout=0.1))
        model.train()
        measured[layers] = kept_bytes(model, torch.randint(3, 1000, (1, tokens)))
    per_layer = (measured[4] - measured[2]) / 2 / tokens
    bf16 = Precision(residual=2, projection=2, compute=2, mask=1, linear_keeps_input=True)
    assert per_layer == checkpointed_layer_bytes_per_token(ModelShape.from_config(config), bf16, reentrant)


@pytest.mark.parametrize("base", ["8bit", "bf16"])
def test_every_base_loads_onto_this_process_device(tiny_model_dir, tmp_path, monkeypatch, base):
    """A bf16 base too is placed on the process's device while it loads (device_map), not through CPU memory.
    (A single-device map leaves no hf_device_map on the model, so transformers' loader is watched instead.)"""
    from accelerate import PartialState
    from transformers import AutoModelForCausalLM

    from cthulhu_sft.training import load_base_model

    asked = []
    original = AutoModelForCausalLM.from_pretrained.__func__

    def watched(cls, *args, **kwargs):
        asked.append(kwargs.get("device_map"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", classmethod(watched))
    flags = BASES["8bit"] if base == "8bit" else ["--load_in_8bit", "false"]
    training_args, model_args = parse_shipped_config(
        "--model_name_or_path", str(tiny_model_dir), "--use_cpu", "true", "--output_dir", str(tmp_path), *flags)
    model = load_base_model(model_args, training_args)
    assert asked == [{"": PartialState().device}]
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16


def test_a_4bit_base_keeps_its_gradients_after_an_evaluation(tiny_model_dir, tmp_path):
    """bitsandbytes (0.50) repacks a 4-bit linear's weights for its CPU inference kernel on the first eval-mode
    forward without gradients (an evaluation, the knowledge check, gpu_check's exactness check) and from then on
    multiplies through that kernel, which has no backward: training after an evaluation would lose the gradients
    through every 4-bit linear, silently (a warning from torch). Only on CPUs with AVX512-BF16 (this check cannot
    fail elsewhere); the gradients must be the same before and after an evaluation."""
    from transformers import AutoTokenizer

    from cthulhu_sft.training import build_trainer

    training_args, model_args = parse_shipped_config(
        "--model_name_or_path", str(tiny_model_dir), "--use_cpu", "true", "--report_to", "none",
        "--eval_strategy", "no", "--output_dir", str(tmp_path / "out"), *BASES["4bit"])
    rows = [{"input_ids": [1, 3, 4, 5, 6, 2], "labels": [-100, -100, 4, 5, 6, 2]}]
    trainer = build_trainer(model_args, training_args, rows, {}, AutoTokenizer.from_pretrained(tiny_model_dir))
    model, input_ids = trainer.model, torch.tensor([rows[0]["input_ids"]])

    def lora_gradients():
        model.train()
        model.zero_grad()
        torch.manual_seed(0)  # the same dropout masks
        model(input_ids=input_ids, labels=input_ids).loss.backward()
        return {name: p.grad.clone() for name, p in model.named_parameters() if "lora_B" in name}

    before = lora_gradients()
    model.eval()
    with torch.no_grad():
        model(input_ids=input_ids)
    after = lora_gradients()
    assert before.keys() == after.keys() and len(before) == 14
    for name in before:
        assert torch.allclose(before[name], after[name]), name
