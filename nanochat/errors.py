"""
The library's expected errors. Each says what is wrong and how to fix it, so a script's entry
point (`common.run_main`) prints it as one line instead of a traceback. Library code raises
them and never exits the process itself. Kept free of imports so light modules (the sandbox)
can use it without loading torch.
"""


class NanochatError(RuntimeError):
    """An error whose message says what is wrong and how to fix it: a script prints it as one line."""

    # True where every rank of a distributed run raises it at the same point (from flags or a loss
    # they share): run_main then has the ranks leave the process group together before exiting
    every_rank = False


class PreflightError(NanochatError):
    """The run as configured will not fit the device."""

    every_rank = True


class ResumeError(NanochatError):
    """A training run cannot start from, or continue, what its checkpoint folder holds."""

    every_rank = True


class NonFiniteLossError(NanochatError):
    """The training loss became NaN or infinite; nothing is saved at that step."""

    every_rank = True  # the logged loss is the mean over ranks: all of them see it at the same step


class PlanOnly(Exception):
    """--dry_run: the run stops once its plan is printed (run_main exits with status 0)."""
