"""What `spr train` (DPO) and `spr grpo` share: which parts train, the training rows, precision and device
settings, checkpoints that resume, and the progress and log callback. The trainers themselves are
``spr.train`` and ``spr.grpo``."""
