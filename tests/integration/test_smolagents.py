"""smolagents' real CodeAgent running its steps in a real sandbox through PyboxExecutor.
The model is scripted (fixed code steps, no network); framework, kernel and sandbox are
real."""

from __future__ import annotations

import pytest

smolagents = pytest.importorskip("smolagents")

from smolagents import ChatMessage, CodeAgent, MessageRole, Model, Tool  # noqa: E402
from smolagents.monitoring import AgentLogger, LogLevel  # noqa: E402
from smolagents.utils import AgentError  # noqa: E402

import pybox  # noqa: E402
from pybox.integrations.smolagents import PyboxExecutor  # noqa: E402

from .conftest import BACKEND, IMAGE  # noqa: E402

QUIET = LogLevel.OFF


class ScriptedModel(Model):
    """Answers each call with the next fixed step; keeps what it was sent."""

    def __init__(self, steps: list[str]):
        super().__init__(model_id="scripted")
        self.steps = steps
        self.prompts: list[str] = []

    def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kwargs):
        self.prompts.append("\n".join(_text(m) for m in messages))
        return ChatMessage(role=MessageRole.ASSISTANT, content=self.steps[len(self.prompts) - 1])


def _text(message) -> str:
    content = message.content if isinstance(message, ChatMessage) else message["content"]
    if isinstance(content, list):
        return "\n".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""


def step(thought: str, code: str) -> str:
    return f"Thought: {thought}\n<code>\n{code}\n</code>"


class Double(Tool):
    name = "double"
    description = "Doubles a number."
    inputs = {"n": {"type": "integer", "description": "the number"}}
    output_type = "integer"

    def forward(self, n: int) -> int:
        return n * 2


def quiet_executor(**kwargs) -> PyboxExecutor:
    return PyboxExecutor(logger=AgentLogger(level=QUIET), **kwargs)


def run_agent(executor: PyboxExecutor, steps: list[str], tools=(), **run_kwargs):
    model = ScriptedModel(steps)
    agent = CodeAgent(tools=list(tools), model=model, executor=executor, max_steps=len(steps), verbosity_level=0)
    return agent, model, agent.run("the task", **run_kwargs)


def test_a_code_agent_prints_keeps_state_sees_an_error_and_answers():
    executor = quiet_executor(image=IMAGE, backend=BACKEND)
    steps = [
        step("Set some state.", "import sys\nx = 20\nprint('x is', x)\nprint('to stderr', file=sys.stderr)"),
        step("This one fails.", "print('before the error')\ny = x / 0"),
        step("Recover, using the state of the first step.", "y = x + 1\ny * 2"),
        step("Answer.", "final_answer({'y': y, 'pair': (1, 2), 'items': {3}})"),
    ]
    with CodeAgent(tools=[], model=(model := ScriptedModel(steps)), executor=executor, max_steps=6,
                   verbosity_level=0) as agent:
        answer = agent.run("the task")
        sandbox = executor.sandbox
        assert not sandbox.closed
    assert sandbox.closed, "the executor made the sandbox, so the agent's cleanup closes it"
    assert answer == {"y": 21, "pair": (1, 2), "items": {3}}
    assert len(model.prompts) == 4
    # What came back after each step, as the model was sent it next.
    assert "x is 20\nto stderr" in model.prompts[1]
    assert "before the error" in model.prompts[2] and "ZeroDivisionError" in model.prompts[2]
    assert "\x1b[" not in model.prompts[2], "tracebacks reach the model without ANSI colour codes"
    assert "Last output from code snippet:\n42" in model.prompts[3]
    actions = [s for s in agent.memory.steps if type(s).__name__ == "ActionStep"]
    assert [s.error is not None for s in actions] == [False, True, False, False]
    assert actions[-1].is_final_answer


def test_tools_and_variables_reach_the_sandbox(sandbox):
    executor = quiet_executor(sandbox=sandbox)
    agent, model, answer = run_agent(executor, [
        step("Call the tool on the variable.", "import os\nprint(os.getcwd(), double(n=offset))"),
        step("Answer.", "final_answer(double(n=offset) + 1)"),
    ], tools=[Double()], additional_args={"offset": 21})
    assert answer == 43
    assert "/app 42" in model.prompts[1]
    executor.cleanup()
    assert not sandbox.closed, "a sandbox given to the executor stays the caller's"
    assert sandbox.run("print(double(n=2))").text == "4", "tools are defined in the sandbox's kernel"


def test_a_step_past_its_timeout_is_an_error_the_agent_sees(sandbox):
    executor = quiet_executor(sandbox=sandbox, timeout=1)
    agent, model, answer = run_agent(executor, [
        step("Remember something.", "kept = 'still here'"),
        step("Too slow.", "import time\nprint('sleeping')\ntime.sleep(30)"),
        step("Answer.", "final_answer(kept)"),
    ])
    assert answer == "still here"
    assert "sleeping" in model.prompts[2] and "timed out after 1 seconds" in model.prompts[2]
    assert "interrupted; its variables are kept" in model.prompts[2]


def test_images_come_back_as_pil_images(sandbox):
    executor = quiet_executor(sandbox=sandbox)
    make = "from PIL import Image\nimg = Image.new('RGB', (4, 3), 'red')"
    value = executor(make + "\nimg")
    assert value.output.size == (4, 3) and not value.is_final_answer
    executor(make + "\ndisplay(img)")
    assert [i.size for i in executor.last_result.images] == [(4, 3)]
    final = executor(make + "\nfinal_answer(img)")
    assert final.is_final_answer and final.output.size == (4, 3) and final.output.getpixel((0, 0)) == (255, 0, 0)


def test_a_final_answer_image_past_pybox_caps_is_refused(sandbox):
    executor = quiet_executor(sandbox=sandbox)
    # A PNG header announcing 100,000 x 100,000 pixels; nothing is decompressed.
    bomb = ("import base64, struct, zlib\n"
            "ihdr = struct.pack('>IIBBBBB', 100000, 100000, 8, 2, 0, 0, 0)\n"
            "png = b'\\x89PNG\\r\\n\\x1a\\n' + struct.pack('>I', 13) + b'IHDR' + ihdr "
            "+ struct.pack('>I', zlib.crc32(b'IHDR' + ihdr))\n"
            "raise FinalAnswerException('safe:' + '{\"__type__\": \"PIL.Image\", \"data\": \"%s\"}' "
            "% base64.b64encode(png).decode())")
    with pytest.raises(AgentError, match="image in the final answer was refused"):
        executor("class FinalAnswerException(BaseException): pass\n" + bomb)
    with pytest.raises(AgentError, match="only smolagents' safe JSON"):
        executor("class FinalAnswerException(BaseException): pass\nraise FinalAnswerException('pickle:gASVAAAA')")


def test_a_failed_install_is_an_error_not_ignored():
    # PIP_NO_INDEX: pip looks at no index, so it answers at once and without the network.
    with pybox.Sandbox(image=IMAGE, backend=BACKEND, env={"PIP_NO_INDEX": "1"}) as sandbox:
        with pytest.raises(AgentError, match="pip install pybox-no-such-package failed"):
            quiet_executor(sandbox=sandbox, additional_imports=["pybox-no-such-package"])
        executor = quiet_executor(sandbox=sandbox, additional_imports=["pip"])  # already satisfied
        assert executor.installed_packages == ["pip"]


def test_what_pybox_refuses(sandbox):
    with pytest.raises(pybox.InvalidArgument, match="allow_pickle"):
        PyboxExecutor(allow_pickle=True)
    with pytest.raises(pybox.InvalidArgument, match="not both"):
        PyboxExecutor(sandbox=sandbox, image=IMAGE)
    with pytest.raises(pybox.InvalidArgument, match="timeout"):
        PyboxExecutor(sandbox=sandbox, timeout=0)
