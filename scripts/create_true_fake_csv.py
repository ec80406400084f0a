#!/usr/bin/env python
"""Make a balanced real/AI-generated CSV for training; same as ``spai-svd make-csv`` (see spai_hf.make_csv)."""

import sys

from spai_hf.make_csv import main

if __name__ == "__main__":
    sys.exit(main())
