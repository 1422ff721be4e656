"""TRL's GRPOTrainer with the run state and checks every SPR trainer has (:class:`spr.training.lifecycle.SprTrainer`)."""

from __future__ import annotations

from trl import GRPOTrainer

from .lifecycle import SprTrainer


class SprGRPOTrainer(SprTrainer, GRPOTrainer):
    pass
