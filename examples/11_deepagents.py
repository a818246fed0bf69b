"""LangChain deep agents: a pybox sandbox as the agent's sandbox backend (its file tools
and its `execute` tool) (pip install 'pybox[deepagents]').

The chat model here is LangChain's fake one answering with fixed tool calls (no LLM, no
network) so that the session can be shown exactly: each tool call the agent sent, and
what came back. Pass a real model (e.g. "anthropic:claude-sonnet-4-5") instead.
"""

from deepagents import create_deep_agent
from langchain_core.language_models.fake_chat_models import GenericFakeChatModel
from langchain_core.messages import AIMessage, ToolMessage

from pybox.integrations.deepagents import PyboxSandbox


class ScriptedChatModel(GenericFakeChatModel):
    def bind_tools(self, tools, **kwargs):  # the script already names the tools
        return self


def call(name, number, **args):
    return {"name": name, "args": args, "id": f"call_{number}", "type": "tool_call"}


SCRIPT = [
    AIMessage(content="", tool_calls=[call("write_file", 1, file_path="/app/stats.py", content=(
        "import statistics, sys\nnumbers = [float(n) for n in sys.argv[1:]]\n"
        "print('mean', statistics.mean(numbers))\n"))]),
    AIMessage(content="", tool_calls=[call("execute", 2, command="python3 /app/stats.py 3 1 4 1 5 9 2 6")]),
    AIMessage(content="", tool_calls=[call("execute", 3, command="python3 /app/stats.py")]),  # no numbers: fails
    AIMessage(content="", tool_calls=[call("execute", 4, command="sleep 30", timeout=1)]),
    AIMessage(content="", tool_calls=[call("read_file", 5, file_path="/app/missing.txt")]),
    AIMessage(content="", tool_calls=[call("ls", 6, path="/app")]),
    AIMessage(content="The mean is 3.875."),
]

with PyboxSandbox() as backend:
    agent = create_deep_agent(model=ScriptedChatModel(messages=iter(SCRIPT)), backend=backend)
    result = agent.invoke({"messages": [{"role": "user", "content": "What is the mean of 3 1 4 1 5 9 2 6?"}]})
    for message in result["messages"]:
        if isinstance(message, AIMessage):
            for tool_call in message.tool_calls:
                print(f"--- the agent sent: {tool_call['name']}({tool_call['args']})")
            if message.content:
                print(f"--- the agent answered: {message.content}")
        elif isinstance(message, ToolMessage):
            print(f"--- came back ({message.status}):")
            print(message.content)
