"""Batches with little padding: length-grouped sampling, dynamic padding and SFT packing.

Packing puts several examples into one row. To keep it exact (each example sees only itself,
as if alone) a packed batch carries position_ids that restart at 0 per example and a 4D
block-diagonal causal mask. transformers 5.x passes a 4D mask through unchanged
(masking_utils._preprocess_mask_arguments) to sdpa and eager attention in Llama, Qwen2 and
GPT-2. The first label of every packed example is -100: unpacked, position 0 is never
predicted, and packed it would be "predicted" from the previous example.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

IGNORE = -100
_PAD_DEFAULTS = {"attention_mask": 0, "token_type_ids": 0, "position_ids": 0}


class LengthGroupedSampler(torch.utils.data.Sampler[int]):
    """Shuffled indices where each consecutive run of batch_size has similar lengths.

    Indices are shuffled, cut into mega-batches of 50 * batch_size, each sorted by length and
    split into batches; the batch order is then shuffled (the batch holding the longest
    example goes first, so running out of memory shows on step one). A short batch, if any,
    stays last so a DataLoader with the same batch_size cuts exactly these batches.
    Deterministic for (seed, epoch); call set_epoch each epoch for a new order.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        seed: int,
        epoch: int = 0,
        shuffle: bool = True,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = epoch
        self.shuffle = shuffle

    def set_epoch(self, epoch: int) -> None:
        """Select the order for this epoch (same seed + epoch -> same order)."""
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        """The batches of indices this epoch yields, in order."""
        n, bs = len(self.lengths), self.batch_size
        lengths = self.lengths
        if not self.shuffle:
            order = sorted(range(n), key=lambda i: -lengths[i])
            return [order[i : i + bs] for i in range(0, n, bs)]
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(n, generator=gen).tolist()
        mega = 50 * bs
        batches: list[list[int]] = []
        for start in range(0, n, mega):
            group = sorted(perm[start : start + mega], key=lambda i: -lengths[i])
            batches.extend(group[i : i + bs] for i in range(0, len(group), bs))
        short = [b for b in batches if len(b) < bs]
        full = [b for b in batches if len(b) == bs]
        full = [full[i] for i in torch.randperm(len(full), generator=gen).tolist()]
        if full:
            longest = max(range(len(full)), key=lambda j: lengths[full[j][0]])
            full[0], full[longest] = full[longest], full[0]
        return full + short

    def __iter__(self) -> Iterator[int]:
        for batch in self.batches():
            yield from batch


def _pad(seqs: list[list[int]], value: int, length: int) -> torch.Tensor:
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for row, seq in enumerate(seqs):
        out[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
    return out


def pad_batch(
    features: list[dict[str, Any]],
    pad_id: int,
    keys: Sequence[str] = ("input_ids", "labels", "attention_mask", "token_type_ids"),
    label_pad: int = IGNORE,
) -> dict[str, torch.Tensor]:
    """Right-pad the listed keys to the longest sequence in the batch.

    input_ids pad with pad_id, labels with label_pad, masks and type ids with 0. Scalar
    values (a class label) are stacked as they are. attention_mask is built when absent.
    """
    if not features:
        raise ValueError("cannot collate an empty batch")
    longest = max(len(f["input_ids"]) for f in features)
    batch: dict[str, torch.Tensor] = {}
    for key in keys:
        if key not in features[0]:
            continue
        values = [f[key] for f in features]
        if not isinstance(values[0], (list, tuple)):
            batch[key] = torch.as_tensor(values)
            continue
        fill = (
            pad_id
            if key == "input_ids"
            else label_pad
            if key == "labels"
            else _PAD_DEFAULTS.get(key, 0)
        )
        batch[key] = _pad([list(v) for v in values], fill, longest)
    if "attention_mask" not in batch:
        batch["attention_mask"] = _pad([[1] * len(f["input_ids"]) for f in features], 0, longest)
    return batch


class _FirstFit:
    """Leftmost bin with room >= need in O(log n): a max segment tree over bin capacities."""

    def __init__(self, n: int, capacity: int) -> None:
        self.size = 1
        while self.size < max(n, 1):
            self.size *= 2
        self.capacity = capacity
        self.tree = [capacity] * (2 * self.size)  # every (not yet opened) bin starts empty

    def take(self, need: int) -> int:
        node = 1
        while node < self.size:  # descend left whenever the left subtree has room
            node = 2 * node if self.tree[2 * node] >= need else 2 * node + 1
        bin_index = node - self.size
        self.tree[node] -= need
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2
        return bin_index


def pack_features(features: list[dict[str, Any]], max_length: int) -> list[dict[str, Any]]:
    """First-fit-decreasing packing of SFT features into sequences of at most max_length.

    Each packed feature has input_ids, labels, position_ids (0.. per example), seq_lens and
    length. Longer features are truncated to max_length (encode already truncates).
    """
    items = [(f["input_ids"][:max_length], f["labels"][:max_length]) for f in features]
    order = sorted(range(len(items)), key=lambda i: -len(items[i][0]))  # stable: ties keep order
    fit = _FirstFit(len(items), max_length)
    bins: list[list[int]] = []
    for i in order:
        b = fit.take(max(len(items[i][0]), 1))
        if b == len(bins):
            bins.append([])
        bins[b].append(i)
    packed = []
    for members in bins:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        seq_lens: list[int] = []
        for i in members:
            seq, lab = items[i]
            ids.extend(seq)
            labels.extend([IGNORE, *lab[1:]] if lab else [])
            positions.extend(range(len(seq)))
            seq_lens.append(len(seq))
        packed.append(
            {
                "input_ids": ids,
                "labels": labels,
                "position_ids": positions,
                "seq_lens": seq_lens,
                "length": len(ids),
            }
        )
    return packed


def block_causal_mask(
    seq_lens: list[list[int]], length: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """[B, 1, L, L] mask: causal within each packed example, nothing across or to padding.

    dtype bool -> True where attention is allowed; a float dtype -> additive 0 / finfo.min.
    Padding queries attend to themselves only, so no row is fully masked (that gives NaN).
    """
    allowed = torch.zeros(len(seq_lens), 1, length, length, dtype=torch.bool)
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    for row, lens in enumerate(seq_lens):
        start = 0
        for n in lens:
            allowed[row, 0, start : start + n, start : start + n] = causal[:n, :n]
            start += n
        pad = torch.arange(start, length)
        allowed[row, 0, pad, pad] = True
    if dtype == torch.bool:
        return allowed
    mask = torch.zeros(allowed.shape, dtype=dtype)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def collate_packed(
    packed: list[dict[str, Any]], pad_id: int, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """Batch packed features: input_ids, labels, position_ids and a 4D block-causal mask.

    The additive float mask works with sdpa and eager attention; dtype must equal the
    model's compute dtype when it is not run under autocast (bf16 weights -> torch.bfloat16).
    dtype=torch.bool gives a smaller mask that sdpa accepts but eager attention does not.
    """
    longest = max(len(p["input_ids"]) for p in packed)
    return {
        "input_ids": _pad([p["input_ids"] for p in packed], pad_id, longest),
        "labels": _pad([p["labels"] for p in packed], IGNORE, longest),
        "position_ids": _pad([p["position_ids"] for p in packed], 0, longest),
        "attention_mask": block_causal_mask([p["seq_lens"] for p in packed], longest, dtype),
    }


def check_labels(batch: dict[str, torch.Tensor]) -> None:
    """Raise ValueError when no label in the batch is in the loss (all -100)."""
    labels = batch["labels"]
    if not bool((labels != IGNORE).any()):
        raise ValueError(
            "every label in this batch is masked (-100): the prompt fills max_length; "
            "raise model.max_length or shorten prompts"
        )
