"""Creating an MCP background task in as few round trips as the worker's start allows.

fastmcp-tasks' ``create_task`` writes the task's Redis keys one command at a time (meta, created-at, poll interval,
arguments, leg pointer and number, context snapshot: 7 round trips), enqueues the Docket execution, and waits until
it is visible; redraft then wrote its run record and the client's can-elicit flag (a database write, one more round
trip) after all of that. Here the same keys are written by the same library functions into one pipeline (one round
trip), together with the can-elicit flag; the run record is written at the same time (the task id is minted first);
and the execution is enqueued only once both are stored. So the run row and every key the worker reads exist before
the worker can start, the worker finds its run already noted (no fallback claim), and the client still gets the task
id only after all of it is durable (``_await_durable_creation``, as the library does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from fastmcp.exceptions import ValidationError
from fastmcp.server.dependencies import _is_client_tool_call, extract_version_spec, without_injected_parameters
from fastmcp.tools.base import Tool
from fastmcp.tools.function_tool import FunctionTool, _strict_input_validation, _validate_input
from fastmcp.utilities.types import get_cached_typeadapter
from fastmcp.utilities.versions import VersionSpec
from fastmcp_tasks.components import _call_shape_probe, add_component_to_docket, coerce_task_arguments
from fastmcp_tasks.context import TaskContextSnapshot, get_task_scope, register_task_server
from fastmcp_tasks.creation import (
    _DURABLE_CREATE_POLL_SECONDS,
    _DURABLE_CREATE_TIMEOUT_SECONDS,
    TASK_MAPPING_TTL_BUFFER_SECONDS,
    _owning_server,
    _registered_task_component,
)
from fastmcp_tasks.input_store import save_current_leg, save_task_args
from fastmcp_tasks.keys import build_task_key, task_redis_prefix
from fastmcp_tasks.models import CreateTaskResult
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from redraft.server.sessions import principal_key

Note = Callable[[str], Awaitable[Callable[[], Awaitable[None]] | None]]


class _Queued:
    """What the library's key writers see as a Redis client: each ``set`` is queued on the pipeline instead."""

    def __init__(self, pipe) -> None:
        self._pipe = pipe

    async def set(self, *args, **kwargs) -> None:
        self._pipe.set(*args, **kwargs)


class _Batch:
    """A Docket stand-in for ``save_task_args`` / ``save_current_leg`` / ``TaskContextSnapshot.save``: the same keys
    and encodings, queued on one pipeline. Anything else they might call on Redis fails loudly (AttributeError)."""

    def __init__(self, docket, pipe) -> None:
        self._docket, self._queued = docket, _Queued(pipe)

    def key(self, name: str) -> str:
        return self._docket.key(name)

    @contextlib.asynccontextmanager
    async def redis(self):
        yield self._queued


# The threads of runs this process noted at task creation, by task id, until the task body takes one: the note
# validated the session and recorded the access just before, so the body need not again (a body on another replica
# finds no entry and validates as usual).
_noted_threads: OrderedDict[str, str] = OrderedDict()
NOTED_KEEP = 4096


async def note_run(server, task_id: str, *, kind: str, args: dict):
    """Write the run record of a new refine / replay task before its id reaches the client (and before its worker
    can start), so ``run_status`` knows the id from the first moment. The task body completes the record (and claims
    it) or removes it. Returns how to remove it again (the task could not be enqueued), or None if nothing was
    written: a call the body will refuse gets no note."""
    app = (server._lifespan_result or {}).get("redraft")
    if app is None or app.runs is None:
        return None
    session_id, companion = str(args.get("session_id")), str(args.get("companion") or "generic")
    try:
        thread = await app.thread(session_id, companion)
    except Exception:
        return None
    try:
        await app.runs.create(
            run_id=task_id,
            thread_id=thread,
            session_id=thread.rsplit(":", 1)[0],
            companion=companion,
            principal=principal_key(),
            kind=kind,
            request={"task": True},
        )
    except Exception:
        return None
    _noted_threads[task_id] = thread
    while len(_noted_threads) > NOTED_KEEP:
        _noted_threads.popitem(last=False)

    async def undo() -> None:
        _noted_threads.pop(task_id, None)
        await forget_note(app, task_id)

    return undo


async def forget_note(app, task_id: str) -> None:
    await app.runs.forget_noted(task_id)


def noted_thread(task_id: str) -> str | None:
    """The thread of the run this process noted for ``task_id`` (taken: only a task's first leg finds it), or None."""
    return _noted_threads.pop(task_id, None)


def opted_in(context, extension_id: str) -> bool:
    """Whether this ``tools/call`` asks for a task (``TasksExtension.intercept_tool_call``'s test)."""
    rc = context.request_context
    on_modern_era = rc is not None and rc.protocol_version in MODERN_PROTOCOL_VERSIONS
    return on_modern_era and context.client_extension_settings(extension_id) is not None and _is_client_tool_call()


async def optional_task_tool(params, context) -> Tool | None:
    """The tool a client-called, opted-in ``tools/call`` names if it runs as a task in mode ``optional`` (the only
    mode redraft uses), else None (the library's own path decides)."""
    version_str = extract_version_spec(params.meta)
    with contextlib.suppress(Exception):
        tool = await context.fastmcp.get_tool(params.name, VersionSpec(eq=version_str) if version_str else None)
        if tool is not None and tool.task_config.supports_tasks() and tool.task_config.mode == "optional":
            return tool
    return None


_components: dict[tuple[int, str], tuple[Tool, TypeAdapter | None]] = {}


async def _component(context, tool: Tool) -> tuple[Tool, TypeAdapter | None]:
    """The Docket-registered component of ``tool`` and the adapter that validates its arguments. The library lists
    every task component per call to find it, and builds the adapter (a Pydantic call schema, milliseconds) for each
    call anew, as its cache is keyed by a function it creates per call; redraft's tools are fixed at start-up, so
    both are kept per server."""
    key = (id(context.fastmcp), tool.key)
    found = _components.get(key)
    if found is None:
        component = await _registered_task_component(context, tool)
        adapter = None
        if isinstance(component, FunctionTool):
            probe = _call_shape_probe(without_injected_parameters(component.fn, run_in_thread=component.run_in_thread))
            adapter = get_cached_typeadapter(probe)
        found = _components[key] = (component, adapter)
    return found


def _coerce(component: Tool, adapter: TypeAdapter | None, arguments: dict) -> dict:
    """``coerce_task_arguments`` with the kept adapter: the same validation (strict when the server is), defaults
    filled in; a bad call fails here, before any task state exists."""
    if adapter is None:
        return coerce_task_arguments(component, arguments, strict=_strict_input_validation())
    try:
        return _validate_input(adapter, arguments, strict=_strict_input_validation())
    except PydanticValidationError as exc:
        raise ValidationError(str(exc), log_level=logging.WARNING) from exc


Flags = dict[str, tuple[str, int]]


async def create_task(tool: Tool, params, context, *, note: Note | None, flags: Flags) -> CreateTaskResult:
    """fastmcp-tasks' ``create_task`` in fewer round trips (see the module doc). ``note(task_id)`` writes redraft's
    run record and returns how to undo it (or None if it wrote none); ``flags`` are more keys to store with the task's
    own (``docket.key`` name, ``{task_id}`` filled in -> value and TTL in seconds)."""
    server = context.fastmcp
    docket = server._docket
    component, adapter = await _component(context, tool)
    raw_arguments = dict(params.arguments or {})
    coerced = _coerce(component, adapter, raw_arguments)

    task_id = secrets.token_urlsafe(32)
    created_at = datetime.now(UTC).isoformat()
    task_scope = get_task_scope()
    register_task_server(task_id, _owning_server(tool, server))
    key = component.key
    task_key = build_task_key(task_scope, task_id, "tool", key)
    ttl_ms = int(docket.execution_ttl.total_seconds() * 1000)
    ttl_seconds = int(ttl_ms / 1000) + TASK_MAPPING_TTL_BUFFER_SECONDS
    poll_interval_ms = int(component.task_config.poll_interval.total_seconds() * 1000)
    prefix = task_redis_prefix(task_scope)
    snapshot = TaskContextSnapshot.capture(owning_tool_name=tool.name, owning_tool_version=tool.version)

    async def store_keys() -> None:
        async with docket.redis() as redis, redis.pipeline() as pipe:  # MULTI/EXEC on Redis: all or none
            batch = _Batch(docket, pipe)
            pipe.set(docket.key(f"{prefix}:{task_id}"), task_key, ex=ttl_seconds)
            pipe.set(docket.key(f"{prefix}:{task_id}:created_at"), created_at, ex=ttl_seconds)
            pipe.set(docket.key(f"{prefix}:{task_id}:poll_interval"), str(poll_interval_ms), ex=ttl_seconds)
            await save_task_args(batch, task_scope, task_id, raw_arguments, ttl_seconds)
            await save_current_leg(batch, task_scope, task_id, task_key, 1, ttl_seconds)
            await snapshot.save(batch, task_scope, task_id, ttl_seconds)
            for name, (value, ttl) in flags.items():
                pipe.set(docket.key(name.format(task_id=task_id)), value, ex=ttl)
            await pipe.execute()

    noted = asyncio.ensure_future(note(task_id)) if note is not None else None
    try:
        await store_keys()
        undo = await noted if noted is not None else None
    except BaseException:
        if noted is not None:
            noted.cancel()
        raise
    try:
        await add_component_to_docket(component, docket, coerced, fn_key=key, task_key=task_key)
    except BaseException:
        if undo is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(undo())
        raise
    await _durable(docket, task_key)
    return CreateTaskResult(
        task_id=task_id,
        status="working",
        created_at=created_at,
        last_updated_at=created_at,
        ttl_ms=ttl_ms,
        poll_interval_ms=poll_interval_ms,
    )


async def _durable(docket, task_key: str) -> None:
    """The library's durable-create wait (a task id is returned only once ``tasks/get`` resolves it), checking that
    the execution's record exists rather than loading it. The in-process backend stored it before ``add`` returned."""
    if docket.url.startswith("memory://"):
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + _DURABLE_CREATE_TIMEOUT_SECONDS
    async with docket.redis() as redis:
        while not await redis.exists(docket.runs_key(task_key)):
            if loop.time() >= deadline:
                raise MCPError(
                    code=INTERNAL_ERROR,
                    message="Task creation did not become durable in time; the task backend did not surface the "
                    "enqueued execution.",
                )
            await asyncio.sleep(_DURABLE_CREATE_POLL_SECONDS)
