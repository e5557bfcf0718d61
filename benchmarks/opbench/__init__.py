"""An op-audit benchmark: a dozen ops with hand-written backward, realistic bugs in each, and
three tools (gradcheck on OpInfo samples, a pytest-style assert_close test, gradaudit's
check_op) compared on which bugs they catch. See README.md beside this file."""
