"""The shape of a model as the memory planner needs it, read from its config alone.

The model is built on the meta device (accelerate.init_empty_weights: no weight is allocated
or loaded) with the run's adapter applied by the same code training uses (peft on the meta
model), so parameter counts, trainable counts and tensor shapes are exact, not estimated.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from lmtune.errors import UserError

# Tasks whose model is a causal LM (the others: a sequence classifier or a span head).
CAUSAL_TASKS = ("sft", "dpo", "orpo", "simpo", "rlhf", "kto")
SEQ_CLS_TASKS = ("classification", "reward")


@dataclass
class ModelShape:
    """What the planner reads off one model + adapter: sizes from the config, counts exact."""

    model_type: str
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    max_positions: int | None
    chunked_head: bool  # models/lm_head.py runs the LM head in chunks (plain causal LMs)
    causal: bool
    param_bytes: int  # every parameter once (tied weights once), as loaded (fp32)
    total_params: int
    trainable: list[tuple[int, ...]] = field(default_factory=list)  # shape of each trainable tensor
    # nn.Linear weights inside the repeated blocks: what bitsandbytes quantizes (numel, rows)
    quantizable: list[tuple[int, int]] = field(default_factory=list)
    matmul_params: int = 0  # weights that go through a matmul (autocast copies them)
    block_params: int = 0  # parameters of one repeated block (FSDP's unit)
    root_params: int = 0  # parameters outside the blocks (embeddings, head, final norm)
    head_params: int = 0  # the output head (LM head or classifier)
    head_trainable: bool = False
    norms_trainable: bool = True
    lora_in_features: list[int] = field(default_factory=list)  # input width of each LoRA layer
    lora_r: int = 0
    dora: bool = False

    @property
    def trainable_params(self) -> int:
        """Parameters that receive a gradient."""
        return sum(_numel(s) for s in self.trainable)

    @property
    def kv_dim(self) -> int:
        """Width of the key (and value) projection: kv_heads x head size."""
        return self.kv_heads * (self.hidden // max(self.heads, 1))


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def auto_class(task: str) -> Any:
    """The transformers auto class lmtune trains `task` with (models/load.py)."""
    from transformers import (
        AutoModelForCausalLM,
        AutoModelForQuestionAnswering,
        AutoModelForSequenceClassification,
    )

    if task in SEQ_CLS_TASKS:
        return AutoModelForSequenceClassification
    if task == "qa":
        return AutoModelForQuestionAnswering
    return AutoModelForCausalLM


def read_model_config(cfg: Any) -> Any:
    """transformers' config of cfg.model (local folder, hub id, builtin:NAME); no weights."""
    from transformers import AutoConfig

    from lmtune.models.load import _hub_kwargs, _load_failure, resolve_model_path

    path = resolve_model_path(cfg.model.name_or_path)
    try:
        return AutoConfig.from_pretrained(path, **_hub_kwargs(cfg.model, path))
    except Exception as exc:
        raise _load_failure(path, "model config", exc) from exc


def _get(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def meta_model(cfg: Any, config: Any | None = None) -> torch.nn.Module:
    """cfg's model with its adapter, every tensor on the meta device (nothing allocated)."""
    from accelerate import init_empty_weights

    from lmtune.models.adapters import apply_adapter

    config = config if config is not None else read_model_config(cfg)
    if cfg.task in SEQ_CLS_TASKS:
        config.num_labels = 1 if cfg.task == "reward" else max(2, len(cfg.data.labels or []))
    with init_empty_weights(include_buffers=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = auto_class(cfg.task).from_config(config, dtype=torch.float32)
        except ValueError as exc:
            raise UserError(
                f"model {cfg.model.name_or_path} has no {cfg.task} architecture ({exc}); "
                "pick a model of the task's kind"
            ) from exc
        return apply_adapter(model, cfg.adapter, cfg.task)


def _blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks (decoder/encoder layers): the largest ModuleList of the model."""
    lists = [m for m in model.modules() if isinstance(m, torch.nn.ModuleList) and len(m) > 1]
    return max(lists, key=len, default=[])  # type: ignore[arg-type]


def measure_shape(cfg: Any, model: torch.nn.Module, config: Any) -> ModelShape:
    """ModelShape of a (meta or real) model built for cfg; counts come from the tensors."""
    from lmtune.models.adapters import head_module_names
    from lmtune.models.lm_head import body_and_head
    from lmtune.runtime.weights import base_of

    hf = base_of(model)
    params = dict(model.named_parameters())  # tied weights once
    blocks = list(_blocks(hf))
    block_ids = {id(p) for b in blocks for p in b.parameters()}
    heads = [getattr(hf, n) for n in head_module_names(hf)]
    head_ids = {id(p) for h in heads for p in h.parameters()}
    quantizable, lora_in, matmul = [], [], 0
    for b in blocks:
        for name, mod in b.named_modules():
            if isinstance(mod, torch.nn.Linear) and "lora_" not in name:
                quantizable.append((mod.weight.numel(), mod.weight.shape[0]))
            if name.endswith("lora_A.default"):
                lora_in.append(mod.in_features)
    for mod in hf.modules():
        if isinstance(mod, torch.nn.Linear):
            matmul += mod.weight.numel()
    norms = [p for n, p in params.items() if "norm" in n.lower() and id(p) in block_ids]
    heads_p = [p for p in params.values() if id(p) in head_ids]
    hidden = int(_get(config, "hidden_size", "n_embd", "d_model", default=0))
    heads_n = int(_get(config, "num_attention_heads", "n_head", default=1))
    text = getattr(config, "text_config", None) or config
    lora_cfg = getattr(model, "peft_config", {}).get("default")
    return ModelShape(
        model_type=str(getattr(config, "model_type", "")),
        vocab=int(_get(text, "vocab_size", default=0)),
        hidden=hidden,
        layers=len(blocks) or int(_get(config, "num_hidden_layers", "n_layer", default=1)),
        heads=heads_n,
        kv_heads=int(_get(config, "num_key_value_heads", default=heads_n)),
        intermediate=int(_get(config, "intermediate_size", "n_inner", default=4 * hidden) or 0),
        max_positions=_get(config, "max_position_embeddings", "n_positions"),
        chunked_head=body_and_head(model) is not None,
        causal=cfg.task in CAUSAL_TASKS,
        param_bytes=sum(p.numel() * p.element_size() for p in params.values()),
        total_params=sum(p.numel() for p in params.values()),
        trainable=[tuple(p.shape) for p in params.values() if p.requires_grad],
        quantizable=quantizable,
        matmul_params=matmul,
        block_params=max((sum(p.numel() for p in b.parameters()) for b in blocks), default=0),
        root_params=sum(p.numel() for p in params.values() if id(p) not in block_ids),
        head_params=sum(p.numel() for p in heads_p),
        head_trainable=any(p.requires_grad for p in heads_p),
        norms_trainable=any(p.requires_grad for p in norms) if norms else True,
        lora_in_features=lora_in,
        lora_r=int(getattr(lora_cfg, "r", 0) or 0),
        dora=bool(getattr(lora_cfg, "use_dora", False)),
    )


def model_shape(cfg: Any) -> ModelShape:
    """The ModelShape of cfg's model and adapter, from the model's config only."""
    config = read_model_config(cfg)
    return measure_shape(cfg, meta_model(cfg, config), config)
