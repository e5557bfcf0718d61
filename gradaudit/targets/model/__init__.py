"""Model audits: a model plugin's module and its hand-written gradient, over a data plugin's
batches, against autograd (targets.model.target)."""
