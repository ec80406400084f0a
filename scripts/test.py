#!/usr/bin/env python
"""Evaluate the base model or an adapter on a labelled CSV; same as ``spai-svd test`` (``--help`` for options)."""

import sys

from spai_hf.cli import main

if __name__ == "__main__":
    sys.exit(main(["test", *sys.argv[1:]]))
