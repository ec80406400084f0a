#!/usr/bin/env python
"""Score images under the base model and any adapters; same as ``spai-svd infer`` (``--help`` for options)."""

import sys

from spai_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
