"""The pipeline's stages, one module each, in order: extract, generate, fit, measure, atlas, trajectory, render.

Every stage module has one entry point, `run(ctx, overwrite)`, taking a `context.Context` (config, work
directory, generator, log). It reads its inputs from the work directory and writes its outputs there
atomically, so each stage can be rerun alone; `pipeline.py` decides which ones need to run. Stage
modules import libraries (store, features, embed, metrics, ...) and never each other or the pipeline.
"""
