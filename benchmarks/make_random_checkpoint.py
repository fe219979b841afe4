"""Write a random-weight emotion2vec model directory in the official (FunASR / Hugging Face) format.

    python benchmarks/make_random_checkpoint.py /tmp/e2v-large --size large --seed 0

The directory (config.yaml, configuration.json, model.pt with `d2v_model.` keys and a training-only
decoder, tokens.txt) loads in FunASR's `AutoModel(model=DIR)` and in `emoserve --model DIR`, so both
can be compared on the very same tensors. Every tensor is random, norm gains and ALiBi scales
included, so a tensor loaded into the wrong place cannot hide.
"""

from __future__ import annotations

import argparse

from emoserve.model.config import BASE, PLUS_BASE, PLUS_LARGE, TINY
from emoserve.testing import write_random_model_dir

SIZES = {"tiny": (TINY, 64), "base": (PLUS_BASE, 384), "base-nohead": (BASE, 384), "large": (PLUS_LARGE, 768)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory")
    parser.add_argument("--size", choices=SIZES, default="large",
                        help="large = emotion2vec_plus_large, base = plus_base, base-nohead = emotion2vec_base")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config, decoder_dim = SIZES[args.size]
    path = write_random_model_dir(args.directory, config, args.seed, decoder_dim)
    print(f"wrote a random {args.size} model directory to {path}")


if __name__ == "__main__":
    main()
