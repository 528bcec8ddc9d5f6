"""Data: contrastive pairs for training, DailyDilemmas for evaluation, and the built-in honesty set."""
