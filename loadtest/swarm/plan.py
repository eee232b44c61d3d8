"""What a workload asks the driver to do: requests to send, times to wait, sub-agents to run.

A session is a plain generator of actions. It never needs the server's reply (the swarm writes the
assistant's side of a conversation itself, so the history is deterministic), which keeps every workload
a pure function of its seed that tests can iterate without an endpoint. The driver executes the
actions: `Send` returns when the response has been read, `Think` sleeps, `Fork` runs its child sessions
concurrently and sends the parent generator the workload seconds the children took.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

Api = Literal["chat", "completions"]


@dataclass(slots=True)
class PlannedRequest:
    api: Api
    payload: dict
    """`messages` (and `tools`) for chat, `prompt` for completions; the driver adds model, stream options
    and the token limit."""
    max_tokens: int
    prompt_tokens: int
    """The prompt's length as the workload built it, counted with the project's built-in tokenizer over
    the exact text the endpoint renders (for chat: `gateway.chat_template.render_chat`)."""
    block_keys: Sequence[int]
    """Identities of the prompt's blocks in order; equal keys mean equal prefixes up to that block."""
    block_tokens: int
    sent_prefix_blocks: int = 0
    """Leading blocks this session already sent earlier in the run (a hint that saves the ceiling
    tracker from looking them up again)."""
    session: str = ""
    kind: str = "agent"
    phase: str = ""
    extra: dict = field(default_factory=dict)
    """Extra request fields the workload wants sent as they are."""


@dataclass(frozen=True, slots=True)
class Send:
    request: PlannedRequest


@dataclass(frozen=True, slots=True)
class Think:
    """Wait `seconds` of workload time before the next action."""

    seconds: float
    kind: Literal["agent", "human", "trace", "start"] = "agent"


@dataclass(frozen=True, slots=True)
class Fork:
    """Run the child sessions concurrently; the parent waits for all of them."""

    children: list[Session]


Action = Send | Think | Fork
Actions = Generator[Action, float | None, None]


class Session(Protocol):
    id: str

    def actions(self) -> Actions:
        """The session's actions; after a `Fork`, the generator receives the children's duration."""
        ...


def walk(session: Session) -> list[tuple[str, Action]]:
    """Every action of a session and its sub-agents in a sequential order (children run to completion
    at their fork, taking no time). For tests, analysis and dry runs: no endpoint involved."""
    performed: list[tuple[str, Action]] = []
    generator = session.actions()
    reply: float | None = None
    while True:
        try:
            action = generator.send(reply)
        except StopIteration:
            return performed
        performed.append((session.id, action))
        reply = None
        if isinstance(action, Fork):
            for child in action.children:
                performed.extend(walk(child))
            reply = 0.0
