"""Train a CGD student: `accelerate launch [--config_file <accelerate config>] examples/train.py --config recipe.yaml`.

With no arguments it runs the offline demo recipe (tiny local model, shipped CGD records, CPU). Every flag of TRL's
`sft.py` works (ScriptArguments, CGDConfig, ModelConfig, DatasetMixtureConfig); flags override the YAML recipe.
"""

from cgd_trainer.train import cli_main

if __name__ == "__main__":
    cli_main()
