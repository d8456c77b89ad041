"""Quantized bases (QLoRA): load a causal LM in 4 or 8 bits through bitsandbytes and undo it.

The weights of every linear layer in the transformer blocks are stored in NF4/FP4 (4-bit) or
int8 by bitsandbytes' Linear4bit / Linear8bitLt; embeddings, norms and the LM head stay in
floating point (transformers keeps the output head unquantized). Only adapters train on such
a base. An export never merges into the 4-bit weights (peft#2321: rounding the merged sum back
to 4 bits changes generations): it de-quantizes the base first, exactly to the values the
adapter was trained against, and merges in floating point.
"""

from __future__ import annotations

import importlib.util
import warnings
from typing import Any

import torch

from lmtune.config import QuantizationConfig
from lmtune.errors import UserError

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def require_bitsandbytes(what: str = "model.quantization") -> None:
    """UserError naming the install command when bitsandbytes is missing."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(
            f"{what} needs the bitsandbytes package, which is not installed: run "
            '`pip install "lmtune[qlora]"` (or `pip install bitsandbytes`)'
        )


def bnb_config(qcfg: QuantizationConfig) -> Any:
    """transformers' BitsAndBytesConfig for model.quantization."""
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    if qcfg.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=qcfg.quant_type,
        bnb_4bit_use_double_quant=qcfg.double_quant,
        bnb_4bit_compute_dtype=DTYPES[qcfg.compute_dtype],
    )


def quant_device() -> torch.device:
    """Where a quantized base is placed at load time (bitsandbytes weights are quantized there).

    8-bit models cannot be moved after loading, so the base goes straight to this process's GPU.
    """
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def is_quantized(model: torch.nn.Module) -> bool:
    """True for a transformers model (or a peft wrapper of one) loaded in 4 or 8 bits."""
    base = model
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        base = get_base()
    return bool(
        getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False)
    )


def prepare_for_training(model: torch.nn.Module, gradient_checkpointing: bool) -> torch.nn.Module:
    """peft's k-bit preparation: freeze the base, norms and other float weights in fp32.

    Input embeddings are made to require grad even without checkpointing: a checkpointed block
    (reentrant) whose inputs need no grad would give the adapters inside it no gradient.
    """
    from peft import prepare_model_for_kbit_training

    with warnings.catch_warnings():
        # peft 0.21 calls a transformers 5 API that warns of its own deprecation.
        warnings.filterwarnings("ignore", category=FutureWarning)
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    model.enable_input_require_grads()
    return model


def dequantize(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
    """Replace every bitsandbytes layer of a quantized transformers model by a float nn.Linear.

    The new weights are exactly what the quantized forward multiplies by (bitsandbytes'
    de-quantization), so an adapter trained on the quantized base sees the same function.
    The quantization_config leaves the config, so save_pretrained writes a plain model.
    """
    model = model.dequantize()
    model.to(dtype)
    for attr in ("is_loaded_in_4bit", "is_loaded_in_8bit"):
        if hasattr(model, attr):
            setattr(model, attr, False)
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config
    return model


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes held by the model's parameters and buffers as stored (4-bit packed where quantized)."""
    total = 0
    for t in list(model.parameters()) + list(model.buffers()):
        total += t.numel() * t.element_size()
        quant_state = getattr(t, "quant_state", None)
        if quant_state is not None:  # 4-bit block scales (and their own scales when nested)
            absmax = getattr(quant_state, "absmax", None)
            if absmax is not None:
                total += absmax.numel() * absmax.element_size()
            nested = getattr(quant_state, "state2", None)
            if nested is not None and getattr(nested, "absmax", None) is not None:
                total += nested.absmax.numel() * nested.absmax.element_size()
        scb = getattr(t, "SCB", None)  # int8 row scales
        if scb is not None:
            total += scb.numel() * scb.element_size()
    return total
