"""Fine-tuning and evaluation (issue 3)."""
