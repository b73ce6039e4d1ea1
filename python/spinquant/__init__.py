"""spinquant: learned rotations (SpinQuant) for accurate, fast 4-bit LLMs."""

import os

# MKL by default may use fewer threads than asked when the machine is busy, which changes the float summation
# order of torch's matmuls from run to run; the 4-bit objective amplifies that (the same `spinquant optimize`
# gave 5.4261 and 5.4230 as its first loss, idle and beside a busy process). Fixed thread counts keep it seeded.
os.environ.setdefault("MKL_DYNAMIC", "FALSE")

from .logs import drop_inapplicable_messages  # noqa: E402

drop_inapplicable_messages()
