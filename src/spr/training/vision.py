"""Vision once per pair: the image features of a DPO step computed for each pair's image once, not four times.

TRL's vision preference collator repeats every image for the chosen and the rejected row (``images * 2``), so
a step runs the vision tower on each image twice in the policy forward and twice more in the reference forward.
With the vision tower frozen (the default) its features are the same every time. :func:`shared_vision` wraps
the multimodal model's ``get_image_features`` (which every family's forward calls) for the length of one step:
when each image tensor of the call is two equal halves, the features of the first half are computed once (no
gradient: the tower is frozen), repeated for the second, and handed again to every later call with the same
tensors (the reference forward). A call whose images are there once each (a batch packed with each pair's
prompt once, :mod:`spr.training.prefix`, or halves that differ) is computed once, without gradient, and handed
to the later calls with the same tensors alike.
"""

from __future__ import annotations

import contextlib


class _NotDoubled(Exception):
    """A call whose image tensors are not a batch repeated twice: computed as it is."""


def _first_half(value):
    import torch

    if not isinstance(value, torch.Tensor):
        return value
    n = value.shape[0] if value.dim() else 1
    if value.dim() == 0 or n % 2 or not torch.equal(value[: n // 2], value[n // 2 :]):
        raise _NotDoubled
    return value[: n // 2]


def _twice(features):
    """Features of the first half, repeated for the second: per-image lists / tuples and batched tensors."""
    import torch

    if isinstance(features, torch.Tensor):
        return torch.cat([features, features])
    if isinstance(features, list | tuple):
        return type(features)(list(features) * 2)
    raise _NotDoubled


def multimodal_model(model, spec):
    """The module whose forward calls ``get_image_features``: the parent of the family's language model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_submodule(spec.language_module.rsplit(".", 1)[0])


def vision_frozen(model, spec) -> bool:
    """No parameter of the vision encoder or projector trains (LoRA or full, without ``train_vision``)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    modules = dict(base.named_modules())
    return not any(
        p.requires_grad for name in spec.vision_modules if name in modules for p in modules[name].parameters()
    )


@contextlib.contextmanager
def shared_vision(modules):
    """Within the block, the ``get_image_features`` of each of ``modules`` (a policy's and a frozen reference's
    multimodal models: the same frozen weights) computes a doubled batch's features once and shares them."""
    shared: dict[tuple, object] = {}

    def wrap(original):
        import torch

        def get_image_features(*args, **kwargs):
            key = tuple(id(v) for v in (*args, *kwargs.values()) if isinstance(v, torch.Tensor))
            if key in shared:
                return shared[key]
            try:
                half_args = [_first_half(v) for v in args]
                half_kwargs = {k: _first_half(v) for k, v in kwargs.items()}
                with torch.no_grad():
                    half = original(*half_args, **half_kwargs)
                # the forwards read the pooled features (the image tokens' embeddings) and, for Qwen3-VL, the
                # deepstack features (per tower layer, per image)
                fields = {"pooler_output": _twice(half.pooler_output)}
                deep = getattr(half, "deepstack_features", None)
                if deep is not None:
                    fields["deepstack_features"] = [_twice(f) for f in deep]
                out = type(half)(**fields)
            except _NotDoubled:  # each image once already (a packed batch): computed once for every model
                with torch.no_grad():
                    out = original(*args, **kwargs)
            shared[key] = out
            return out

        return get_image_features

    patched = []
    try:
        for module in dict.fromkeys(modules):  # once each, in order
            patched.append(module)
            module.get_image_features = wrap(module.get_image_features)
        yield
    finally:
        for module in patched:
            del module.get_image_features  # the class's own method again
        shared.clear()
