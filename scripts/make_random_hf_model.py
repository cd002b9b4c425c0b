"""Build a random-init Hugging Face decoder reward model locally (no hub): a byte-level BPE tokenizer
trained on the bundled sample with a ChatML chat template, a Qwen2 `*ForSequenceClassification` with one
output, saved with safetensors. For benchmarks of the Hugging Face backend; its rewards mean nothing.

    python scripts/make_random_hf_model.py /tmp/qwen2-27m --hidden 512 --layers 8 --vocab 8000
"""

import argparse
from pathlib import Path

from app.random_hf_models import decoder_config, decoder_tokenizer, save_model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", type=Path, help="directory to create")
    parser.add_argument("--hidden", type=int, default=512, help="hidden size (64 per attention head)")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=8000, help="tokenizer vocabulary size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    tokenizer = decoder_tokenizer(args.vocab)
    heads = args.hidden // 64
    config = decoder_config(
        "qwen2", vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers, num_attention_heads=heads, num_key_value_heads=max(1, heads // 4),
        max_position_embeddings=4096,
    )  # fmt: skip
    save_model(args.output, config, tokenizer, seed=args.seed, init_std=0.02)
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
