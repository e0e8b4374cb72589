"""Tasks the comparisons train: classification (and the commands that run them)."""
