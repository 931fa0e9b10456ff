"""Where the bundled data lives: `data/` at the repository root (corpus, tokenizer, SFT set)."""

import os

DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "data")
