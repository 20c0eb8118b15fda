"""Each warning said once: bitsandbytes logs a cast notice on every 8-bit matmul (thousands of lines in a short
run), which would bury the lines that matter."""

import logging

BITSANDBYTES_MATMUL = "bitsandbytes.autograd._functions"  # the logger of the per-call notice


class SayOnce(logging.Filter):
    """Lets each distinct warning (logger and message) through once; lower levels always."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def filter(self, record):
        if record.levelno < logging.WARNING:
            return True
        key = (record.name, record.getMessage())
        if key in self.seen:
            return False
        self.seen.add(key)
        return True


def quiet_bitsandbytes() -> None:
    """Lets bitsandbytes' matmul notice through once (a filter on the logger that makes it: a filter on a parent
    logger would not see it)."""
    matmul = logging.getLogger(BITSANDBYTES_MATMUL)
    if not any(isinstance(existing, SayOnce) for existing in matmul.filters):
        matmul.addFilter(SayOnce())
