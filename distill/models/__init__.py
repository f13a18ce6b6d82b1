"""The student model: Flax T5 (`t5`), Hugging Face checkpoint import/export (`checkpoints`, `export`)."""
