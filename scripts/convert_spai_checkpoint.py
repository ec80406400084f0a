#!/usr/bin/env python
"""Convert the original SPAI checkpoint (spai.pth) into a transformers folder: SRC DST."""

import argparse

from spai_hf.convert_spai_checkpoint import CheckpointMismatchError, convert_spai_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("src", help="original checkpoint, torch.save({'model': state_dict, ...})")
    parser.add_argument("dst", help="output folder (config.json, model.safetensors, preprocessor_config.json)")
    parser.add_argument("--num-attention-heads", type=int, help="backbone heads (default: hidden size // 64)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing DST")
    args = parser.parse_args()
    try:
        out = convert_spai_checkpoint(
            args.src, args.dst, overwrite=args.overwrite, num_attention_heads=args.num_attention_heads
        )
    except (CheckpointMismatchError, FileExistsError, FileNotFoundError) as error:
        parser.exit(1, f"error: {error}\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
