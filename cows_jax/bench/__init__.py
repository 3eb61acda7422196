"""`cows-jax bench NAME`: one module per benchmark (main.py: the command line; common.py: what
they share). The pipeline never imports from here."""
