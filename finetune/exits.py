"""Exit statuses of the command-line tools (docs/USING.md lists them for scripts and schedulers), and how an
error from a library becomes part of our one-line messages."""

OK = 0
FAILED = 1  # a failure while running: a save that could not be written (disk full, I/O error)
BAD_INPUT = 2  # flags, recipe, data, model or tokenizer files, output directory: fix the input and rerun
DIVERGED = 3  # NaN/inf loss, gradient norm or weights: stopped, nothing saved from the bad step
# Stopped by SIGTERM/SIGINT after saving a resumable checkpoint: rerun the same command (with
# --resume_from_checkpoint True) to continue. sysexits.h's EX_TEMPFAIL, "try again later".
PREEMPTED = 75
INTERRUPTED = 130  # a second Ctrl-C: stopped at once, without saving (the previous checkpoints are intact)


def first_line(error: BaseException) -> str:
    """The first line of a library's error message (the rest is usually a traceback-like dump), or the error's
    type name when it says nothing."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
