"""The summarization prompts, versioned: every summary records the version it was made
with, so a changed prompt never silently mixes with old summaries on replay.

Change a prompt by adding a new version (never edit a released one) and pointing
``SummarizerSettings.prompt_version`` at it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from ctxpipe.processors.summarize.exceptions import SummarizerError
from ctxpipe.processors.types import Chunk


@dataclass(frozen=True, slots=True)
class PromptTemplate:
    version: str
    system: str
    # How the input is laid out: conversation turns (with the previous summary) or one document.
    input_format: Literal["conversation", "document"] = "conversation"


_SYSTEM_V1: Final = """\
You maintain the running summary of a long conversation between a user and an assistant.
You receive the previous summary (possibly empty) and the next turns of the conversation.
Write the new summary: the previous summary updated with the new turns.

Keep exactly, character for character, every:
- name of a person, company, product or place;
- number, amount of money, quantity, percentage, account / order / ticket id, code;
- date, time and deadline;
- decision made and preference stated;
- open commitment or promise (who will do what, by when) and unresolved question.
When a new turn changes or cancels a fact, keep the new value and say what it replaced.

Drop greetings, thanks, small talk, filler and repetition. Do not add facts that are not in
the input, do not guess, do not comment on the conversation.
Write compact plain-text sentences, one fact or decision per line, oldest first.
Answer with the summary only, no preamble."""

_DOC_SYSTEM_V1: Final = """\
You write the short summary of one document, shown next to passages retrieved from it so a
reader knows what the whole document is about. You receive the document (maybe only its
beginning) inside <document>.

In at most five compact plain-text sentences say what the document is, who it concerns and
what it decides or requires. Keep exactly, character for character, names, numbers, amounts,
ids, dates and deadlines that matter. Do not add facts that are not in the input, do not
guess. Answer with the summary only, no preamble."""

PROMPTS: Final[dict[str, PromptTemplate]] = {
    "summary-v1": PromptTemplate(version="summary-v1", system=_SYSTEM_V1),
    "doc-summary-v1": PromptTemplate(version="doc-summary-v1", system=_DOC_SYSTEM_V1, input_format="document"),
}
PROMPT_VERSION: Final = "summary-v1"
DOCUMENT_PROMPT_VERSION: Final = "doc-summary-v1"


def get_prompt(version: str) -> PromptTemplate:
    try:
        return PROMPTS[version]
    except KeyError:
        raise SummarizerError(f"unknown prompt version {version!r} (known: {sorted(PROMPTS)})") from None


def format_turn(turn: Chunk) -> str:
    role = turn.role.value if turn.role is not None else turn.kind.value
    when = turn.occurred_at.isoformat(timespec="seconds")
    return f'<turn role="{role}" at="{when}">\n{turn.text}\n</turn>'


def build_user_message(previous: str | None, turns: Sequence[Chunk]) -> str:
    """Previous summary + new turns, in tagged sections the model cannot confuse."""
    prev = previous.strip() if previous else ""
    body = "\n".join(format_turn(t) for t in turns)
    return (
        f"<previous_summary>\n{prev}\n</previous_summary>\n\n"
        f"<new_turns>\n{body}\n</new_turns>\n\n"
        "Write the updated summary."
    )


def build_document_message(parts: Sequence[Chunk]) -> str:
    """A document's chunks (in order) as one tagged block."""
    # Chunks carry their title/section path as a header line, so the title is in the body.
    doc_id = (parts[0].doc_id or parts[0].source_id) if parts else ""
    body = "\n\n".join(p.text for p in parts)
    return (
        f'<document id="{doc_id}">\n{body}\n</document>\n\n'
        "Write the summary of this document."
    )


def build_message(prompt: PromptTemplate, previous: str | None, turns: Sequence[Chunk]) -> str:
    """The user message ``prompt`` expects."""
    if prompt.input_format == "document":
        return build_document_message(turns)
    return build_user_message(previous, turns)
