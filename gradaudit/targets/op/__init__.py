"""Op audits: a custom autograd.Function, function or nn.Module (the candidate) against a
reference, over input variants derived from the declared shapes (docs/ops.md). The target is
targets.op.target; `gradaudit.check_op` (targets.op.api) runs one from a test suite."""
