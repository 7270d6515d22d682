"""The graph LangGraph Studio (``langgraph dev``) and Agent Server run (see ``langgraph.json``).

It is redraft's draft -> critique -> revise loop with public schemas (``graph/public.py``): the input form asks for a
query (and optionally its companion, ``max_loops``, ``similarity_threshold``, ``min_score``, ``mode``), the output is
the answer, its stop reason, iterations and similarities, and the context holds plain per-run fields (``model``,
``base_url``, ``temperature``, ``stepwise``). The model endpoint and key come from the ``REDRAFT_*`` settings of the
server's environment. The platform supplies the checkpointer; each checkpoint's metadata is labelled with ``phase``,
``slot`` and ``iteration`` (``graph/labels.py``) so the history list reads well.
"""

from __future__ import annotations

import weakref
from typing import Any

from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph.state import CompiledStateGraph

from redraft.graph.builder import build_public_graph
from redraft.graph.labels import LabellingSaver
from redraft.settings import get_settings

_LABELLERS: weakref.WeakKeyDictionary[BaseCheckpointSaver, LabellingSaver] = weakref.WeakKeyDictionary()


def labelled(saver: Any) -> Any:
    """``saver`` wrapped to label checkpoint metadata: one wrapper per server saver, so its memory lasts across runs."""
    if not isinstance(saver, BaseCheckpointSaver) or isinstance(saver, LabellingSaver):
        return saver
    found = _LABELLERS.get(saver)
    if found is None:
        found = _LABELLERS[saver] = LabellingSaver(saver)
    return found


class StudioGraph(CompiledStateGraph):
    """The compiled public graph. The server hands each run its checkpointer through ``copy``; it gets labelled."""

    def copy(self, update: dict[str, Any] | None = None) -> StudioGraph:
        if update and "checkpointer" in update:
            update = {**update, "checkpointer": labelled(update["checkpointer"])}
        return super().copy(update)


def make_graph() -> StudioGraph:
    compiled = build_public_graph()
    return StudioGraph(**{k: v for k, v in compiled.__dict__.items() if k != "__orig_class__"})


get_settings()  # read REDRAFT_* (and .env) now, at load time, not inside the server's event loop
graph = make_graph()
