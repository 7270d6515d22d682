"""redraft: a graph-orchestrated draft -> critique -> revise agent with durable checkpoints, served over MCP."""

__version__ = "0.1.0"
