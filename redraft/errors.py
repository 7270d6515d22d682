"""Every error redraft raises on purpose.

Each carries a stable ``code`` so MCP clients and the CLI can branch on it, and a message written for the person
who caused it. None of them ever contains a secret (API key, token, database password).
"""

from __future__ import annotations

import functools


class RedraftError(Exception):
    """Base class. ``retryable`` tells a client whether the same call may succeed later."""

    code = "redraft_error"
    retryable = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(RedraftError):
    """A setting is missing, malformed or out of range."""

    code = "config_error"


class UnknownCompanionError(RedraftError):
    code = "unknown_companion"

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"Unknown companion type {name!r}. Known types: {', '.join(sorted(known))}.")


class InvalidInputError(RedraftError):
    """A tool argument is empty, too large or malformed."""

    code = "invalid_input"


class PhaseError(RedraftError):
    """A step was asked for in the wrong phase (e.g. revise with no pending critique). Nothing was changed."""

    code = "wrong_phase"


class SessionNotFoundError(RedraftError):
    """Deliberately generic: an unknown id and another principal's id look the same."""

    code = "invalid_session"

    def __init__(self, message: str = "Invalid or unknown session.") -> None:
        super().__init__(message)


class CheckpointNotFoundError(RedraftError):
    code = "checkpoint_not_found"


class ConflictError(RedraftError):
    """Another step is running on the same thread. Retry once it has finished."""

    code = "conflict"
    retryable = True


class LeaseLostError(RedraftError):
    """This step's lease on its thread was lost (a database outage outlasted it, or another replica took the thread
    over). Nothing this step computed was committed; the thread is at ``checkpoint_id``. Retry with ``resume``."""

    code = "lease_lost"
    retryable = True

    def __init__(self, message: str, thread_id: str | None = None, checkpoint_id: str | None = None) -> None:
        super().__init__(message)
        self.thread_id = thread_id
        self.checkpoint_id = checkpoint_id


class DrainingError(RedraftError):
    """This server is shutting down (SIGTERM/SIGINT): it takes no new call, and a run in progress stopped at its step
    boundary. Everything committed is kept; retry (another replica takes it, or this one after its restart)."""

    code = "draining"
    retryable = True


class SessionBusyError(RedraftError):
    """The session has a step running, so it cannot be ended now. Retry when the step has finished."""

    code = "session_busy"
    retryable = True


class SessionLimitError(RedraftError):
    """Every session slot is held by a live session. Retry later, or end a session first."""

    code = "session_limit"
    retryable = True


class NotFoundError(RedraftError):
    """The thing asked for (a critique, a revision, a resource) does not exist yet."""

    code = "not_found"


class ModelError(RedraftError):
    """The model endpoint failed (after retries) or returned something unusable. The thread is unchanged."""

    code = "model_error"

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class TruncatedReplyError(ModelError):
    """A reply was cut at ``max_tokens`` and the truncation policy (``REDRAFT_ON_TRUNCATION``) did not accept it.
    Same code as any model error; its own class so a caller can tell it apart without reading the message."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class ContextOverflowError(ModelError):
    """The model server refused the prompt as larger than its context window. Retrying the same step repeats the
    refusal: lower ``sampling.max_tokens``, or fork with a shorter text."""

    code = "context_overflow"

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class StorageError(RedraftError):
    """The database could not be reached or failed mid-operation. Checkpoints already written are intact."""

    code = "storage_error"
    retryable = True


class UnsafePayloadError(RedraftError):
    """A stored checkpoint asked to be unpickled or to construct a type outside the allow-list."""

    code = "unsafe_payload"


@functools.cache
def _shown_type(cls: type[RedraftError]) -> type[RedraftError]:
    return type(cls.__name__, (cls, ValueError), {"__module__": cls.__module__, "__doc__": cls.__doc__})


def shown_by_agent_server(exc: RedraftError) -> RedraftError:
    """``exc`` as LangGraph Agent Server shows it to a Studio user: the server shows a ``ValueError``'s message and
    replaces every other error's with "An internal error occurred", so the public graph (graph/public.py) re-raises
    redraft's errors as this: the same class name, code, message and attributes, also a ``ValueError``."""
    shown = _shown_type(type(exc)).__new__(_shown_type(type(exc)), *exc.args)
    shown.__dict__.update(exc.__dict__)
    return shown
