"""TRL's DPOTrainer with SPR's three savings (docs/training.md, "What is shared, and what it saves"):

- **reference log-probs once** (:mod:`spr.training.reference`): the frozen reference's log-probs of a pair are
  computed in the first step that trains on it (beside the policy's forward, on the same image features and
  packed prompt) and kept in the cache beside ``dpo.jsonl``; once known, the collator puts them in each batch and
  TRL's loss takes them instead of running the reference, exactly as with its own ``precompute_ref_log_probs``
  (which TRL refuses for vision data). A full fine-tuning's reference copy is freed once every pair's are known.
- **vision once per pair** (:mod:`spr.training.vision`): with the vision tower frozen, each step computes every
  pair's image features once for chosen, rejected and the reference forward.
- **prompt once per pair** (:mod:`spr.training.prefix`): each pair's prompt runs through the language model once
  for its chosen and rejected answer, for the policy and the reference.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from trl import DPOTrainer

from .lifecycle import SprTrainer
from .prefix import ATTENTION, PromptShared
from .reference import ReferenceCache
from .vision import multimodal_model, shared_vision, vision_frozen

log = logging.getLogger(__name__)


@dataclass
class CachedReference:
    """Where the reference's log-probs of ``rows`` (the dataset's rows, in order) are kept, and under what."""

    rows: list[dict]
    path: Path
    settings: dict


class SprDPOTrainer(SprTrainer, DPOTrainer):
    """``reference``: where the reference's log-probs are cached (None: the reference runs in every step);
    ``vision_spec``: the family's FamilySpec, to share vision features when the vision tower is frozen;
    ``prompt_spec``: the family's FamilySpec, to run each pair's prompt once (where the family and the attention
    allow it)."""

    def __init__(
        self, *args, reference: CachedReference | None = None, vision_spec=None, prompt_spec=None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.spr_reference = reference
        self.spr_cache: ReferenceCache | None = None  # opened when training starts
        self.spr_computed: list[tuple] = []  # the reference values this step computed: (id, chosen, rejected)
        # the features are shared only while they do not change: with the vision tower frozen
        self.spr_spec = (
            vision_spec if vision_spec is not None and vision_frozen(self.model, vision_spec) else None
        )
        self.spr_prompt_spec = (
            prompt_spec if prompt_spec is not None and prompt_shareable(self.model, prompt_spec) else None
        )

    def train(self, *args, **kwargs):
        if self.spr_reference is not None:
            ref = self.spr_reference
            log.info("reference log-probs: %s", ref.path)
            self.spr_cache = ReferenceCache(ref.rows, ref.path, ref.settings, self.accelerator)
            self.data_collator.reference = self.spr_cache.values
            self._when_every_reference_is_known()
        return super().train(*args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        ids = inputs.pop("pair_ids", None)
        packed: dict = {}  # one packing of the batch for the policy and the reference (so vision can be shared)
        policy = self.shared_prompt(model, packed)
        known = "ref_chosen_logps" in inputs
        with self.shared_vision():
            if known or (policy is model and self.spr_cache is None):
                with self._reference_given(known):  # the cache's values, or TRL's reference in every step
                    return super().compute_loss(policy, inputs, return_outputs, num_items_in_batch)
            # the reference here, on the policy's packed prompt and image features (TRL would run it on the rows
            # unshared), kept in the cache for later epochs and runs
            reference = self.shared_prompt(model if self.ref_model is None else self.ref_model, packed)
            chosen, rejected = DPOTrainer.compute_ref_log_probs(self, reference, inputs)
            given = {**inputs, "ref_chosen_logps": chosen, "ref_rejected_logps": rejected}
            with self._reference_given(True):
                loss = super().compute_loss(policy, given, return_outputs, num_items_in_batch)
        self.spr_computed += list(zip(ids or [], chosen.float().tolist(), rejected.float().tolist()))
        return loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.spr_computed = []
        loss = super().training_step(model, inputs, num_items_in_batch)
        cache = self.spr_cache
        if cache is not None and not cache.complete:
            # after the backward, in every process and every step until complete (a step whose batch this process
            # knew takes part with nothing): the processes exchange what they computed at the same point
            cache.add(self.spr_computed)
            self._when_every_reference_is_known()
        return loss

    @contextlib.contextmanager
    def _reference_given(self, given: bool):
        """TRL's loss reads the reference's log-probs from the batch (``given``) or runs the reference itself."""
        before, self.precompute_ref_logps = self.precompute_ref_logps, given
        try:
            yield
        finally:
            self.precompute_ref_logps = before

    def _when_every_reference_is_known(self) -> None:
        """A full fine-tuning's frozen copy is no longer needed once every pair's reference values are known."""
        if self.spr_cache.complete and self.ref_model is not None:
            self.accelerator._models = [m for m in self.accelerator._models if m is not self.ref_model]
            self.ref_model = None

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(self.shared_prompt(model), inputs)

    def shared_prompt(self, model, packed: dict | None = None):
        """``model``, running each pair's prompt once when the trainer was set up to (else ``model`` itself);
        calls with the same ``packed`` dict reuse one packing of a batch."""
        if self.spr_prompt_spec is None:
            return model
        base = self.accelerator.unwrap_model(model)
        base = base.get_base_model() if hasattr(base, "get_base_model") else base
        return PromptShared(model, base.get_submodule(self.spr_prompt_spec.language_module), packed)

    def shared_vision(self):
        """Vision features shared within the block (a no-op unless the trainer was set up to share them)."""
        if self.spr_spec is None:
            return contextlib.nullcontext()
        models = [m for m in (self.model, self.ref_model) if m is not None]
        return shared_vision(
            [multimodal_model(self.accelerator.unwrap_model(m), self.spr_spec) for m in models]
        )


def prompt_shareable(model, spec) -> bool:
    """Whether the family's every layer is attention (``FamilySpec.prompt_sharing``) and that attention takes a
    4-d mask (``sdpa`` or ``eager``, not flash-attention)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    language = base.get_submodule(spec.language_module)
    attention = getattr(language.config, "_attn_implementation", None)
    if spec.prompt_sharing and attention not in ATTENTION:
        log.info("prompts not shared: attention %s takes no 4-d mask (sdpa and eager do)", attention)
    return spec.prompt_sharing and attention in ATTENTION
