"""The offline demo: the whole method with no network and no GPU.

- `problems`: the deterministic arithmetic word problems and the shipped CGD records (`data/demo_cgd.jsonl`);
- `teacher`: the programmatic student and teacher behind the `demo` backend;
- `tiny`: tiny models built from config and tokenizers trained locally (`builtin:tiny-chatml` and friends);
- `run`: `cgd demo` — generate, build, train with the recipes in `recipes/`.

The demo sits on top of the package: production code reaches its `builtin:` names only through
`cgd_trainer.sources` and its backend only through the backend registry, both by module path.
"""
