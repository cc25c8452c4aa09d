"""Training and distillation: losses, tasks (what one step computes) and the trainer (the loop)."""
