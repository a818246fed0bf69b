"""smolagents: a CodeAgent whose code steps run in a pybox sandbox
(pip install 'pybox[smolagents]').

The model here is scripted (fixed steps, no LLM, no network) so that the session can be
shown exactly: each step as the agent sent it, and what came back from the sandbox.
Use a real model (e.g. smolagents' InferenceClientModel or LiteLLMModel) instead.
"""

from smolagents import ChatMessage, CodeAgent, MessageRole, Model
from smolagents.memory import ActionStep
from smolagents.monitoring import AgentLogger, LogLevel

from pybox.integrations.smolagents import PyboxExecutor

STEPS = [
    "Thought: Keep the numbers in a variable.\n<code>\nnumbers = [3, 1, 4, 1, 5, 9, 2, 6]\n"
    "print('count:', len(numbers))\n</code>",
    "Thought: Average them (a typo: the agent will see the error).\n<code>\nmean = sum(numbers) / len(numbrs)\n</code>",
    "Thought: Fix the name; the variable is still there.\n<code>\nmean = sum(numbers) / len(numbers)\nmean\n</code>",
    "Thought: Done.\n<code>\nfinal_answer({'mean': mean, 'max': max(numbers)})\n</code>",
]


class ScriptedModel(Model):
    """Answers each call with the next of STEPS."""

    def __init__(self) -> None:
        super().__init__(model_id="scripted")
        self.calls = 0

    def generate(self, messages, stop_sequences=None, response_format=None, tools_to_call_from=None, **kwargs):
        self.calls += 1
        return ChatMessage(role=MessageRole.ASSISTANT, content=STEPS[self.calls - 1])


quiet = AgentLogger(level=LogLevel.OFF)
with CodeAgent(tools=[], model=ScriptedModel(), executor=PyboxExecutor(logger=quiet), max_steps=len(STEPS),
               verbosity_level=LogLevel.OFF) as agent:
    answer = agent.run("What are the mean and the maximum of 3 1 4 1 5 9 2 6?")
    for step in agent.memory.steps:
        if isinstance(step, ActionStep):
            print(f"--- step {step.step_number}: the agent sent")
            print(step.code_action)
            print("--- came back")
            print(step.observations.strip() if step.error is None else f"ERROR {step.error.message.strip()}")
    print("final answer:", answer)
