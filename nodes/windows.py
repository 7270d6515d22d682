"""Sliding prompt windows: what each node shows the model. Prompt size does not grow with the iteration count.

* draft:    the query (plus earlier queries' final answers unless the companion clears history)
* critique: the query, the draft and the last two revisions
* revise:   the query, the current text and the latest critique
"""

from __future__ import annotations

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from redraft.graph.state import Slot, current_text
from redraft.nodes.prompts import PromptSet

CRITIQUE_WINDOW = 2  # revisions shown to the critic besides the draft
HISTORY_WINDOW = 3  # earlier query/answer pairs shown to the drafter


def draft_messages(prompts: PromptSet, query: str, history: list[dict], clear_history: bool) -> list[BaseMessage]:
    messages: list[BaseMessage] = [SystemMessage(prompts.draft_system)]
    if not clear_history:
        for item in history[-HISTORY_WINDOW:]:
            messages.extend([HumanMessage(item["query"]), AIMessage(item["answer"])])
    messages.append(HumanMessage(query))
    return messages


def critique_messages(prompts: PromptSet, slot: Slot) -> list[BaseMessage]:
    revisions = slot["revision"]
    first_shown = max(0, len(revisions) - CRITIQUE_WINDOW)
    parts = [f"Request:\n{slot['query']}", f"Original draft:\n{slot['draft']}"]
    for n in range(first_shown, len(revisions)):
        label = "Current revision" if n == len(revisions) - 1 else "Previous revision"
        parts.append(f"{label} (revision {n + 1}):\n{revisions[n]}")
    parts.append(f"Review round {len(slot['critique']) + 1}. Critique the most recent version above.")
    return [SystemMessage(prompts.critique_system), HumanMessage("\n\n".join(parts))]


def revise_messages(prompts: PromptSet, slot: Slot, critique: str) -> list[BaseMessage]:
    body = f"Request:\n{slot['query']}\n\nCurrent text:\n{current_text(slot)}\n\nCritique:\n{critique}"
    return [SystemMessage(prompts.revise_system), HumanMessage(body)]
