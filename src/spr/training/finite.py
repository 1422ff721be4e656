"""Training stops at the first non-finite loss, gradient or weight, with one line that says where.

transformers replaces a NaN loss by the running mean in its log (``logging_nan_inf_filter``) and steps on, so a
diverged run (``--learning-rate inf``) used to finish with rc 0 and an adapter of NaNs that `spr run` would then
merge and evaluate. Each check costs one device sync: the gradients before the optimizer step, the trainable
weights after it (an infinite learning rate turns finite gradients into NaN weights).
"""

from __future__ import annotations

from transformers import TrainerCallback

from ..errors import UserError


class TrainingDiverged(UserError):
    """The loss, a gradient or a weight is NaN or infinite: nothing after the last checkpoint is kept."""


def _advice(args) -> str:
    return (
        f"lower --learning-rate (now {args.learning_rate:g}) or check the data; the checkpoints saved before "
        "this step are intact, and the final weights were not written"
    )


def first_non_finite(named_tensors) -> str | None:
    """The name of the first tensor holding a NaN or an infinity (one device sync for all of them)."""
    import torch

    named = [(n, t) for n, t in named_tensors if t is not None and t.numel()]
    if not named:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in named]).cpu()
    if bool(finite.all()):
        return None
    return next(n for (n, _), ok in zip(named, finite.tolist(), strict=True) if not ok)


def check_loss(loss, step: int, args) -> None:
    import torch

    if not bool(torch.isfinite(loss.detach()).all()):
        raise TrainingDiverged(
            f"training diverged at step {step}: the loss is {loss.item():g}; {_advice(args)}"
        )


class StopOnNonFinite(TrainerCallback):
    """Raises :class:`TrainingDiverged` at the first non-finite gradient or trainable weight."""

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        bad = first_non_finite((n, p.grad) for n, p in model.named_parameters() if p.requires_grad)
        if bad:
            raise TrainingDiverged(
                f"training diverged at step {state.global_step + 1}: the gradient of {bad} is not finite; "
                + _advice(args)
            )

    def on_optimizer_step(self, args, state, control, model=None, **kwargs):
        bad = first_non_finite((n, p) for n, p in model.named_parameters() if p.requires_grad)
        if bad:
            raise TrainingDiverged(
                f"training diverged at step {state.global_step + 1}: the update made {bad} non-finite; "
                + _advice(args)
            )
