"""
The one base class of the library's expected errors. Each says what is wrong and how to fix it,
so a script's entry point (`common.run_main`) prints it as one line instead of a traceback.
Kept free of imports so light modules (the sandbox) can use it without loading torch.
"""


class NanochatError(RuntimeError):
    """An error whose message says what is wrong and how to fix it: a script prints it as one line."""
