"""Prompt once per pair: each DPO pair's prompt (its image tokens included) runs through the language model once
for the chosen and the rejected answer, not once per row ("prefix sharing", arXiv 2410.20305).

TRL's batch holds 2n rows: n prompt + chosen rows, then the same n prompts with their rejected answers. Each pair
becomes one packed row: the prompt, the chosen answer, a copy of the prompt's last token, the rejected answer. A
4-d attention mask lets the chosen answer see the prompt and itself, and the copy and the rejected answer see the
prompt without its last token (which the copy stands for) and themselves. The copy and the rejected answer take
the positions they had in the rejected row, so every token sees the same keys at the same positions as in its own
row: the log-probs are the unshared ones up to rounding. The copy is there because one position's hidden state
predicts one label: the prompt's last token predicts the chosen answer's first token, its copy the rejected
answer's. The model's output is put back into TRL's 2n-row layout, so TRL's loss runs unchanged.

Only for attention that takes a 4-d mask (``sdpa``, ``eager``) and families whose every layer is attention
(``FamilySpec.prompt_sharing``: not Qwen3.5's linear-attention layers, which see no mask). A batch that is not
laid out as described (rows that differ in their prompt, an unknown per-token input) runs unshared.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ATTENTION = ("sdpa", "eager")
PER_TOKEN = ("input_ids", "attention_mask", "token_type_ids", "mm_token_type_ids")
FIELDS = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


@dataclass
class Packing:
    """Where each packed token comes from (``row``, ``col`` of the 2n-row batch; ``valid`` false on padding),
    and per packed row the start and length of its copy + rejected segment, whose positions are those ``shift``
    tokens earlier in the packed row."""

    row: object
    col: object
    valid: object
    segments: list[tuple[int, int, int]]
    prompt: list[int]
    masks: dict = field(default_factory=dict)

    def mask(self, dtype, device):
        """The 4-d additive attention mask (0: attend; the dtype's minimum: not), made once per dtype and device
        (the policy's and the reference's forward share it)."""
        key = (dtype, str(device))
        if key not in self.masks:
            self.masks[key] = self._mask(dtype, device)
        return self.masks[key]

    def _mask(self, dtype, device):
        import torch

        n, length = self.valid.shape
        q = torch.arange(length).view(-1, 1)
        k = torch.arange(length).view(1, -1)
        causal = k <= q
        allowed = torch.zeros(n, length, length, dtype=torch.bool)
        for i, ((start, size, _), p) in enumerate(zip(self.segments, self.prompt, strict=True)):
            end = start + size
            allowed[i, :start] = causal[:start] & (k < start)  # prompt and chosen answer
            allowed[i, start:end] = ((k < p - 1) | ((k >= start) & causal))[start:end]
            allowed[i, end:] = (k == q)[end:]  # padding sees itself (a row with no key would be NaN)
        allowed = allowed.to(device)
        out = torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill_(
            ~allowed, torch.finfo(dtype).min
        )
        return out.unsqueeze(1)


def plan(input_ids, attention_mask, labels) -> Packing | None:
    """The packing of a 2n-row batch (None when its rows are not n pairs laid out as TRL's collator lays them)."""
    import torch

    rows, width = input_ids.shape
    if rows % 2 or attention_mask is None:
        return None
    n = rows // 2
    answer, seen = (labels != -100).cpu(), attention_mask.bool().cpu()
    ids = input_ids.cpu()
    sources, segments, prompts = [], [], []
    for a in range(n):
        b = a + n
        p = _prompt_length(answer[a], seen[a])
        c, r = int(answer[a].sum()), int(answer[b].sum())
        if (
            p < 1
            or p != _prompt_length(answer[b], seen[b])
            or not torch.equal(ids[a, :p], ids[b, :p])
            or int(seen[a].sum()) != p + c
            or int(seen[b].sum()) != p + r
            or not answer[a, p : p + c].all()
            or not answer[b, p : p + r].all()
        ):
            return None
        cols = [*range(p + c), p - 1, *range(p, p + r)]
        sources.append(([a] * (p + c + 1) + [b] * r, cols))
        segments.append((p + c, r + 1, c + 1))
        prompts.append(p)
    length = max(len(cols) for _, cols in sources)
    row = torch.zeros(n, length, dtype=torch.long)
    col = torch.zeros(n, length, dtype=torch.long)
    valid = torch.zeros(n, length, dtype=torch.bool)
    for i, ((rs, cols), p) in enumerate(zip(sources, prompts, strict=True)):
        row[i], col[i] = i, p - 1  # padding repeats the prompt's last token (a text token)
        row[i, : len(cols)], col[i, : len(cols)] = torch.tensor(rs), torch.tensor(cols)
        valid[i, : len(cols)] = True
    return Packing(row, col, valid, segments, prompts)


def _prompt_length(answer, seen) -> int:
    hits = answer.nonzero()
    return int(hits[0]) if len(hits) else int(seen.sum())


def pack_inputs(kwargs: dict, labels, packing: Packing) -> tuple[dict, object] | None:
    """The tensor inputs and the labels of the packed rows (None: an input this packing does not know how to
    pack)."""
    import torch

    rows, width = labels.shape
    device = labels.device
    row, col, valid = (t.to(device) for t in (packing.row, packing.col, packing.valid))
    out = {}
    for key, value in kwargs.items():
        if not isinstance(value, torch.Tensor):
            continue  # the call's own (use_cache, output_router_logits ...): added by the caller
        if key in PER_TOKEN:
            packed = value[row, col]
            if key != "input_ids":
                packed = packed.masked_fill(~valid, 0)
            out[key] = packed
        elif value.dim() == 2 and tuple(value.shape) == (rows, width):
            return None  # a per-token input of a kind not known here
        else:  # per image: the rejected rows repeat the chosen rows' images
            half = value.shape[0] // 2 if value.dim() else 0
            if not half or value.shape[0] % 2 or not torch.equal(value[:half], value[half:]):
                return None
            out[key] = value[:half]
    # the copy of the prompt's last token has a prompt token's label: none
    return out, labels[row, col].masked_fill(~valid, -100)


def unpack(output, packing: Packing, packed_labels, rows: int, width: int):
    """The packed output's per-token fields in the 2n-row layout (``(rows, width - 1)``, label-shifted: the field
    at j - 1 belongs to the label at j, in a packed row as in an original one)."""
    import torch

    i, j = (packed_labels != -100).nonzero(as_tuple=True)
    device = packed_labels.device
    dst = (packing.row.to(device)[i, j], packing.col.to(device)[i, j] - 1)
    fields = {}
    for name in FIELDS:
        value = getattr(output, name, None)
        if isinstance(value, torch.Tensor):
            fields[name] = value.new_zeros(rows, width - 1).index_put(dst, value[i, j - 1])
    return type(output)(**{**dict(output.items()), **fields})


class PromptShared:
    """``model`` called as TRL's DPO loss calls it (``labels=..., fused_lm_head=True``) on a 2n-row batch, with
    each pair's prompt run once (:func:`plan`); any other call, or a batch that cannot be packed, goes to
    ``model`` as it is. ``language_model``: the module the position ids and attention mask are rewritten for.
    ``packed``: where a batch's packing is kept, so that calls sharing the dict with the same inputs get the same
    packed tensors (shared vision features are found by tensor)."""

    def __init__(self, model, language_model, packed: dict | None = None):
        self.model, self.language_model = model, language_model
        self.packed = {} if packed is None else packed
        self.shared_batches = 0

    def __call__(self, labels=None, fused_lm_head=False, **kwargs):
        import torch

        packed = self._pack(kwargs, labels) if fused_lm_head else None
        if packed is None:
            return self.model(labels=labels, fused_lm_head=fused_lm_head, **kwargs)
        packing, tensors, packed_labels = packed
        inputs = {**tensors, **{k: v for k, v in kwargs.items() if not isinstance(v, torch.Tensor)}}
        hook = self.language_model.register_forward_pre_hook(
            lambda module, args, kw: (args, _shared_attention(kw, packing)), with_kwargs=True
        )
        try:
            output = self.model(labels=packed_labels, fused_lm_head=True, **inputs)
        finally:
            hook.remove()
        self.shared_batches += 1
        return unpack(output, packing, packed_labels, *labels.shape)

    def _pack(self, kwargs: dict, labels):
        import torch

        key = tuple((k, id(v)) for k, v in kwargs.items() if isinstance(v, torch.Tensor))
        kept = self.packed.get(key)
        if kept is not None and torch.equal(kept[0], labels):
            return kept[1]
        packing = plan(kwargs.get("input_ids"), kwargs.get("attention_mask"), labels)
        inputs = pack_inputs(kwargs, labels, packing) if packing is not None else None
        result = None if inputs is None else (packing, *inputs)
        self.packed[key] = (labels, result)
        return result


def _shared_attention(kwargs: dict, packing: Packing) -> dict:
    """The language model's inputs with the packed rows' attention mask, and the copy and rejected answer at the
    positions they had in their own row (the model numbered the packed row straight through)."""
    import torch

    embeds = kwargs["inputs_embeds"]
    n, length = embeds.shape[:2]
    positions = kwargs.get("position_ids")
    if positions is None:
        positions = torch.arange(length, device=embeds.device).expand(n, length)
    moved = positions.clone()
    for i, (start, size, shift) in enumerate(packing.segments):
        moved[..., i, start : start + size] = positions[..., i, start - shift : start - shift + size]
    return {**kwargs, "position_ids": moved, "attention_mask": packing.mask(embeds.dtype, embeds.device)}
