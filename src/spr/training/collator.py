"""TRL's vision preference collator, made safe for truncation: it never cuts inside the prompt, which holds the
image tokens (cutting one makes the model's image features and its image tokens disagree)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def safe_collator(processor, max_length: int | None):
    """TRL's vision preference collator, truncating to ``max_length`` but never inside the prompt: the prompt
    holds the image tokens, and cutting one makes the model's image features and tokens disagree."""
    from trl.trainer.dpo_trainer import DataCollatorForVisionPreference

    class SafeVisionPreferenceCollator(DataCollatorForVisionPreference):
        warned = False

        def torch_call(self, examples):
            keep = self.max_length
            self.max_length = None
            try:
                out = super().torch_call(examples)
            finally:
                self.max_length = keep
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

    return SafeVisionPreferenceCollator(processor=processor, max_length=max_length)
