"""The MCP facade: FastMCP app, tools, resources, sessions, middleware and the CLI."""
