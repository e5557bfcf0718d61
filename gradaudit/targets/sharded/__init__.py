"""Sharded audits: a model split over torchrun ranks (tensor parallelism), each rank's
gradient pieces against its slice of autograd's on the unsharded model (docs/distributed.md).
Plugins declare each tensor's placement with `gradaudit.Split` and `gradaudit.Replicated`."""
