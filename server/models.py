"""Typed inputs and structured outputs of the MCP tools."""

from functools import lru_cache
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from redraft.server.validation import NAME_CHARS, text


class Sampling(BaseModel):
    """Per-query sampling overrides. Endpoint and key are server settings and cannot be set here."""

    model_config = ConfigDict(extra="forbid")
    model: text(NAME_CHARS, optional=True) = None
    temperature: Annotated[float | None, Field(ge=0.0, le=2.0)] = None
    top_p: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    max_tokens: Annotated[int | None, Field(ge=1, le=200_000)] = None
    seed: int | None = None


@lru_cache
def decision_type(max_chars: int) -> type[BaseModel]:
    """The step-mode decision, its texts limited to ``max_chars`` (the ``max_text_chars`` setting)."""

    replacement = text(max_chars, "replace: the critique or revision to use instead", optional=True)
    edited = text(max_chars, "edit (before a revision): the corrected critique", optional=True)

    class Decision(BaseModel):
        """A human decision at a step-mode gate."""

        model_config = ConfigDict(extra="forbid")
        action: Literal["approve", "edit", "replace"]
        text: replacement = None
        critique: edited = None

    return Decision


class SessionInfo(BaseModel):
    session_id: str
    created_at: float
    expires_after_idle_s: float


class SessionEnded(BaseModel):
    session_id: str
    ended: bool
    threads_deleted: int


class SessionSummary(BaseModel):
    session_id: str
    created_at: float
    last_accessed: float
    expires_at: float


class SessionList(BaseModel):
    sessions: list[SessionSummary]


class ThreadView(BaseModel):
    """A thread (one companion type within a session) at its latest checkpoint, or at a given one."""

    session_id: str
    companion: str
    phase: str = Field(description="empty | needs_draft | ready_to_critique | needs_revision | done")
    slot_index: int | None
    slots: int
    slot: dict[str, Any] | None = Field(description="the current run_log slot {query, draft, critique, revision, ...}")
    similarities: list[float]
    convergence: dict[str, Any] | None
    stop_reason: str | None
    best_version: int | None = Field(description="0 = the draft, k = revision k")
    final_text: str | None
    run_config: dict[str, Any]
    next: list[str]
    pending_gate: dict[str, Any] | None
    branch: str | None = Field(default=None, description="state_at: the tip of the branch this checkpoint is on")
    on_head_branch: bool | None = Field(default=None, description="state_at: whether that branch is the live one")
    truncations: list[dict[str, Any]] = Field(
        default_factory=list,
        description="steps of this query whose reply the model cut at max_tokens, and what was done",
    )
    checkpoint_id: str | None
    duration_s: float | None = None
    suggestions: dict[str, Any] | None = None
    usage: dict[str, Any] | None = Field(
        default=None,
        description="tokens and cost (USD, null when a price is unknown; 'estimated' when the endpoint reported no "
        "usage): step (the last), run (the last), query, thread; and calls (this query's model calls)",
    )
    anomalies: list[dict[str, Any]] | None = Field(
        default=None,
        description="figures of this run beyond the 95th percentile of the companion's (or model's) recorded runs",
    )


class CompanionInfo(BaseModel):
    name: str
    description: str
    model: str | None
    temperature: float | None
    similarity_threshold: float
    max_loops: int
    min_score: float | None = Field(default=None, description="stop once the critic scores a version this high")
    clear_history: bool
    mode: str
    roles: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="what each role (drafter, critic, reviser) resolves to: model and sampling, and own_endpoint when "
        "the role has a base URL of its own (the URL itself is not shown)",
    )


class CompanionList(BaseModel):
    companions: list[CompanionInfo]


class CheckpointEntry(BaseModel):
    checkpoint_id: str
    parent_id: str | None
    step: int | None
    source: str | None
    node: str | None = Field(description="the node whose step produced this checkpoint (input/draft/critique/revise)")
    phase: str | None
    slot: int | None
    critiques: int | None
    revisions: int | None
    similarity: float | None
    tokens: int | None = Field(default=None, description="tokens of the step's model calls (input + output)")
    cost: float | None = Field(default=None, description="USD cost of the step's model calls (null: unknown)")
    stop_reason: str | None
    edited: bool = Field(description="written by a fork edit rather than by a node")
    created_at: str | None
    branch: str | None = Field(description="id of the newest checkpoint on this checkpoint's branch")
    on_head_branch: bool


class HistoryPage(BaseModel):
    thread_id: str
    checkpoints: list[CheckpointEntry] = Field(description="newest first")
    next_before: str | None = Field(description="pass as `before` for the next page; null on the last page")
    head: str | None


class DiffResult(BaseModel):
    from_version: int
    to_version: int
    similarity: float
    diff: str = Field(description="unified diff, one word per line")
