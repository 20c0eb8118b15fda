"""Will it fit? Peak GPU memory of a LoRA training run, estimated from the model's config.json alone.

`estimate_for_args(training_args, model_args)` reads the config (no weights) and returns a `MemoryEstimate`, a
breakdown in bytes; `format_estimate` prints it, `check_fits` says what to change when it exceeds the device.
The numbers follow what the training path keeps in memory, read from the sources of the versions in
requirements.txt (transformers 5, TRL 1.16, PEFT 0.21, bitsandbytes 0.50):

Weights (static)
    8-bit   each linear weight 1 byte + a float32 scale per output row; bitsandbytes leaves embed_tokens, lm_head
            and the norms unquantized, and peft.prepare_model_for_kbit_training (train_sft.load_base_model calls
            it) upcasts those to float32: 2 x 32000 x 4096 x 4 bytes = 1.05 GB for Mistral-7B.
    4-bit   NF4: 0.5 byte + a float32 absmax per 64 weights (with use_bnb_nested_quant: 1 byte per 64 + a float32
            per 16384); embeddings, lm_head, norms in float32 as above.
    none    every weight in `dtype` (bfloat16: 2 bytes).
LoRA (static)
    r x (in + out) parameters per targeted linear ("all-linear": q, k, v, o, gate, up, down of every layer).
    SFTTrainer casts them to bfloat16 on a quantized base; on an unquantized one PEFT keeps them in float32.
    Gradients take the parameters' dtype; AdamW keeps two states of that dtype (exp_avg, exp_avg_sq).
Activations, per token of a micro-batch of `per_device_train_batch_size` rows of `max_length` tokens (the worst
case: a batch padded, or a row packed, to max_length), summed over what autograd saves for the backward:
    r = bytes of the residual stream (float32 on a k-bit base, whose embeddings and norms are upcast; else dtype)
    p = bytes of a base projection's output (float32 for 8-bit on CUDA: bitsandbytes' int8 matmul returns its
        input's dtype and autocast does not reach it; else the compute dtype)
    c = compute dtype bytes (2 under bf16 autocast), m = dropout mask bytes (bool: 1 on CUDA)
    LoRA on an input of width d: c*d (lora_A's input) + m*d (dropout mask) + c*rank (lora_B's input)
    attention:  r*h (norm input) + q, k, v LoRA + c*(q + 2*kv) (scaled_dot_product_attention's q, k, v; k and v
                repeated to q's width when a mask is passed) + c*q (its output) + 4*heads (logsumexp)
                + c*row (the float mask SDPA builds per layer from a boolean one: padded or packed rows)
                + o LoRA  [+ r*h (norm output) + c*q (o's input) that an 8-bit linear keeps for its backward]
                (flash attention: no mask, k and v not repeated; eager: k and v repeated, and the probabilities,
                (4 + c) x heads x row, instead of the logsumexp)
    MLP:        r*h (norm input) + gate, up LoRA + 3*p*i (SiLU input, its output, up's output) + down LoRA
                [+ r*h + p*i that an 8-bit linear keeps]
    With activation checkpointing (non-reentrant) a layer keeps only its input, r*h; one layer at a time is
    recomputed during the backward. tests/test_memory.py checks the per-layer sum against the tensors autograd
    saves on the CPU.
    Loss: TRL 1.16's SFTTrainer never builds the (tokens x 32000) logits; its fused LM head projects at most
    4096 tokens at a time (a c x 4096 x vocab tile, 262 MB, plus a bfloat16 copy of a float32 lm_head) and
    keeps the final hidden states (r*h per token) for the backward.
Sharded (FSDP, configs/fsdp_qlora.yaml; `fsdp_processes` > 1; not yet compared with a measurement)
    train_sft.load_base_model skips prepare_model_for_kbit_training under FSDP, so embeddings, lm_head and norms
    stay in `dtype` and so does the residual stream. FULL_SHARD splits the weights, LoRA parameters, gradients
    and AdamW states over the processes; a process holds whole, at most, the root unit's weights (embeddings,
    lm_head, final norm: FSDP keeps the root gathered between forward and backward) and two decoder layers (the
    one computed and the one prefetched).
Transient peaks and overhead
    The backward of a layer holds gradients of its widest tensors (3*p*i + 4*r*h per token) and, on a k-bit
    base, one dequantized weight. The CUDA context (~0.5 GiB) and allocator slack (5 %) are not in
    torch.cuda.max_memory_allocated; `peak_allocated` is comparable to it, `total` to the device's memory.
"""

from dataclasses import dataclass, field, replace

GiB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "auto": 2, None: 4}
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
CUDA_CONTEXT_BYTES = GiB // 2
ALLOCATOR_SLACK = 0.05
LOSS_TOKEN_CHUNK = 4096  # trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a Llama/Mistral-style decoder that the estimate needs (from its config.json)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool = False

    @classmethod
    def from_config(cls, config) -> "ModelShape":
        heads = config.num_attention_heads
        return cls(
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=heads,
            num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            vocab_size=config.vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )

    def with_layers(self, num_hidden_layers: int) -> "ModelShape":
        return replace(self, num_hidden_layers=num_hidden_layers)

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

    def embedding_params(self) -> int:
        """embed_tokens and lm_head (one matrix when tied)."""
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)


def lora_targets(target_modules) -> tuple[str, ...]:
    """The decoder-layer linears a LoRA config targets ("all-linear", a name, or a list of names)."""
    if target_modules is None or target_modules == "all-linear" or target_modules == ["all-linear"]:
        return ALL_LINEAR
    names = [target_modules] if isinstance(target_modules, str) else list(target_modules)
    unknown = [name for name in names if name not in ALL_LINEAR]
    if unknown:
        raise ValueError(f"lora_target_modules: {unknown} are not linear layers of a Mistral decoder {ALL_LINEAR}")
    return tuple(name for name in ALL_LINEAR if name in names)


def lora_parameter_count(shape: ModelShape, lora_r: int, target_modules="all-linear") -> int:
    """r x (in + out) per targeted linear per layer; for Mistral-7B at r=16, all-linear: 41,943,040."""
    linears = shape.linears()
    per_layer = sum(lora_r * sum(linears[name]) for name in lora_targets(target_modules))
    return per_layer * shape.num_hidden_layers


def base_weight_bytes(
    shape: ModelShape, quantization: str, dtype_bytes: int, nested_quant: bool = False, upcast: bool = True
) -> int:
    """Bytes of the base model's weights on the device during training (quantization: "8bit", "4bit" or "none").

    upcast: whether prepare_model_for_kbit_training casts the unquantized weights of a k-bit base to float32.
    """
    layers = shape.num_hidden_layers
    linear = shape.layer_linear_params() * layers
    norms = (2 * layers + 1) * shape.hidden_size
    if quantization == "none":
        return (linear + shape.embedding_params() + norms) * dtype_bytes
    unquantized = (shape.embedding_params() + norms) * (4 if upcast else dtype_bytes)
    if quantization == "8bit":
        out_rows = sum(fan_out for _, fan_out in shape.linears().values()) * layers
        return linear + 4 * out_rows + unquantized
    if quantization == "4bit":
        absmax = linear / 64 * (1 + 4 / 256) if nested_quant else linear / 64 * 4
        return int(linear / 2 + absmax) + unquantized
    raise ValueError(f"quantization must be '8bit', '4bit' or 'none', got {quantization!r}")


@dataclass(frozen=True)
class Precision:
    """Bytes per element of the tensors the activation formula counts (see the module docstring)."""

    residual: int  # r
    projection: int  # p
    compute: int  # c
    mask: int  # m
    linear_keeps_input: bool  # an 8-bit linear keeps its input for the backward


def precision(
    quantization: str, dtype_bytes: int, autocast_bytes: int | None, device: str, upcast: bool = True
) -> Precision:
    compute = autocast_bytes or dtype_bytes
    residual = 4 if quantization in ("8bit", "4bit") and upcast else dtype_bytes
    projection = residual if quantization == "8bit" and device == "cuda" else compute
    return Precision(
        residual=residual,
        projection=projection,
        compute=compute,
        mask=1 if device == "cuda" else compute,
        linear_keeps_input=quantization == "8bit",
    )


def layer_activation_bytes_per_token(
    shape: ModelShape,
    prec: Precision,
    lora_r: int,
    targets: tuple[str, ...],
    lora_dropout: bool,
    row_length: int,
    attention: str = "sdpa",
    masked: bool = True,
) -> float:
    """Bytes autograd saves for the backward of one decoder layer, per token (formula in the module docstring).

    row_length: tokens of one attention row (max_length padded; per_device_train_batch_size x max_length packed),
    masked: whether the attention gets a mask (padded or packed rows with sdpa/eager; never flash attention).
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

    norm = r * h + 4  # RMSNorm keeps its float32 input and the per-token rsqrt
    if attention == "eager":
        kv_saved = 2 * c * q  # repeat_kv
        attention_core = c * q + 4 * shape.num_attention_heads * row_length + c * shape.num_attention_heads * row_length
    else:
        expanded = masked and attention == "sdpa"  # transformers repeats k and v when SDPA gets a mask (CUDA)
        kv_saved = 2 * c * (q if expanded else kv)
        attention_core = c * q + 4 * shape.num_attention_heads + (c * row_length if masked and attention == "sdpa" else 0)
    attn = (
        norm
        + (r * h if keeps else 0)
        + lora("q_proj", h) + lora("k_proj", h) + lora("v_proj", h)
        + c * q + kv_saved  # q, k, v as the attention kernel keeps them
        + attention_core  # its output (+ logsumexp or probabilities, + mask)
        + (c * q if keeps else 0)
        + lora("o_proj", q)
    )
    mlp = (
        norm
        + (r * h if keeps else 0)
        + lora("gate_proj", h) + lora("up_proj", h)
        + 3 * p * i
        + (p * i if keeps else 0)
        + lora("down_proj", i)
    )
    return attn + mlp


@dataclass
class MemoryEstimate:
    """Peak device memory of a training step, in bytes, by part."""

    base_weights: int
    lora_parameters: int
    gradients: int
    optimizer_states: int
    activations: int  # saved activations plus the largest transient of the step, for the chosen checkpointing
    activations_without_checkpointing: int
    activations_with_checkpointing: int
    loss_head: int  # the fused LM head's working memory (part of the transient in `activations`)
    overhead: int  # CUDA context and allocator slack: outside torch.cuda.max_memory_allocated
    lora_parameter_count: int
    tokens_per_micro_batch: int
    settings: dict = field(default_factory=dict)
    shape: ModelShape | None = None

    @property
    def static(self) -> int:
        return self.base_weights + self.lora_parameters + self.gradients + self.optimizer_states

    @property
    def peak_allocated(self) -> int:
        """Comparable with torch.cuda.max_memory_allocated()."""
        return self.static + self.activations

    @property
    def total(self) -> int:
        """What the device must hold."""
        return self.peak_allocated + self.overhead

    def as_dict(self) -> dict:
        parts = ("base_weights", "lora_parameters", "gradients", "optimizer_states", "activations",
                 "activations_without_checkpointing", "activations_with_checkpointing", "loss_head", "overhead")
        return {
            **{part: getattr(self, part) for part in parts},
            "peak_allocated": self.peak_allocated,
            "total": self.total,
            "lora_parameter_count": self.lora_parameter_count,
            "tokens_per_micro_batch": self.tokens_per_micro_batch,
            "settings": dict(self.settings),
        }


def estimate_memory(
    shape: ModelShape,
    *,
    load_in_8bit: bool,
    load_in_4bit: bool,
    dtype: str | None,
    bf16: bool,
    use_bnb_nested_quant: bool,
    use_peft: bool,
    lora_r: int,
    lora_target_modules,
    lora_dropout: float,
    max_length: int,
    per_device_train_batch_size: int,
    activation_checkpointing: bool,
    packing: bool,
    padding_free: bool,
    attn_implementation: str | None,
    optim: str,
    fsdp_processes: int = 1,
    device: str = "cuda",
) -> MemoryEstimate:
    """The estimate for one training process (one GPU) with these settings (names and meanings as in SFTConfig and
    ModelConfig; their values come from sft_config.yaml through `estimate_for_args`). fsdp_processes: the number
    of processes FSDP shards the model over (1: not sharded)."""
    if not use_peft:
        raise ValueError("the estimate covers LoRA training (use_peft: true) only")
    settings = {key: value for key, value in locals().items() if key != "shape"}
    quantization = "4bit" if load_in_4bit else "8bit" if load_in_8bit else "none"
    dtype_bytes = DTYPE_BYTES.get(dtype, 4)
    sharded = fsdp_processes > 1
    prec = precision(quantization, dtype_bytes, 2 if bf16 else None, device, upcast=not sharded)
    targets = lora_targets(lora_target_modules)
    layers = shape.num_hidden_layers
    tokens = per_device_train_batch_size * max_length
    flattened = packing or padding_free  # TRL flattens the micro-batch into one row with position_ids
    attention = "eager" if attn_implementation == "eager" else "sdpa" if attn_implementation in (None, "sdpa") else "flash"
    row_length = tokens if flattened else max_length

    # Static: weights, LoRA parameters, their gradients and AdamW states
    base = base_weight_bytes(shape, quantization, dtype_bytes, use_bnb_nested_quant, upcast=not sharded)
    lora_count = lora_parameter_count(shape, lora_r, targets)
    lora_bytes_each = 2 if quantization != "none" else 4
    lora_bytes = lora_count * lora_bytes_each
    states = lora_count * (2 if "8bit" in optim else 2 * lora_bytes_each)
    if sharded:
        root = base_weight_bytes(shape.with_layers(0), quantization, dtype_bytes, use_bnb_nested_quant, upcast=False)
        layer = (base - root) / layers
        base = base / fsdp_processes + root + 2 * layer  # the root unit and two decoder layers held whole
        lora_bytes, states = lora_bytes / fsdp_processes, states / fsdp_processes

    # Activations kept for the backward
    per_layer = layer_activation_bytes_per_token(
        shape, prec, lora_r, targets, lora_dropout > 0, row_length, attention, masked=attention != "flash"
    ) * tokens
    final = (2 * prec.residual * shape.hidden_size + 24) * tokens  # final norm input, hidden states of the loss
    without_checkpointing = layers * per_layer + final
    with_checkpointing = layers * prec.residual * shape.hidden_size * tokens + final

    # Transients: the fused LM head's tile (at the start of the backward) or a layer's backward
    chunk = min(tokens, LOSS_TOKEN_CHUNK)
    lm_head_bytes = 4 if quantization != "none" and not sharded else dtype_bytes
    loss_head = prec.compute * chunk * (shape.vocab_size + shape.hidden_size) + 4 * tokens * shape.hidden_size
    if lm_head_bytes != prec.compute:
        loss_head += prec.compute * shape.vocab_size * shape.hidden_size  # the head cast to the compute dtype
    if device != "cuda":
        loss_head += 8 * 4 * chunk * shape.vocab_size  # float32 temporaries of the torch path (no Triton)
    largest = max(fan_in * fan_out for fan_in, fan_out in shape.linears().values())
    dequantized = largest * (prec.residual + prec.compute) if quantization != "none" else 0
    layer_backward = (3 * prec.projection * shape.intermediate_size + 4 * prec.residual * shape.hidden_size) * tokens
    layer_backward += dequantized
    peak_without = without_checkpointing + max(loss_head, layer_backward)
    peak_with = with_checkpointing + max(loss_head, per_layer + layer_backward)
    activations = peak_with if activation_checkpointing else peak_without

    static = base + 2 * lora_bytes + states
    overhead = int(CUDA_CONTEXT_BYTES + ALLOCATOR_SLACK * (static + activations)) if device == "cuda" else 0
    return MemoryEstimate(
        base_weights=int(base),
        lora_parameters=int(lora_bytes),
        gradients=int(lora_bytes),
        optimizer_states=int(states),
        activations=int(activations),
        activations_without_checkpointing=int(peak_without),
        activations_with_checkpointing=int(peak_with),
        loss_head=int(loss_head),
        overhead=overhead,
        lora_parameter_count=lora_count,
        tokens_per_micro_batch=tokens,
        settings=settings,
        shape=shape,
    )


def estimate_for_args(
    training_args,
    model_args,
    longest_example: int | None = None,
    config=None,
    fsdp_processes: int = 1,
    device: str = "cuda",
) -> MemoryEstimate:
    """The estimate for train_sft.py's parsed SFTConfig and ModelConfig; reads config.json (no weights).

    longest_example: tokens of the longest training example; padded batches are never longer (packed rows fill
    up to max_length whatever the examples). fsdp_processes: as in `estimate_memory`.
    """
    length = training_args.max_length
    if longest_example is not None and not training_args.packing:
        length = min(length or longest_example, longest_example)
    if length is None:
        raise ValueError("the estimate needs max_length or longest_example")
    if config is None:
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
        use_bnb_nested_quant=model_args.use_bnb_nested_quant,
        use_peft=model_args.use_peft,
        lora_r=model_args.lora_r,
        lora_target_modules=model_args.lora_target_modules,
        lora_dropout=model_args.lora_dropout,
        max_length=length,
        per_device_train_batch_size=training_args.per_device_train_batch_size,
        activation_checkpointing=training_args.activation_checkpointing,
        packing=training_args.packing,
        padding_free=training_args.padding_free,
        attn_implementation=model_args.attn_implementation,
        optim=str(getattr(training_args.optim, "value", training_args.optim)),
        fsdp_processes=fsdp_processes,
        device=device,
    )


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
    lines += [f"  {name:<36}{gib(value):>10}  {note}".rstrip() for name, value, note in rows]
    if device_bytes:
        lines.append(f"  {'device memory' + (f' ({device_name})' if device_name else ''):<36}{gib(device_bytes):>10}")
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
