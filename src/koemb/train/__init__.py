"""Training: losses, trainable-parameter setups, objectives, the one loop, checkpoints, the pipeline.

Python API (the CLI is a thin layer over it):

- `koemb.train.pipeline`: `load_pipeline(path, overrides)`, `validate_pipeline(cfg)`,
  `run_pipeline(cfg, out, resume=, overwrite=)` (`koemb run`), `train_stages(cfg, out, model=)` (`koemb train`).
- `koemb.train.loop.train_stage(model, tokenizer, stage, ...)`: one stage, returns the plain model.
- `koemb.train.losses`: `infonce`, `gathered_infonce`, `distill`, `all_gather` (pure functions of embeddings).
- `koemb.train.setups.SETUPS` (`new_rows`, `all_rows`, `full`, `lora`) and
  `koemb.train.objectives.OBJECTIVES` (`infonce`, `distill`): the registries a stage's YAML names.
"""
