"""The pipeline's stages, one module each, in the order `dmd2report build` runs them.

Every stage module declares itself once, as `STAGE = Stage(...)` beside its entry point `run(ctx, overwrite)`
(context.Stage: name, help, what it reads and writes, whether it shards across torchrun processes). A stage reads
its inputs from the work directory and writes its outputs there atomically, so each can be rerun alone;
`pipeline.py` decides which ones need to run. Stage modules import libraries (store, features, embed, metrics,
...) and never each other or the pipeline.
"""

from . import atlas, extract, fit, generate, measure, render, trajectory

STAGES = tuple(m.STAGE for m in (extract, generate, fit, measure, atlas, trajectory, render))
