"""Pruning: its settings, the schedule, weight masks, channel groups (torch-pruning), block dropping."""
