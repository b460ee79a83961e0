'''
HumanEval: 164 Python functions to complete from their signature and docstring.
Hub: openai/openai_humaneval (split test); columns `task_id`, `prompt`,
`canonical_solution`, `test` (defines `check(candidate)`), `entry_point`.

The user message is the prompt; the reference reply is prompt + canonical_solution.
evaluate() takes the code out of a response, appends the test and `check(entry_point)`,
and runs it in the sandbox (nanochat.execution.execute_code).

Rows from the hub or data_files= are shuffled with seed 42, as nanochat does.

Offline twin: 40 tiny functions in the same format, generated (humaneval_twin).
'''

from __future__ import annotations

import ast
import re

from nanochat.synthetic import humaneval_twin
from tasks.common import Task, load_rows

# -----------------------------------------------------------------------------
# Code extraction and evaluation

_FENCE = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)
_IMPORT = re.compile(r"^(?:import|from)\s+\S.*$", re.MULTILINE)


def extract_code(response: str, entry_point: str | None = None) -> str:
    """The code in a response: its fenced block (the one defining entry_point if several), else the raw text."""
    blocks = _FENCE.findall(response)
    if not blocks:
        return response
    if entry_point is not None:
        for block in blocks:
            if re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", block):
                return block
    return blocks[0]


def _prompt_helpers(prompt: str, entry_point: str, code: str) -> list[str]:
    """Source of the prompt's other top-level functions (e.g. poly() beside find_zero()) that code does not define."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return []
    helpers = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name != entry_point \
                and not re.search(rf"\bdef\s+{re.escape(node.name)}\s*\(", code):
            segment = ast.get_source_segment(prompt, node)
            if segment:
                helpers.append(segment)
    return helpers


def build_program(prompt: str, completion: str, test: str, entry_point: str) -> str:
    """
    The program that passes iff the completion implements the function: code, test, check call.
    A bare function body continues the prompt; a reply with only the function gets the prompt's
    imports and helper functions it lacks, as a chat model answering with just that function would need.
    """
    code = completion
    if not re.search(rf"\bdef\s+{re.escape(entry_point)}\s*\(", code):
        code = prompt + code
    header = [line for line in _IMPORT.findall(prompt) if line not in code]
    header += _prompt_helpers(prompt, entry_point, code)
    if header:
        code = "\n\n".join(header) + "\n\n\n" + code
    return code + "\n\n" + test + "\n" + f"check({entry_point})"


class HumanEval(Task):
    def __init__(self, data_files=None, offline: bool | None = None, timeout: float = 5.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        self.ds = load_rows("openai/openai_humaneval", None, "test", data_files, offline, humaneval_twin)

    @property
    def eval_type(self) -> str:
        return "generative"

    def num_examples(self) -> int:
        return len(self.ds)

    def get_example(self, index: int) -> dict:
        row = self.ds[index]
        return {
            "messages": [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["prompt"] + row["canonical_solution"]},
            ],
            "entry_point": row["entry_point"],
            "test": row["test"],
            "task_id": row["task_id"],
        }

    def evaluate(self, conversation: dict, response: str) -> bool:
        from nanochat.execution import execute_code

        prompt = conversation["messages"][0]["content"]
        entry_point = conversation["entry_point"]
        program = build_program(prompt, extract_code(response, entry_point), conversation["test"], entry_point)
        return bool(execute_code(program, timeout=self.timeout).success)
