"""A Hugging Face directory with a model's shapes and tokenizer but freshly initialised weights (transformers'
own init, seed 0): for benches on a machine the real weights cannot travel to (``device``: a GPU with no
internet). Speed depends on shapes alone, so a bench on these is the bench on the real model.

    python experiments/random_weights.py --like DIR_WITH_CONFIG_AND_TOKENIZER --out DIR [--layers N]
"""

import argparse
import glob
import os
import shutil

import torch
import transformers


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--like", required=True, help="a directory with config.json and the tokenizer's files")
    parser.add_argument("--out", required=True)
    parser.add_argument("--layers", type=int, default=None, help="fewer layers, for a quick smoke test")
    args = parser.parse_args()
    config = transformers.AutoConfig.from_pretrained(args.like)
    if args.layers:
        config.num_hidden_layers = args.layers
    torch.manual_seed(0)
    causal = any(name.endswith("ForCausalLM") for name in (config.architectures or []))
    model = (transformers.AutoModelForCausalLM if causal else transformers.AutoModel).from_config(config)
    model.to(torch.float32).save_pretrained(args.out)
    for path in glob.glob(os.path.join(args.like, "*")):
        name = os.path.basename(path)
        if name.startswith(("tokenizer", "vocab", "special_tokens", "merges")) or name.endswith(".jinja"):
            shutil.copy(path, args.out)
    print(f"{args.out}: {sum(p.numel() for p in model.parameters()):,} parameters, random")


if __name__ == "__main__":
    main()
