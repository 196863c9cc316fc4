"""Mechanics shared by several stages, grouped by topic: pruning, distillation, budgets. Stages import these;
these import the core, never a stage."""
