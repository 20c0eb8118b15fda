"""Each warning said once: bitsandbytes logs a cast notice on every 8-bit matmul (thousands of lines in a short
run), which would bury the lines that matter. Two library notices that are not the user's business are not said
at all (`quiet_library_notices`)."""

import logging
import warnings

BITSANDBYTES_MATMUL = "bitsandbytes.autograd._functions"  # the logger of the per-call notice
# bitsandbytes' CPU backend, on import, when the optional `kernels` package (a faster CPU 4-bit matmul) is absent
BITSANDBYTES_CPU_KERNEL = ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward")


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



class DropNotice(logging.Filter):
    """Drops the records whose message starts with `prefix`."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record):
        return not str(record.msg).startswith(self.prefix)


def quiet_library_notices() -> None:
    """Silences, before the libraries are imported, two notices every command would otherwise start with: that
    bitsandbytes' optional CPU 4-bit kernel is not installed (nothing here uses 4-bit matmuls on a CPU), and PEFT's
    call of transformers' deprecated `is_gradient_checkpointing` (a FutureWarning about library internals)."""
    name, prefix = BITSANDBYTES_CPU_KERNEL
    cpu_kernel = logging.getLogger(name)
    if not any(isinstance(existing, DropNotice) for existing in cpu_kernel.filters):
        cpu_kernel.addFilter(DropNotice(prefix))
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
