"""The peak-memory estimate: hand-checked counts, the real libraries' numbers on tiny models, and the warning."""

import pytest
import torch

from cthulhu_sft.memory import (
    ALL_LINEAR,
    GiB,
    ModelShape,
    Precision,
    base_weight_bytes,
    check_fits,
    estimate_for_args,
    format_estimate,
    layer_activation_bytes_per_token,
    lora_parameter_count,
    with_settings,
)

MISTRAL_7B = ModelShape(
    hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
    num_key_value_heads=8, head_dim=128, vocab_size=32000,
)


def parse_shipped_config(*args):
    """sft_config.yaml through the real parser; bf16 is parsed as false (no GPU here)."""
    from cthulhu_sft.config import parse_args

    _, training_args, model_args = parse_args(["--config", "sft_config.yaml", "--bf16", "false", *args])
    return training_args, model_args


@pytest.fixture(scope="module")
def shipped_estimate(tmp_path_factory):
    """The estimate for Mistral-7B (its config.json alone) at sft_config.yaml's settings, with `changes`."""
    import yaml
    from transformers import MistralConfig

    folder = tmp_path_factory.mktemp("mistral-7b-config")
    MistralConfig(
        vocab_size=32000, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, sliding_window=None, tie_word_embeddings=False,
    ).save_pretrained(folder)
    training_args, model_args = parse_shipped_config("--model_name_or_path", str(folder))
    estimate = estimate_for_args(training_args, model_args, longest_example=training_args.max_length)
    shipped_bf16 = yaml.safe_load(open("sft_config.yaml", encoding="utf-8"))["bf16"]  # as on the A100

    def changed(**changes):
        return with_settings(estimate, bf16=shipped_bf16, **changes)

    return changed


def small_mistral_config(layers=2, hidden=64, intermediate=160, heads=4, kv_heads=2, vocab=1000):
    from transformers import MistralConfig

    return MistralConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, sliding_window=None, tie_word_embeddings=False,
    )


def test_lora_parameter_count_of_mistral_7b_by_hand():
    r = 16
    q_and_o = 2 * r * (4096 + 4096)
    k_and_v = 2 * r * (4096 + 8 * 128)
    gate_up_down = 3 * r * (4096 + 14336)
    assert lora_parameter_count(MISTRAL_7B, r, "all-linear") == 32 * (q_and_o + k_and_v + gate_up_down) == 41_943_040
    assert lora_parameter_count(MISTRAL_7B, r, ["q_proj", "v_proj"]) == 32 * r * (8192 + 5120)


def test_base_weights_of_mistral_7b_by_hand():
    linear = 32 * (2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336)
    unquantized = 2 * 32000 * 4096 + 65 * 4096  # embed_tokens, lm_head, 65 norms
    assert linear + unquantized == 7_241_732_096  # Mistral-7B-v0.2's parameter count
    rows = 32 * (4096 + 1024 + 1024 + 4096 + 2 * 14336 + 4096)
    # k-bit: embeddings, lm_head and norms in bfloat16 (not upcast)
    assert base_weight_bytes(MISTRAL_7B, "8bit", 2) == linear + 4 * rows + 2 * unquantized
    assert base_weight_bytes(MISTRAL_7B, "4bit", 2) == linear // 2 + linear // 64 * 4 + 2 * unquantized
    assert base_weight_bytes(MISTRAL_7B, "none", 2) == 2 * (linear + unquantized)


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"], ["down_proj", "o_proj", "k_proj"], None])
def test_lora_parameter_count_matches_peft(targets):
    from peft import LoraConfig, get_peft_model
    from transformers import MistralForCausalLM

    config = small_mistral_config()
    model = get_peft_model(MistralForCausalLM(config), LoraConfig(r=8, target_modules=targets))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_parameter_count(ModelShape.from_config(config), 8, targets) == trainable


@pytest.mark.parametrize("bits", ["8bit", "4bit"])
def test_weights_and_lora_bytes_match_the_trainer_train_sft_builds(tiny_model_dir, bits):
    """build_trainer's model: bitsandbytes' tensors (weights, scales), the rest in dtype (bfloat16), and LoRA
    weights in float32 although SFTTrainer casts them to bf16."""
    from transformers import AutoTokenizer

    from cthulhu_sft.training import build_trainer

    flags = ["--load_in_8bit", "true"] if bits == "8bit" else ["--load_in_8bit", "false", "--load_in_4bit", "true"]
    training_args, model_args = parse_shipped_config(
        "--model_name_or_path", str(tiny_model_dir), "--use_cpu", "true", "--dtype", "bfloat16", "--report_to", "none",
        "--eval_strategy", "no", "--output_dir", str(tiny_model_dir / "unused"), *flags)
    estimate = estimate_for_args(training_args, model_args, longest_example=4)
    rows = [{"input_ids": [1, 3, 4, 2], "labels": [-100, -100, 4, 2]}]
    trainer = build_trainer(model_args, training_args, rows, {}, AutoTokenizer.from_pretrained(tiny_model_dir))
    frozen = trainable = 0
    for param in trainer.model.parameters():
        if param.requires_grad:
            assert param.dtype == torch.float32
            trainable += param.numel() * 4
            continue
        frozen += param.numel() * param.element_size()
        if getattr(param, "SCB", None) is not None:
            frozen += param.SCB.numel() * param.SCB.element_size()
        if getattr(param, "quant_state", None) is not None:
            frozen += param.quant_state.absmax.numel() * param.quant_state.absmax.element_size()
    assert estimate.base_weights == frozen
    assert estimate.lora_parameters == estimate.gradients == trainable
    assert estimate.optimizer_states == 2 * trainable  # AdamW's exp_avg and exp_avg_sq


def saved_activation_bytes(model, input_ids, saved: dict | None = None) -> int:
    """Bytes of the tensors autograd saves for the backward during one forward, parameters left out (`saved`, when
    given, receives their storages' sizes by address)."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {} if saved is None else saved

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(input_ids=input_ids, use_cache=False)
    return sum(saved.values())


@pytest.mark.parametrize("dtype, checkpointing", [
    (torch.float32, False), (torch.float32, True), (torch.bfloat16, False), (torch.bfloat16, True)])
def test_per_layer_activations_match_what_autograd_saves(dtype, checkpointing):
    """The per-layer formula against a real LoRA forward on the CPU, in float32 (r = p = c = m = 4 bytes) and in
    the shipped bf16 (r = p = c = 2; the CPU's dropout mask is bf16 too, and the LoRA weights are left in bf16 so
    that nothing else is cast). In bf16, Mistral's RMSNorm still keeps a float32 copy of its input (4 bytes per
    element whatever r is), which a formula counting r*h per norm would miss.

    Two models that differ only in depth give the bytes of one layer; the formula must match them exactly.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import MistralForCausalLM

    tokens, rank = 96, 8
    measured = {}
    for layers in (2, 4):
        torch.manual_seed(0)
        config = small_mistral_config(layers=layers)
        config._attn_implementation = "sdpa"
        model = MistralForCausalLM(config).to(dtype)
        if checkpointing:
            model.activation_checkpointing_enable({"use_reentrant": False})
        model = get_peft_model(model, LoraConfig(r=rank, target_modules="all-linear", lora_dropout=0.1),
                               autocast_adapter_dtype=False)
        assert {p.dtype for p in model.parameters()} == {dtype}
        if checkpointing:
            model.enable_input_require_grads()
        model.train()
        measured[layers] = saved_activation_bytes(model, torch.randint(3, 1000, (1, tokens)))
    per_layer = (measured[4] - measured[2]) / 2 / tokens

    shape = ModelShape.from_config(config)
    size = dtype.itemsize
    if checkpointing:
        assert per_layer == size * shape.hidden_size
        return
    prec = Precision(residual=size, projection=size, compute=size, mask=size, linear_keeps_input=False)
    expected = layer_activation_bytes_per_token(
        shape, prec, rank, ALL_LINEAR, lora_dropout=True, row_length=tokens, masked=False)
    assert per_layer == expected


def test_estimate_grows_with_the_batch_the_length_and_the_rank(shipped_estimate):
    base = shipped_estimate()
    for changes in ({"per_device_train_batch_size": 16}, {"max_length": 2048}, {"lora_r": 64},
                    {"activation_checkpointing": False}, {"load_in_8bit": False}):
        assert with_settings(base, **changes).total > base.total, changes
    for changes in ({"per_device_train_batch_size": 4}, {"max_length": 512}, {"lora_r": 8},
                    {"load_in_4bit": True, "load_in_8bit": False}):
        assert with_settings(base, **changes).total < base.total, changes
    batches = [with_settings(base, per_device_train_batch_size=b).peak_allocated for b in (1, 2, 4, 8)]
    assert batches == sorted(batches) and len(set(batches)) == 4


def test_default_config_on_an_a100_and_without_checkpointing(shipped_estimate):
    """sft_config.yaml's defaults fit an 80 GB A100 easily; the same batch without checkpointing does not."""
    default = shipped_estimate()
    assert 7.5e9 < default.base_weights < 7.6e9  # 7.0e9 int8 weights + 0.52e9 bf16 embeddings and lm_head
    assert 12 * GiB < default.total < 18 * GiB
    assert check_fits(default, 80 * GiB) is None
    assert with_settings(default, activation_checkpointing=False).total > 80 * GiB
    # non-reentrant checkpointing would leave every layer's 8-bit linear inputs: 53,248 bytes per token per layer
    kept = with_settings(default, use_reentrant=False).activations - default.activations
    assert kept == 32 * (2 * 2 * 4096 + 2 * 4096 + 2 * 14336) * 8 * 1024


def test_warning_names_the_settings_that_fit(shipped_estimate):
    estimate = shipped_estimate(activation_checkpointing=False)
    warning = check_fits(estimate, 80 * GiB)
    assert warning.startswith("warning: the estimated peak GPU memory")
    assert "exceeds this device's 80.0 GiB" in warning
    assert "--activation_checkpointing true" in warning
    assert "--max_length" in warning
    four_bit_fits = check_fits(with_settings(estimate, load_in_4bit=True, load_in_8bit=False), 80 * GiB) is None
    assert ("--load_in_4bit true --load_in_8bit false" in warning) == four_bit_fits
    batch = int(warning.split("--per_device_train_batch_size ")[1].split()[0])  # the largest batch that fits
    assert 1 <= batch < 8
    assert check_fits(with_settings(estimate, per_device_train_batch_size=batch), 80 * GiB) is None
    assert check_fits(with_settings(estimate, per_device_train_batch_size=batch + 1), 80 * GiB) is not None


def test_warning_when_no_single_change_fits(shipped_estimate):
    estimate = shipped_estimate(activation_checkpointing=False, per_device_train_batch_size=64, max_length=8192)
    warning = check_fits(estimate, 16 * GiB)
    assert "No single change" in warning and "configs/fsdp_qlora.yaml" in warning


def test_fsdp_splits_weights_and_optimizer_over_the_processes(shipped_estimate):
    """configs/fsdp_qlora.yaml: 4-bit base without the float32 upcast, LoRA in the base's bfloat16 (one dtype per
    flattened unit), sharded; one root unit and two layers whole."""
    qlora = shipped_estimate(load_in_4bit=True, load_in_8bit=False, dtype="bfloat16")
    sharded = with_settings(qlora, fsdp_processes=4)
    linear_per_layer = 2 * 4096 * 4096 + 2 * 4096 * 1024 + 3 * 4096 * 14336
    layer = linear_per_layer // 2 + linear_per_layer // 64 * 4 + 2 * 4096 * 2  # NF4 + absmax + 2 bf16 norms
    root = 2 * 32000 * 4096 * 2 + 4096 * 2  # embeddings, lm_head, final norm in bfloat16
    whole = 32 * layer + root
    assert abs(sharded.base_weights - (whole / 4 + root + 2 * layer)) <= 8
    for part in ("lora_parameters", "gradients", "optimizer_states"):  # bfloat16 LoRA under FSDP, not float32
        assert abs(getattr(sharded, part) - getattr(qlora, part) / 4 / 2) <= 1, part
    # the residual stream is bfloat16 with or without FSDP: the same activations
    assert sharded.activations_with_checkpointing == qlora.activations_with_checkpointing
    assert sharded.total < with_settings(qlora, fsdp_processes=2).total < qlora.total
    assert "4-bit base, sharded over 4 processes (FSDP)" in format_estimate(sharded)
    too_big = with_settings(sharded, activation_checkpointing=False, per_device_train_batch_size=64, max_length=8192)
    assert "or use more GPUs" in check_fits(too_big, 16 * GiB)


def test_estimate_from_the_shipped_config(tiny_model_dir):
    """The real parser's SFTConfig and ModelConfig (sft_config.yaml) feed the estimate; config.json is all it reads."""
    training_args, model_args = parse_shipped_config("--model_name_or_path", str(tiny_model_dir))
    estimate = estimate_for_args(training_args, model_args, longest_example=300)
    assert estimate.settings["max_length"] == 300  # padded or padding-free rows are no longer than the longest example
    assert estimate.settings["load_in_8bit"] and estimate.settings["activation_checkpointing"]
    assert estimate.settings["use_reentrant"]  # sft_config.yaml's activation_checkpointing_kwargs
    text = format_estimate(estimate, device_bytes=80 * GiB, device_name="NVIDIA A100-SXM4-80GB")
    assert "8-bit base, LoRA r=16, 8 x 300 tokens per micro-batch" in text
    assert "device memory (NVIDIA A100-SXM4-80GB)" in text and "total" in text
    training_args, model_args = parse_shipped_config("--model_name_or_path", str(tiny_model_dir), "--packing", "true")
    packed = estimate_for_args(training_args, model_args, longest_example=300)
    assert packed.settings["max_length"] == training_args.max_length  # packed rows fill up to max_length
