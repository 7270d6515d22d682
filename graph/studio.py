"""The compiled graph for ``langgraph dev`` / LangGraph Studio (see ``langgraph.json``).

The platform supplies its own checkpointer; the model comes from ``REDRAFT_*`` settings through the default context.
Start a query with input ``{"run_log": [{"op": "open", "query": "...", "variant": "generic", "sampling": {...}}],
"run_config": {...}}`` -- or use ``redraft.graph.runner.open_input`` to build it.
"""

from redraft.graph.builder import build_graph

graph = build_graph()
