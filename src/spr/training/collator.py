"""TRL's vision preference collator, made safe for truncation: it never cuts inside the prompt, which holds the
image tokens (cutting one makes the model's image features and its image tokens disagree). With ``process_once``
each pair's image and prompt are processed once, not once for the chosen and again for the rejected row; with a
cached reference (:mod:`spr.training.reference`) it also hands each batch the reference's log-probs of its pairs."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class ProcessedOnce:
    """``processor``, except that images and prompts repeated twice, as TRL's collator passes them (each pair's
    for its chosen row, then again for its rejected row), are processed once and the tensors repeated: the same
    batch, half the image processing. Anything else goes to the processor as it is."""

    def __init__(self, processor):
        self.processor = processor

    def __getattr__(self, name):  # everything else is the processor's
        if name.startswith("__") or "processor" not in self.__dict__:
            raise AttributeError(name)
        return getattr(self.processor, name)

    def __call__(self, images=None, text=None, **kwargs):
        import torch
        from transformers import BatchFeature

        n = (
            len(text) // 2
            if isinstance(text, list) and images is not None and len(images) == len(text)
            else 0
        )
        if not n or any(images[i] is not images[n + i] or text[i] != text[n + i] for i in range(n)):
            return self.processor(images=images, text=text, **kwargs)
        half = self.processor(images=images[:n], text=text[:n], **kwargs)
        if not all(isinstance(v, torch.Tensor) for v in half.values()):
            return self.processor(images=images, text=text, **kwargs)
        return BatchFeature({k: torch.cat([v, v]) for k, v in half.items()})


def safe_collator(processor, max_length: int | None, process_once: bool = False):
    """TRL's vision preference collator, truncating to ``max_length`` but never inside the prompt: the prompt
    holds the image tokens, and cutting one makes the model's image features and tokens disagree.
    ``process_once``: each pair's image and prompt processed once (:class:`ProcessedOnce`)."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    class SafeVisionPreferenceCollator(DataCollatorForVisionPreference):
        warned = False
        reference: dict | None = None  # pair id -> the reference's (chosen, rejected) log-probs, those known

        def torch_call(self, examples):
            keep = self.max_length
            self.max_length = None
            try:
                out = super().torch_call(examples)
            finally:
                self.max_length = keep
            out["pair_ids"] = [ex["id"] for ex in examples]
            if self.reference is not None and all(ex["id"] in self.reference for ex in examples):
                add_reference(out, [self.reference[ex["id"]] for ex in examples])
            if keep is None:
                return out
            cm = out["completion_mask"]
            # after flush-left, the prompt of each row ends where its completion starts
            prompt_len = int((cm.cumsum(1) == 0).sum(1).max())
            limit = max(keep, prompt_len + 1)
            if limit > keep and not SafeVisionPreferenceCollator.warned:
                log.warning(
                    "max_length %d is shorter than a prompt with its image tokens (%d tokens): kept the prompt whole",
                    keep,
                    prompt_len,
                )
                SafeVisionPreferenceCollator.warned = True
            seq = out["input_ids"].shape[1]
            for k in (
                "input_ids",
                "attention_mask",
                "completion_mask",
                "token_type_ids",
                "mm_token_type_ids",
            ):
                if k in out and out[k].dim() == 2 and out[k].shape[1] == seq:
                    out[k] = out[k][:, :limit]
            return out

    return SafeVisionPreferenceCollator(
        processor=ProcessedOnce(processor) if process_once else processor, max_length=max_length
    )


def add_reference(batch: dict, pairs: list[tuple[float, float]]) -> None:
    """The reference's log-probs under the names TRL's loss reads them by (``precompute_ref_log_probs``)."""
    import torch

    batch["ref_chosen_logps"] = torch.tensor([c for c, _ in pairs], dtype=torch.float32)
    batch["ref_rejected_logps"] = torch.tensor([r for _, r in pairs], dtype=torch.float32)
