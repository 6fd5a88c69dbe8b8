"""Train a CGD student: `accelerate launch [--config_file <accelerate config>] -m cgd_trainer.scripts.train --config
<recipe>`, or from a clone `accelerate launch ... examples/train.py --config <recipe>` (a link to this file).

`--config` takes a YAML file or the name of a recipe shipped with the package (`qwen2.5-math-7b/full`, `tiny/cpu`).
With no arguments it runs the offline `tiny/cpu` recipe (tiny local model, shipped CGD records, CPU). Every flag of
TRL's `sft.py` works (ScriptArguments, CGDConfig, ModelConfig, DatasetMixtureConfig); flags override the YAML
recipe. It is `cgd train` under another name: the same flags, exit statuses and one-line errors, except that this
process is the launched one, so launch settings (`--num_processes`, `--accelerate_config`) are not acted on here.
"""

import os
import sys

from cgd_trainer.cli import main
from cgd_trainer.commands.train import LAUNCHED_ENV

if __name__ == "__main__":
    os.environ[LAUNCHED_ENV] = "1"
    sys.exit(main(["train", *sys.argv[1:]]))
