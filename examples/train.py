"""Train a CGD student: `accelerate launch [--config_file <accelerate config>] examples/train.py --config recipe.yaml`.

With no arguments it runs the offline demo recipe (tiny local model, shipped CGD records, CPU). Every flag of TRL's
`sft.py` works (ScriptArguments, CGDConfig, ModelConfig, DatasetMixtureConfig); flags override the YAML recipe. It is
`cgd train` under another name: the same flags, exit statuses and one-line errors.
"""

import sys

from cgd_trainer.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
