#!/usr/bin/env python
"""Convert the original SPAI checkpoint (spai.pth) into a transformers folder: SRC DST."""

import sys

from spai_hf.convert_spai_checkpoint import main

if __name__ == "__main__":
    sys.exit(main())
