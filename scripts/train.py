#!/usr/bin/env python
"""Train a per-generator SVD residual adapter; same as ``spai-svd train`` (see spai_hf.training).

Several processes: ``torchrun --nproc_per_node N scripts/train.py ...`` or ``accelerate launch scripts/train.py ...``.
"""

import sys

from spai_hf.training import main

if __name__ == "__main__":
    sys.exit(main())
