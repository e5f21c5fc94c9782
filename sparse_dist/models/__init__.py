"""What to train: pre-trained transformers models (encoders and T5), and tiny ones for tests."""
