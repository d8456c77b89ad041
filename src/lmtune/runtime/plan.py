"""Memory planner: the bytes one training process needs, per part, before anything is loaded.

`lmtune plan` prints it; `lmtune train` calls check_fits() first and stops with the advice
instead of running out of memory mid-run. The model comes from its config alone
(runtime/plan_model.py builds it on the meta device), so counts of weights, gradients and
optimizer states are exact; activations follow per-layer formulas measured on torch 2.13
(saved-tensor hooks on a Llama decoder layer, CPU: exact for fp32, fitted for bf16).

What one process holds at its peak is the sum of the parts: in backward the activations are
freed while the gradients appear, but measured peaks (CPU RSS under the loop's steady_malloc,
like CUDA's caching allocator) show the freed blocks are not what the gradients reuse:
    weights + gradients (+ their communication buffers) + optimizer states + activations
    + LM-head logits + temporary buffers (one block's backward, autocast copies, all-gathers,
    kernel workspaces) + runtime (libraries, CUDA context)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from lmtune.errors import UserError
from lmtune.runtime.plan_model import ModelShape, model_shape

GiB = 1024**3
FP32 = 4
CHUNK = 256  # rows of the chunked LM head at a time (losses/logprobs.linear_token_logps)
# What a process holds before the model exists: torch + transformers + lmtune imported (CPU,
# measured RSS), or the CUDA context; and what the first step adds for kernels and threads.
RUNTIME = {"cpu": int(0.4 * GiB), "cuda": int(0.5 * GiB)}
WORKSPACE = 32 * 2**20
PREFERENCE_TASKS = ("dpo", "orpo", "simpo", "reward")


@dataclass(frozen=True)
class PlanInputs:
    """Everything the plan depends on besides the model. Keys that other parts of lmtune
    add (train.distributed, train.gradient_checkpointing, train.optimizer,
    model.quantization) are read with defaults, so the planner works with or without them."""

    micro_batch: int = 1
    seq_len: int = 256
    rows_per_example: int = 1  # sequences per example: 2 for preference pairs
    precision: str = "fp32"  # fp32 | bf16 (autocast; weights stay fp32)
    strategy: str = "none"  # none | ddp | fsdp (resolved: auto is none/ddp)
    nproc: int = 1
    gradient_checkpointing: bool = False
    cpu_offload: bool = False
    optimizer: str = "adamw"  # adamw | adamw_8bit | paged_adamw_8bit | adafactor | sgd
    quant_bits: int | None = None  # 4 (NF4/FP4) or 8 (LLM.int8) base weights
    double_quant: bool = True
    lora_dropout: float = 0.0
    device: str = "cpu"  # cpu | cuda

    @classmethod
    def from_config(cls, cfg: Any, nproc: int = 1, device: str = "cpu") -> PlanInputs:
        """The inputs of cfg for `nproc` processes on `device` (cpu or cuda)."""
        tc = cfg.train
        # ---- keys other branches add; getattr defaults keep this working before they land
        dist = getattr(tc, "distributed", None)
        strategy = getattr(dist, "strategy", "auto") if dist is not None else "auto"
        offload = bool(getattr(dist, "cpu_offload", False)) if dist is not None else False
        ckpt = bool(getattr(tc, "gradient_checkpointing", False))
        optimizer = str(getattr(tc, "optimizer", "adamw"))
        quant = getattr(cfg.model, "quantization", None)
        # ---- end of the keys read with defaults
        if strategy == "auto":
            strategy = "none" if nproc == 1 else "ddp"
        precision = tc.precision
        if precision == "auto":
            precision = "bf16" if device == "cuda" and _cuda_bf16() else "fp32"
        rows = 2 if cfg.task in PREFERENCE_TASKS else 1
        if cfg.task == "rlhf":
            rows = cfg.rlhf.samples_per_prompt
        return cls(
            micro_batch=tc.batch_size,
            seq_len=cfg.model.max_length,
            rows_per_example=rows,
            precision=precision,
            strategy=strategy,
            nproc=nproc,
            gradient_checkpointing=ckpt,
            cpu_offload=offload,
            optimizer=optimizer,
            quant_bits=getattr(quant, "bits", None) if quant is not None else None,
            double_quant=bool(getattr(quant, "double_quant", True)),
            lora_dropout=cfg.adapter.dropout if cfg.adapter.type in ("lora", "dora") else 0.0,
            device=device,
        )


def _cuda_bf16() -> bool:
    import torch

    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


@dataclass
class Plan:
    """Bytes per process, by part, and the estimated peak."""

    inputs: PlanInputs
    weights: int
    gradients: int
    optimizer: int
    activations: int
    logits: int
    grad_buffers: int  # DDP buckets / the flat all-reduce copy of the gradients
    temporary: int  # autocast weight copies, FSDP all-gathers, de-quantized weights
    runtime: int
    offloaded: int = 0  # FSDP cpu_offload: weights, gradients, optimizer states in CPU memory

    @property
    def training_bytes(self) -> int:
        """The estimated peak of the training itself (without the runtime line)."""
        return (
            self.weights
            + self.gradients
            + self.grad_buffers
            + self.optimizer
            + self.activations
            + self.logits
            + self.temporary
        )

    @property
    def total(self) -> int:
        """The estimated peak one process needs on its device."""
        return self.training_bytes + self.runtime

    def rows(self) -> list[tuple[str, int, str]]:
        """(part, bytes, how it was counted) for the printed table."""
        i = self.inputs
        shard = f" / {i.nproc} (fsdp)" if i.strategy == "fsdp" else ""
        return [
            ("weights", self.weights, f"parameters as held{shard}"),
            ("gradients", self.gradients, f"fp32, trainable parameters{shard}"),
            ("optimizer states", self.optimizer, f"{i.optimizer}{shard}"),
            (
                "activations",
                self.activations,
                f"micro-batch {i.micro_batch * i.rows_per_example} x length {i.seq_len}, "
                f"{i.precision}, checkpointing {'on' if i.gradient_checkpointing else 'off'}",
            ),
            ("LM-head logits", self.logits, "chunked head or full logits"),
            ("gradient buffers", self.grad_buffers, f"{i.strategy} communication"),
            ("temporary buffers", self.temporary, "autocast copies, all-gathers, de-quantized"),
            ("runtime", self.runtime, f"{i.device} libraries / context"),
        ]


# ---- the parts --------------------------------------------------------------------------


def weight_bytes(shape: ModelShape, inp: PlanInputs) -> int:
    """Parameter bytes of the whole model as held in memory (fp32; quantized layers packed)."""
    if inp.quant_bits is None:
        return shape.param_bytes
    quantized = sum(n for n, _ in shape.quantizable)
    if inp.quant_bits == 4:
        # 0.5 byte per weight + one absmax per 64-weight block: fp32, or (double quant) 8-bit
        # with an fp32 scale per 256 blocks.
        per_block = 1 + FP32 / 256 if inp.double_quant else FP32
        packed = sum(n // 2 + -(-n // 64) * per_block for n, _ in shape.quantizable)
    else:
        packed = sum(n + rows * FP32 for n, rows in shape.quantizable)  # int8 + a scale per row
    return int(shape.param_bytes - quantized * FP32 + packed)


def optimizer_bytes(shape: ModelShape, kind: str) -> int:
    """Optimizer-state bytes for the trainable tensors (what optimizer.state holds)."""
    total = 0
    for s in shape.trainable:
        n = 1
        for d in s:
            n *= d
        if kind == "adamw":
            total += 2 * n * FP32 + FP32  # exp_avg, exp_avg_sq, a step tensor
        elif kind in ("adamw_8bit", "paged_adamw_8bit"):
            # bitsandbytes keeps tensors under 4096 elements in 32 bits; others in 8 bits
            # with an fp32 absmax per 256-element block, two states each.
            total += 2 * n * FP32 if n < 4096 else 2 * (n + -(-n // 256) * FP32)
        elif kind == "adafactor":  # torch.optim.Adafactor: row + column second moments
            total += FP32 + _factored(s) * FP32
        elif kind == "sgd":
            total += n * FP32  # momentum buffer (momentum 0.9)
        else:
            raise UserError(
                f"train.optimizer {kind!r} is unknown to the memory planner "
                "(adamw, adamw_8bit, paged_adamw_8bit, adafactor, sgd)"
            )
    return total


def _factored(shape: tuple[int, ...]) -> int:
    if len(shape) < 2:
        n = 1
        for d in shape:
            n *= d
        return n
    lead = 1
    for d in shape[:-2]:
        lead *= d
    return lead * (shape[-2] + shape[-1])


def layer_activation_bytes(shape: ModelShape, inp: PlanInputs) -> float:
    """Bytes one block saves for backward per token (Llama-style decoder, sdpa attention).

    Measured with saved-tensor hooks (torch 2.13, CPU): fp32 saves 8 hidden-wide tensors,
    key and value, 4 MLP-wide ones and an fp32 log-sum-exp per head; bf16 autocast keeps the
    residual stream and norms in fp32 and the rest in bf16. Frozen norm weights (adapters)
    save one hidden-wide tensor less per norm. A padding mask adds an fp32 [length] row.
    """
    h, i, a, kv = shape.hidden, shape.intermediate, shape.heads, shape.kv_dim
    kv = h  # with a padding mask sdpa repeats the key/value heads (no GQA kernel)
    if inp.precision == "bf16":
        per = 30 * h + 4 * kv + 8 * i + 4 * a + 8
        lora_e = 2
    else:
        per = 4 * (8 * h + 2 * kv + 4 * i + a + 2)
        lora_e = 4
    if not shape.norms_trainable:
        per -= 8 * h
    per += 4 * inp.seq_len  # the padding mask, as an fp32 row per query
    # LoRA: the down-projection's output per adapted layer; with dropout its input is copied
    # (fp32 or bf16) with a one-byte mask.
    # (lora_in_features lists every LoRA layer of the model: per block, divide by the blocks)
    per_f = float(per) + len(shape.lora_in_features) * shape.lora_r * lora_e / max(shape.layers, 1)
    if inp.lora_dropout > 0:
        per_f += sum(shape.lora_in_features) * (FP32 + 1) / max(shape.layers, 1)
    return per_f


def activation_bytes(shape: ModelShape, inp: PlanInputs) -> tuple[int, int]:
    """(activations kept for backward, transient: what one block's backward holds at once,
    about its own activations again in gradients, and a recomputed block with checkpointing)."""
    tokens = inp.micro_batch * inp.rows_per_example * inp.seq_len
    per_layer = layer_activation_bytes(shape, inp) * tokens
    head_only = not shape.lora_in_features and shape.trainable_params == shape.head_params
    if not shape.trainable or head_only:
        return 0, int(per_layer)  # the body trains nothing: it saves nothing for backward
    if inp.gradient_checkpointing:
        # Each block keeps its fp32 input; backward recomputes one block at a time.
        return int(shape.layers * tokens * shape.hidden * FP32), int(2 * per_layer)
    return int(shape.layers * per_layer + 2 * tokens * shape.hidden * FP32), int(per_layer)


def logits_bytes(shape: ModelShape, inp: PlanInputs) -> int:
    """The LM head's logits and their gradient: chunked (models/lm_head.py) or full."""
    tokens = inp.micro_batch * inp.rows_per_example * inp.seq_len
    if not shape.causal:
        return tokens * shape.hidden * FP32  # pooled/last hidden states; heads are tiny
    if shape.chunked_head:
        # Saved: the selected hidden states (fp32); forward/backward: a few [chunk, vocab]
        # fp32 blocks, the hidden-state gradient, and the head's fp32 weight gradient.
        chunks = 3 * CHUNK * shape.vocab * FP32
        grad_w = shape.head_params * FP32 if shape.head_trainable else 0
        cast = shape.head_params * 2 if inp.precision == "bf16" else 0
        return 2 * tokens * shape.hidden * FP32 + chunks + grad_w + cast
    return 3 * tokens * shape.vocab * FP32  # logits, log-softmax, their gradient


def estimate(shape: ModelShape, inp: PlanInputs) -> Plan:
    """The plan of one process for `shape` trained as `inp` says."""
    n = inp.nproc if inp.strategy == "fsdp" else 1
    weights = weight_bytes(shape, inp)
    grads = shape.trainable_params * FP32
    optim = optimizer_bytes(shape, inp.optimizer)
    acts, transient = activation_bytes(shape, inp)
    temporary = transient + WORKSPACE
    logits = logits_bytes(shape, inp)
    if inp.device == "cpu":
        # glibc's heap under steady_malloc (no trimming, no mmap) keeps the holes the freed
        # activations leave; measured over 6 steps (Llama, CPU) the RSS settles about half
        # the activations above the first step's, less what the per-step gradients refill.
        temporary += max(0, (acts + logits) // 2 - shape.trainable_params * FP32)
    if inp.precision == "bf16":
        temporary += shape.matmul_params * 2  # bf16 copies of the weights (autocast)
    if inp.quant_bits is not None:
        largest = max((q for q, _ in shape.quantizable), default=0)
        temporary += 2 * largest * (2 if inp.precision == "bf16" else FP32)  # de-quantized
    grad_buffers = 0
    if inp.strategy == "ddp" and inp.nproc > 1:
        grad_buffers = grads  # DDP's buckets hold a flat copy of every gradient
    offloaded = 0
    if inp.strategy == "fsdp":
        weights, grads, optim = -(-weights // n), -(-grads // n), -(-optim // n)
        dtype = 2 if inp.precision == "bf16" else FP32
        # Unsharded at once: the root (embeddings, head; kept from forward to backward) and
        # two blocks (the one computing and the next, prefetched), plus a block's gradients.
        temporary += (shape.root_params + 2 * shape.block_params) * dtype
        temporary += shape.block_params * FP32 if shape.trainable else 0
        if inp.cpu_offload:
            offloaded = weights + grads + optim
            if inp.device == "cuda":
                weights = grads = optim = 0
    return Plan(
        inputs=inp,
        weights=weights,
        gradients=grads,
        optimizer=optim,
        activations=acts,
        logits=logits,
        grad_buffers=grad_buffers,
        temporary=temporary,
        runtime=RUNTIME.get(inp.device, RUNTIME["cpu"]),
        offloaded=offloaded,
    )


# ---- fitting and advice -------------------------------------------------------------------


def device_budget(device: str, nproc: int, gpu_memory_gib: float | None = None) -> int:
    """Bytes one process may use: --gpu-memory, else the device's free memory (CUDA) or the
    machine's available RAM shared by the processes (CPU)."""
    if gpu_memory_gib is not None:
        return int(gpu_memory_gib * GiB)
    if device == "cuda":
        import torch

        if nproc > 1:
            # A launcher about to start the workers: no CUDA context of its own on device 0.
            return int(torch.cuda.get_device_properties(0).total_memory)
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available // max(nproc, 1))


def largest_fitting(shape: ModelShape, inp: PlanInputs, budget: int, key: str) -> int | None:
    """The largest micro_batch or seq_len (key) whose plan fits budget; None if even 1 (or
    16 tokens) does not."""
    low = 1 if key == "micro_batch" else 16
    high = 1 << 16 if key == "micro_batch" else (shape.max_positions or 1 << 20)

    def fits(v: int) -> bool:
        changed = (
            dataclasses.replace(inp, micro_batch=v)
            if key == "micro_batch"
            else dataclasses.replace(inp, seq_len=v)
        )
        return estimate(shape, changed).total <= budget

    if not fits(low):
        return None
    while low < high:  # memory grows with both: bisect
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def switches(shape: ModelShape, inp: PlanInputs) -> list[tuple[str, PlanInputs]]:
    """The single changes that lower memory, as (config change, inputs with it)."""
    out = []
    if not inp.gradient_checkpointing:
        out.append(
            (
                "train.gradient_checkpointing=true",
                dataclasses.replace(inp, gradient_checkpointing=True),
            )
        )
    if inp.nproc > 1 and inp.strategy != "fsdp":
        out.append(("train.distributed.strategy=fsdp", dataclasses.replace(inp, strategy="fsdp")))
    for n in (2, 4, 8):
        if n > inp.nproc:
            label = f"--nproc {n} with train.distributed.strategy=fsdp"
            out.append((label, dataclasses.replace(inp, nproc=n, strategy="fsdp")))
            break
    if inp.strategy == "fsdp" and not inp.cpu_offload:
        out.append(
            ("train.distributed.cpu_offload=true", dataclasses.replace(inp, cpu_offload=True))
        )
    if inp.optimizer in ("adamw", "adafactor") and shape.trainable_params > 0:
        out.append(("train.optimizer=adamw_8bit", dataclasses.replace(inp, optimizer="adamw_8bit")))
    if inp.precision == "fp32":
        out.append(("train.precision=bf16", dataclasses.replace(inp, precision="bf16")))
    if inp.quant_bits is None and shape.lora_in_features:
        out.append(("model.quantization.bits=4", dataclasses.replace(inp, quant_bits=4)))
    return out


def advice(
    cfg: Any, shape: ModelShape, inp: PlanInputs, budget: int
) -> list[tuple[str, int, bool]]:
    """(change, planned total, fits) for each single switch, the fitting ones first.

    Adapter changes rebuild the meta model (LoRA trains far fewer parameters than full)."""
    rows = [(label, estimate(shape, i).total) for label, i in switches(shape, inp)]
    if cfg is not None and cfg.adapter.type == "full":
        lora = cfg.model_copy(update={"adapter": cfg.adapter.model_copy(update={"type": "lora"})})
        lora_inp = dataclasses.replace(inp, lora_dropout=cfg.adapter.dropout)
        rows.append(("adapter.type=lora", estimate(model_shape(lora), lora_inp).total))
    fitting = largest_fitting(shape, inp, budget, "micro_batch")
    if fitting is not None and fitting < inp.micro_batch:
        # A divisor of the batch size: grad_accum then keeps the examples per step.
        batch = max(d for d in range(1, fitting + 1) if inp.micro_batch % d == 0)
        accum = inp.micro_batch // batch
        smaller = dataclasses.replace(inp, micro_batch=batch)
        rows.append(
            (f"train.batch_size={batch} (and grad_accum x{accum})", estimate(shape, smaller).total)
        )
    out = [(label, total, total <= budget) for label, total in rows]
    return sorted(out, key=lambda r: (not r[2], r[1]))


def gib(n: float) -> str:
    """Bytes as GiB with two decimals (MiB below 0.1 GiB)."""
    return f"{n / GiB:.2f} GiB" if n >= 0.1 * GiB else f"{n / 2**20:.1f} MiB"


def report_lines(cfg: Any, shape: ModelShape, plan: Plan, budget: int) -> list[str]:
    """The plan as text: model, one line per part, the total against the budget, advice."""
    i = plan.inputs
    lines = [
        f"model {cfg.model.name_or_path} ({shape.model_type}): {shape.total_params:,} parameters, "
        f"{shape.trainable_params:,} trainable (adapter {cfg.adapter.type}); "
        f"{shape.layers} layers, hidden {shape.hidden}, {shape.heads} heads, vocab {shape.vocab}",
        f"per process: strategy {i.strategy} x {i.nproc} process(es), precision {i.precision}, "
        f"optimizer {i.optimizer}"
        + (f", {i.quant_bits}-bit base" if i.quant_bits else "")
        + (", cpu offload" if i.cpu_offload else ""),
    ]
    width = max(len(name) for name, _, _ in plan.rows())
    for name, value, how in plan.rows():
        lines.append(f"  {name:<{width}}  {gib(value):>11}  {how}")
    if plan.offloaded:
        lines.append(f"  {'(in CPU memory)':<{width}}  {gib(plan.offloaded):>11}  fsdp cpu_offload")
    verdict = "fits" if plan.total <= budget else "does NOT fit"
    lines.append(
        f"  {'total (peak)':<{width}}  {gib(plan.total):>11}  {verdict} in {gib(budget)} "
        f"per process ({i.device})"
    )
    batch = largest_fitting(shape, i, budget, "micro_batch")
    length = largest_fitting(shape, i, budget, "seq_len")
    lines.append(
        f"largest micro-batch at length {i.seq_len}: {batch if batch else 'none fits'}; "
        f"largest length at micro-batch {i.micro_batch}: {length if length else 'none fits'}"
    )
    if plan.total > budget:
        lines.append("what makes it fit (one change at a time):")
        for label, total, fits in advice(cfg, shape, i, budget):
            lines.append(f"  {label}: {gib(total)} {'fits' if fits else 'still too much'}")
    return lines


def check_fits(cfg: Any, nproc: int = 1, device: str | None = None) -> Plan | None:
    """Plan cfg's run before `lmtune train` loads anything; raise UserError with the advice
    when one process would need more than its device has. Returns the plan (None when the
    model could not be planned: then training goes ahead unchecked, with a warning)."""
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        shape = model_shape(cfg)
    except UserError:
        raise
    except Exception as exc:  # a model the meta build cannot handle: train without the check
        print(f"warning: no memory plan for {cfg.model.name_or_path} ({exc}); training anyway")
        return None
    inp = PlanInputs.from_config(cfg, nproc=nproc, device=device)
    plan = estimate(shape, inp)
    budget = device_budget(device, nproc)
    if plan.total > budget:
        lines = report_lines(cfg, shape, plan, budget)
        raise UserError(
            f"the memory plan needs {gib(plan.total)} per process but {gib(budget)} is free "
            f"({device}); change the config as below, or skip this check with --no-plan-check "
            "(train.plan_check: false):\n" + "\n".join(lines)
        )
    return plan
