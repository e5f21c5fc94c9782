"""What to train on: GLUE and WebNLG, from the hub or a local directory, sharded over ranks."""
