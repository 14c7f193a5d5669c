"""``python -m training.train``: see ``training/train/__init__.py``."""
from training.train.cli import main

main()
