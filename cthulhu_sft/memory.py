"""Will it fit? Peak GPU memory of a LoRA training run, estimated from the model's config.json alone.

`estimate_for_args` reads the config (no weights) and returns a `MemoryEstimate`, a breakdown in bytes;
`format_estimate` prints it, `check_fits` says what to change when it exceeds the device. The numbers follow what
cthulhu_sft/training.py keeps in memory, read from the sources of the versions in requirements.txt
(transformers 5, TRL 1.16, PEFT 0.21, bitsandbytes 0.50). Not modelled: nested 4-bit quantization and 8-bit
optimizers (each would need a little less) and eager attention (far more: it keeps the attention probabilities).

Weights
    8-bit   each linear weight 1 byte + a float32 scale per output row.
    4-bit   NF4: half a byte + a float32 absmax per 64 weights.
    none    every weight in `dtype`.
    bitsandbytes leaves embed_tokens, lm_head and the norms unquantized; they stay in `dtype`
    (training.load_base_model does not run PEFT's float32 upcast): 2 x 32000 x 4096 x 2 bytes = 0.52 GB for
    Mistral-7B in bfloat16.
LoRA
    r x (in + out) weights per targeted linear; training.keep_adapter_in_float32 keeps them in float32, so their
    gradients and AdamW's two states are float32 too: 16 bytes per LoRA weight. Under FSDP they stay in `dtype`
    (a flattened unit holds one dtype), 4 x 2 bytes. (The bf16 copies autocast makes
    of them for the matmuls, 84 MB at r=16 when every layer keeps its own, are left out.)
Activations, per token of a micro-batch of `per_device_train_batch_size` rows of `max_length` tokens (the worst
case: a batch padded, or a row packed, to max_length), summed over what autograd saves for the backward:
    r = bytes of the residual stream (`dtype`: the embeddings and norms are not upcast)
    p = bytes of a base projection's output (r on a k-bit base: bitsandbytes' 8-bit and 4-bit linears return
        their input's dtype, and autocast does not reach them; else c)
    c = compute dtype bytes (2 under bf16 autocast), m = dropout mask bytes (bool: 1 on CUDA)
    LoRA on an input of width d: c*d (lora_A's input) + m*d (dropout mask) + c*rank (lora_B's input)
    norm:       4*h + 4: Mistral's RMSNorm casts its input to float32 and autograd keeps that copy (4 bytes per
                element whatever r is) and the per-token rsqrt
    attention:  norm + q, k, v LoRA + c*(q + 2*kv) (the kernel's q, k, v) + c*q (its output)
                + 4*heads (logsumexp) + o LoRA  [+ r*h (norm output) + c*q (o's input) an 8-bit linear keeps]
                sdpa (the default) gets a mask for padded or packed rows: then transformers repeats k and v to
                q's width, and the float mask SDPA builds costs c*row; flash and flex attention take no mask.
    MLP:        norm + gate, up LoRA + 3*p*i (SiLU input, its output, up's output) + down LoRA
                [+ r*h + p*i that an 8-bit linear keeps]
    With activation checkpointing a layer keeps only its input, r*h, and one layer at a time is recomputed during
    the backward, except that non-reentrant checkpointing (use_reentrant: false) cannot free what an 8-bit linear
    keeps (bitsandbytes holds it on its autograd context, out of reach of the saved-tensor hooks that checkpointing
    works through): 2*r*h + c*q + p*i more per layer. Reentrant checkpointing (sft_config.yaml) runs the forward
    without autograd, so the 8-bit linears keep nothing. tests/test_memory.py checks the per-layer sum against the tensors
    autograd saves on the CPU, tests/test_precision.py what the 8-bit linears keep.
    Loss: TRL's SFTTrainer never builds the (tokens x 32000) logits; its fused LM head projects at most 4096
    tokens at a time (a c x 4096 x vocab tile, 262 MB, plus a compute-dtype copy of a float32 lm_head) and keeps
    the final hidden states (r*h per token) for the backward.
Sharded (FSDP, configs/fsdp_qlora.yaml; `fsdp_processes` > 1)
    FULL_SHARD splits the weights, LoRA weights, gradients and AdamW states over the processes; a process holds
    whole, at most, the root unit (embeddings, lm_head, final norm: FSDP keeps it gathered between forward and
    backward) and two decoder layers (the one computed and the one prefetched).
Transient peaks and overhead
    The backward of a layer holds gradients of its widest tensors (3*p*i + 4*r*h per token) and, on a k-bit
    base, one dequantized weight. The CUDA context (~0.5 GiB) and allocator slack (5 %) are not in
    torch.cuda.max_memory_allocated; `peak_allocated` is comparable to it, `total` to the device's memory.
"""

from dataclasses import dataclass, fields

GiB = 1024**3
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PEFT_DEFAULT_TARGETS = ("q_proj", "v_proj")  # PEFT's targets for Mistral when lora_target_modules is not set
CUDA_CONTEXT_BYTES = GiB // 2
ALLOCATOR_SLACK = 0.05
LOSS_TOKEN_CHUNK = 4096  # trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Mistral-style decoder that the estimate needs (from its config.json)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        return cls(**{field.name: getattr(config, field.name) for field in fields(cls)})

    def linears(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each linear layer of one decoder layer."""
        h, i = self.hidden_size, self.intermediate_size
        q, kv = self.num_attention_heads * self.head_dim, self.num_key_value_heads * self.head_dim
        return {
            "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
            "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h),
        }

    def layer_linear_params(self) -> int:
        return sum(fan_in * fan_out for fan_in, fan_out in self.linears().values())


def lora_targets(target_modules) -> tuple[str, ...]:
    """The decoder-layer linears that ModelConfig's lora_target_modules names."""
    if target_modules in ("all-linear", ["all-linear"]):
        return ALL_LINEAR
    return tuple(name for name in ALL_LINEAR if name in (target_modules or PEFT_DEFAULT_TARGETS))


def lora_parameter_count(shape: ModelShape, lora_r: int, target_modules) -> int:
    """r x (in + out) per targeted linear per layer; for Mistral-7B at r=16, all-linear: 41,943,040."""
    linears = shape.linears()
    return shape.num_hidden_layers * sum(lora_r * sum(linears[name]) for name in lora_targets(target_modules))


def layer_weight_bytes(shape: ModelShape, quantization: str, unquantized_bytes: int) -> int:
    """One decoder layer's weights (quantization: "8bit", "4bit" or "none"); its two norms take
    `unquantized_bytes` per weight, as do its linears when not quantized."""
    linear = shape.layer_linear_params()
    norms = 2 * shape.hidden_size * unquantized_bytes
    if quantization == "8bit":
        return linear + 4 * sum(fan_out for _, fan_out in shape.linears().values()) + norms
    if quantization == "4bit":
        return linear // 2 + linear // 64 * 4 + norms
    return linear * unquantized_bytes + norms


def root_weight_bytes(shape: ModelShape, unquantized_bytes: int) -> int:
    """embed_tokens, lm_head and the final norm: what bitsandbytes leaves unquantized outside the layers."""
    return (2 * shape.vocab_size + 1) * shape.hidden_size * unquantized_bytes


def base_weight_bytes(shape: ModelShape, quantization: str, unquantized_bytes: int) -> int:
    return shape.num_hidden_layers * layer_weight_bytes(shape, quantization, unquantized_bytes) + \
        root_weight_bytes(shape, unquantized_bytes)


@dataclass(frozen=True)
class Precision:
    """Bytes per element of the tensors the activation formula counts (see the module docstring)."""

    residual: int  # r
    projection: int  # p
    compute: int  # c
    mask: int  # m
    linear_keeps_input: bool  # an 8-bit linear keeps its input for the backward


def layer_activation_bytes_per_token(
    shape: ModelShape, prec: Precision, lora_r: int, targets: tuple[str, ...], lora_dropout: bool,
    row_length: int, masked: bool,
) -> int:
    """Bytes autograd saves for the backward of one decoder layer, per token (formula in the module docstring).

    targets: the linears LoRA adapts; row_length: tokens of one attention row (max_length padded;
    the whole micro-batch packed or padding-free); masked: whether sdpa gets a mask.
    """
    h, i = shape.hidden_size, shape.intermediate_size
    q = shape.num_attention_heads * shape.head_dim
    kv = shape.num_key_value_heads * shape.head_dim
    r, p, c, m = prec.residual, prec.projection, prec.compute, prec.mask
    keeps = prec.linear_keeps_input

    def lora(name, width):
        if name not in targets:
            return 0
        return c * width + (m * width if lora_dropout else 0) + c * lora_r

    norm = 4 * h + 4  # RMSNorm keeps the float32 copy of its input (whatever r is) and the per-token rsqrt
    attention = (
        norm + (r * h if keeps else 0)
        + lora("q_proj", h) + lora("k_proj", h) + lora("v_proj", h)
        + c * q + 2 * c * (q if masked else kv)  # q, k, v as the kernel keeps them
        + c * q + 4 * shape.num_attention_heads + (c * row_length if masked else 0)  # output, logsumexp, mask
        + (c * q if keeps else 0)
        + lora("o_proj", q)
    )
    mlp = (
        norm + (r * h if keeps else 0)
        + lora("gate_proj", h) + lora("up_proj", h)
        + 3 * p * i + (p * i if keeps else 0)
        + lora("down_proj", i)
    )
    return attention + mlp


def checkpointed_layer_bytes_per_token(shape: ModelShape, prec: Precision, reentrant: bool) -> int:
    """Bytes a checkpointed decoder layer keeps per token until its backward: its input, plus, under
    non-reentrant checkpointing, the inputs its 8-bit linears hold on their autograd contexts (the attention and
    MLP norms' outputs, o_proj's and down_proj's inputs)."""
    h, i = shape.hidden_size, shape.intermediate_size
    q = shape.num_attention_heads * shape.head_dim
    kept = prec.residual * h
    if prec.linear_keeps_input and not reentrant:
        kept += 2 * prec.residual * h + prec.compute * q + prec.projection * i
    return kept


@dataclass
class MemoryEstimate:
    """Peak device memory of a training step, in bytes, by part, and the settings it was estimated for."""

    base_weights: int
    lora_parameters: int
    gradients: int
    optimizer_states: int
    activations: int  # saved activations plus the largest transient of the step, for the chosen checkpointing
    activations_without_checkpointing: int
    activations_with_checkpointing: int
    overhead: int  # CUDA context and allocator slack: outside torch.cuda.max_memory_allocated
    lora_parameter_count: int
    settings: dict
    shape: ModelShape

    @property
    def peak_allocated(self) -> int:
        """Comparable with torch.cuda.max_memory_allocated()."""
        return self.base_weights + self.lora_parameters + self.gradients + self.optimizer_states + self.activations

    @property
    def total(self) -> int:
        """What the device must hold."""
        return self.peak_allocated + self.overhead


def estimate_memory(
    shape: ModelShape,
    *,
    load_in_8bit: bool,
    load_in_4bit: bool,
    dtype: str,
    bf16: bool,
    lora_r: int,
    lora_target_modules,
    lora_dropout: float,
    max_length: int,
    per_device_train_batch_size: int,
    activation_checkpointing: bool,
    use_reentrant: bool,
    packing: bool,
    padding_free: bool,
    attn_implementation: str | None,
    fsdp_processes: int,
) -> MemoryEstimate:
    """The estimate for one training process (one GPU); the settings are named as in SFTConfig and ModelConfig
    (use_reentrant: activation_checkpointing_kwargs'), and fsdp_processes is the number of processes FSDP shards
    the model over (1: not sharded)."""
    settings = {key: value for key, value in locals().items() if key != "shape"}
    quantization = "4bit" if load_in_4bit else "8bit" if load_in_8bit else "none"
    sharded = fsdp_processes > 1
    dtype_bytes = 4 if dtype == "float32" else 2  # "auto": Mistral's checkpoint is bfloat16
    compute = 2 if bf16 else dtype_bytes
    unquantized = dtype_bytes  # embeddings, lm_head and norms, hence the residual stream
    prec = Precision(residual=unquantized, projection=unquantized if quantization != "none" else compute,
                     compute=compute, mask=1, linear_keeps_input=quantization == "8bit")
    h, layers = shape.hidden_size, shape.num_hidden_layers
    tokens = per_device_train_batch_size * max_length

    # Static: the base's weights; LoRA weights (float32 unless sharded), their gradients and AdamW's two states
    layer = layer_weight_bytes(shape, quantization, unquantized)
    base = base_weight_bytes(shape, quantization, unquantized)
    lora_count = lora_parameter_count(shape, lora_r, lora_target_modules)
    lora_bytes = (dtype_bytes if sharded else 4) * lora_count / fsdp_processes
    if sharded:  # each process's shard, plus the root unit and two layers gathered whole
        base = base / fsdp_processes + root_weight_bytes(shape, unquantized) + 2 * layer
    static = base + 4 * lora_bytes

    # Activations kept for the backward
    row_length = tokens if packing or padding_free else max_length  # TRL flattens such a micro-batch into one row
    masked = attn_implementation in (None, "sdpa")  # transformers' default is sdpa
    per_layer = tokens * layer_activation_bytes_per_token(
        shape, prec, lora_r, lora_targets(lora_target_modules), lora_dropout > 0, row_length, masked)
    final = (4 * h + unquantized * h + 24) * tokens  # final norm's float32 input copy, the hidden states the loss keeps
    without_checkpointing = layers * per_layer + final
    with_checkpointing = layers * checkpointed_layer_bytes_per_token(shape, prec, use_reentrant) * tokens + final

    # Transients: the fused LM head's tile (at the start of the backward) or a layer's backward
    loss_head = compute * min(tokens, LOSS_TOKEN_CHUNK) * (shape.vocab_size + h) + 4 * tokens * h
    if unquantized != compute:
        loss_head += compute * shape.vocab_size * h  # lm_head cast to the compute dtype
    layer_backward = (3 * prec.projection * shape.intermediate_size + 4 * unquantized * h) * tokens
    if quantization != "none":  # one dequantized weight
        layer_backward += max(i * o for i, o in shape.linears().values()) * (unquantized + compute)
    peak_without = without_checkpointing + max(loss_head, layer_backward)
    peak_with = with_checkpointing + max(loss_head, per_layer + layer_backward)
    activations = peak_with if activation_checkpointing else peak_without

    return MemoryEstimate(
        base_weights=int(base),
        lora_parameters=int(lora_bytes),
        gradients=int(lora_bytes),
        optimizer_states=int(2 * lora_bytes),
        activations=int(activations),
        activations_without_checkpointing=int(peak_without),
        activations_with_checkpointing=int(peak_with),
        overhead=int(CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK * (static + activations)),
        lora_parameter_count=lora_count,
        settings=settings,
        shape=shape,
    )


def estimate_for_args(training_args, model_args, longest_example: int, fsdp_processes: int = 1) -> MemoryEstimate:
    """The estimate for train_sft.py's parsed SFTConfig and ModelConfig; reads config.json (no weights).

    longest_example: tokens of the longest training example, the length of a padded batch (packed rows fill up to
    max_length whatever the examples). fsdp_processes: as in `estimate_memory`.
    """
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        trust_remote_code=training_args.trust_remote_code,
    )
    return estimate_memory(
        ModelShape.from_config(config.get_text_config()),
        load_in_8bit=model_args.load_in_8bit,
        load_in_4bit=model_args.load_in_4bit,
        dtype=model_args.dtype,
        bf16=training_args.bf16,
        lora_r=model_args.lora_r,
        lora_target_modules=model_args.lora_target_modules,
        lora_dropout=model_args.lora_dropout,
        max_length=training_args.max_length if training_args.packing else longest_example,
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        activation_checkpointing=training_args.activation_checkpointing,
        use_reentrant=reentrant_checkpointing(training_args.activation_checkpointing_kwargs),
        packing=training_args.packing,
        padding_free=training_args.padding_free,
        attn_implementation=model_args.attn_implementation,
        fsdp_processes=fsdp_processes,
    )


def reentrant_checkpointing(activation_checkpointing_kwargs: dict | None) -> bool:
    """Whether checkpointing is reentrant: transformers passes use_reentrant=False when no kwargs are given,
    torch.utils.checkpoint defaults to True when kwargs are given without it."""
    return (activation_checkpointing_kwargs or {"use_reentrant": False}).get("use_reentrant", True)


def with_settings(estimate: MemoryEstimate, **changes) -> MemoryEstimate:
    """The same estimate for changed settings (e.g. another batch size)."""
    return estimate_memory(estimate.shape, **{**estimate.settings, **changes})


def gib(n_bytes: float) -> str:
    return f"{n_bytes / GiB:.1f} GiB"


def format_estimate(estimate: MemoryEstimate, device_bytes: int | None = None, device_name: str | None = None) -> str:
    """A few lines: the parts, the total, and the device's memory when known."""
    s = estimate.settings
    base = "4-bit" if s["load_in_4bit"] else "8-bit" if s["load_in_8bit"] else str(s["dtype"])
    chosen, other = ("with", "without") if s["activation_checkpointing"] else ("without", "with")
    other_bytes = getattr(estimate, f"activations_{other}_checkpointing")
    rows = [
        ("base weights", estimate.base_weights, ""),
        (f"LoRA parameters ({estimate.lora_parameter_count:,})", estimate.lora_parameters, ""),
        ("gradients + optimizer states", estimate.gradients + estimate.optimizer_states, ""),
        (f"activations {chosen} checkpointing", estimate.activations, f"({other}: {gib(other_bytes)})"),
        ("CUDA context, allocator slack", estimate.overhead, ""),
        ("total", estimate.total, ""),
    ]
    sharded = f", sharded over {s['fsdp_processes']} processes (FSDP)" if s["fsdp_processes"] > 1 else ""
    lines = [(
        f"Estimated peak GPU memory per process ({base} base{sharded}, LoRA r={s['lora_r']}, "
        f"{s['per_device_train_batch_size']} x {s['max_length']} tokens per micro-batch):"
    )]
    lines += [f"  {name:<40}{gib(value):>10}  {note}".rstrip() for name, value, note in rows]
    if device_bytes:
        lines.append(f"  {'device memory' + (f' ({device_name})' if device_name else ''):<40}{gib(device_bytes):>10}")
    return "\n".join(lines)


def check_fits(estimate: MemoryEstimate, device_bytes: int) -> str | None:
    """None when the estimate fits the device; otherwise a warning naming the settings that would make it fit."""
    if estimate.total <= device_bytes:
        return None
    s = estimate.settings

    def fits(**changes) -> MemoryEstimate | None:
        candidate = with_settings(estimate, **changes)
        return candidate if candidate.total <= device_bytes else None

    suggestions = []  # (command-line flags, what follows)
    if not s["activation_checkpointing"] and (found := fits(activation_checkpointing=True)):
        suggestions.append(("--activation_checkpointing true", f"{gib(found.total)}, about 30 % slower"))
    batch = s["per_device_train_batch_size"]
    for smaller in range(batch - 1, 0, -1):
        if found := fits(per_device_train_batch_size=smaller):
            note = f"{gib(found.total)}; multiply gradient_accumulation_steps by {batch / smaller:g} to keep the examples per step"
            suggestions.append((f"--per_device_train_batch_size {smaller}", note))
            break
    for shorter in (s["max_length"] * 3 // 4, s["max_length"] // 2, s["max_length"] // 4):
        if shorter >= 16 and (found := fits(max_length=shorter)):
            note = f"{gib(found.total)}; rerun prepare_data.py so that the examples fit it"
            suggestions.append((f"--max_length {shorter}", note))
            break
    if not s["load_in_4bit"] and (found := fits(load_in_4bit=True, load_in_8bit=False)):
        suggestions.append(("--load_in_4bit true --load_in_8bit false", f"{gib(found.total)}; QLoRA instead of the 8-bit base"))
    message = (
        f"warning: the estimated peak GPU memory, {gib(estimate.total)}, exceeds this device's {gib(device_bytes)}; "
        "training would likely stop with CUDA out of memory."
    )
    if not suggestions:
        more = "use more GPUs" if s["fsdp_processes"] > 1 else "shard the model (configs/fsdp_qlora.yaml)"
        return message + (" No single change of activation_checkpointing, per_device_train_batch_size, max_length "
                          f"or load_in_4bit fits: combine them, or {more}.")
    return message + " Any one of these fits:\n" + "\n".join(f"  {flags}   ({note})" for flags, note in suggestions)
