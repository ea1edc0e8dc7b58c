"""Training: the recipe (``config``), the loop (``engine``), DDP plumbing (``distributed``) and the
losses (``losses``). Uses models, data and evaluation."""
