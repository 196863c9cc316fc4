"""Distillation mechanics: teacher settings and resolution, soft targets and losses, the output discriminator."""
