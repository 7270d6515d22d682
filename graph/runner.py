"""Thread operations shared by the MCP tools and the CLI: step, refine, resume, status.

Every operation that advances a thread holds the thread's lease (``Database.thread_lock``), so two callers -- in
one process or in several -- can never both append to the same run_log. Runs use ``durability="sync"``: a step's
checkpoint is on disk before the next step starts, so a crash loses at most the step in flight and never repeats a
completed one.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from langgraph.types import StateSnapshot

from redraft.errors import InvalidInputError, LeaseLostError, ModelError, PhaseError, RedraftError
from redraft.graph.builder import build_graph
from redraft.graph.checkpointer import Persistence
from redraft.graph.clock import order_after
from redraft.graph.companions import Companion, get_companion
from redraft.graph.database import is_driver_error, storage_error
from redraft.graph.opening import MAX_LOOPS, check_text, open_input
from redraft.graph.opening import may_start as _may_start
from redraft.graph.state import phase_of
from redraft.graph.view import RunEnd, describe, pending_gate
from redraft.nodes.context import RedraftContext
from redraft.nodes.gate import answer_for, validate_decision
from redraft.nodes.model import ModelProvider
from redraft.settings import Settings

# supersteps of the longest allowed run (input, draft, 2 per loop), set explicitly rather than relying on
# LangGraph's environment-tunable default
RECURSION_LIMIT = 2 * MAX_LOOPS + 10
StepCallback = Callable[[dict], Awaitable[None]]
TokenCallback = Callable[[str, str], Awaitable[None]]


def thread_id_for(session_id: str, companion: str) -> str:
    return f"{session_id}:{companion}"


def _with_total(on_step: StepCallback | None, total: int) -> StepCallback | None:
    """Step events of a whole run also carry the most steps it can take (input excluded), for progress bars."""
    if on_step is None:
        return None

    async def step(event: dict) -> None:
        await on_step({**event, "total": total})

    return step


class Runner:
    def __init__(self, persistence: Persistence, settings: Settings, models: ModelProvider | None = None) -> None:
        self.persistence = persistence
        self.settings = settings
        self.models = models or ModelProvider(settings)
        self.graph = build_graph(persistence.saver)

    # --- helpers --------------------------------------------------------------------------------------------------

    def companion(self, name: str) -> Companion:
        return get_companion(name, self.settings.companions)

    @staticmethod
    def config(thread_id: str, checkpoint_id: str | None = None) -> dict:
        configurable = {"thread_id": thread_id}
        if checkpoint_id:
            configurable.update(checkpoint_id=checkpoint_id, checkpoint_ns="")
        return {"configurable": configurable}

    async def snapshot(self, thread_id: str, checkpoint_id: str | None = None) -> StateSnapshot:
        try:
            snap = await self.graph.aget_state(self.config(thread_id, checkpoint_id))
        except RedraftError:
            raise
        except Exception as exc:
            raise storage_error(exc) from None
        if checkpoint_id is None:  # the head: whatever this process writes next must sort after it (graph/clock.py)
            order_after((snap.config or {}).get("configurable", {}).get("checkpoint_id"))
        return snap

    def check_text(self, text: str | None, what: str, limit: int) -> str:
        return check_text(text, what, limit)

    def open_input(
        self,
        companion: Companion,
        query: str,
        sampling: dict | None = None,
        similarity_threshold: float | None = None,
        max_loops: int | None = None,
        min_score: float | None = None,
        **budgets: float | None,
    ) -> dict:
        return open_input(
            self.settings, companion, query, sampling, similarity_threshold, max_loops, min_score=min_score, **budgets
        )

    async def _run(
        self,
        thread_id: str,
        graph_input: Any,
        *,
        stepwise: bool,
        on_step: StepCallback | None = None,
        on_token: TokenCallback | None = None,
        checkpoint_id: str | None = None,
        answer: dict | None = None,
    ) -> RunEnd | None:
        context = RedraftContext(settings=self.settings, models=self.models, stepwise=stepwise, answer=answer)
        modes = ["updates", "checkpoints", "messages"] if on_token else ["updates", "checkpoints"]
        last: dict | None = None
        interrupts: tuple = ()
        try:
            async for mode, chunk in self.graph.astream(
                graph_input,
                {**self.config(thread_id, checkpoint_id), "recursion_limit": RECURSION_LIMIT},
                context=context,
                stream_mode=modes,
                durability="sync",
            ):
                if mode == "checkpoints":
                    last = chunk
                elif mode == "messages" and on_token:
                    message, meta = chunk
                    if getattr(message, "content", None):
                        await on_token(meta.get("langgraph_node", ""), message.content)
                elif mode == "updates":
                    interrupts = tuple(chunk.get("__interrupt__", ())) or interrupts
                    for node, update in chunk.items():
                        if node != "__interrupt__" and on_step:
                            await on_step({"node": node, "update": update})
        except LeaseLostError as exc:
            # the thread stays where this run last committed (or where it started)
            committed = (last or {}).get("config", {}).get("configurable", {}).get("checkpoint_id")
            exc.checkpoint_id = committed or checkpoint_id
            if exc.checkpoint_id:
                exc.message += f" The thread is at checkpoint {exc.checkpoint_id}."
            raise
        except RedraftError:
            raise
        except Exception as exc:
            if is_driver_error(exc):
                raise storage_error(exc) from None
            if type(exc).__module__.startswith(("openai", "httpx")):
                raise ModelError(f"The model endpoint failed ({type(exc).__name__}).") from None
            raise
        if last is None:
            return None
        if remember := getattr(self.persistence.saver, "remember_head", None):  # the next step starts from here
            remember(last["config"], last["values"])
        return RunEnd(values=last["values"], next=tuple(last["next"]), config=last["config"], interrupts=interrupts)

    async def _view(self, thread_id: str, end: RunEnd | None) -> dict:
        """The result of a run: from its stream when it emitted a checkpoint, else read back."""
        return describe(thread_id, end) if end is not None else await self.status(thread_id)

    async def _advance(self, thread_id: str, gate_name: str, decision: dict, snap: StateSnapshot) -> RunEnd | None:
        """Run exactly the gated node ``gate_name`` with ``decision``; stop at the next gate.

        The decision goes to the node in the run's context, addressed to this gate's slot and round, so it is the one
        the node sees even when an earlier attempt at the gate failed (nodes/gate.py)."""
        gate = pending_gate(snap)
        if gate is not None and gate["gate"] != gate_name:
            raise PhaseError(f"The thread is waiting for a {gate['gate']} decision, not {gate_name}.")
        self._require_open_step(snap, gate_name)
        return await self._run(thread_id, None, stepwise=True, answer=answer_for(gate_name, snap.values, decision))

    @staticmethod
    def _require_open_step(snap: StateSnapshot, gate_name: str) -> None:
        """Refuse a decision for a step that will not run: not next, or already finished (its result was saved just
        before a crash, and resuming applies it)."""
        if gate_name not in (snap.next or ()):
            raise PhaseError(f"The thread is not at the {gate_name} step: call resume.")
        if any(task.name == gate_name and task.result is not None for task in snap.tasks or ()):
            raise PhaseError(
                f"The {gate_name} step already ran (its result was saved before an interruption): "
                "call resume without a decision to apply it."
            )

    def _checked_decision(self, gate_name: str, decision: Any) -> dict:
        """A valid decision for ``gate_name``, its texts held to the same limits as the step tools' texts."""
        decision = dict(validate_decision(gate_name, decision))
        limit = self.settings.max_text_chars
        if decision["action"] == "replace":
            what = "critique" if gate_name == "critique" else "revision"
            decision["text"] = self.check_text(decision["text"], what, limit)
        elif decision["action"] == "edit":
            decision["critique"] = self.check_text(decision["critique"], "critique", limit)
        return decision

    # --- step operations ------------------------------------------------------------------------------------------

    async def draft(self, thread_id: str, companion: str, query: str, **options: Any) -> dict:
        graph_input = self.open_input(self.companion(companion), query, **options)
        async with self.persistence.db.thread_lock(thread_id):
            state = (await self.snapshot(thread_id)).values
            retry = _may_start(state, graph_input, "drafting a new one")
            graph_input["run_log"][0]["slot"] = len(state.get("run_log") or [])
            # a retry of a draft call that failed (say, a model error) writes the pending draft and opens nothing
            end = await self._run(thread_id, None if retry else graph_input, stepwise=True)
        return await self._view(thread_id, end)

    async def critique(self, thread_id: str, text: str | None = None) -> dict:
        decision = {"action": "approve"}
        if text is not None:
            decision = {"action": "replace", "text": self.check_text(text, "critique", self.settings.max_text_chars)}
        async with self.persistence.db.thread_lock(thread_id):
            snap = await self.snapshot(thread_id)
            self._require_phase(snap.values, "ready_to_critique", "critique")
            end = await self._advance(thread_id, "critique", decision, snap)
        return await self._view(thread_id, end)

    async def revise(self, thread_id: str, text: str | None = None, critique: str | None = None) -> dict:
        decision: dict = {"action": "approve"}
        if critique is not None:
            decision = {
                "action": "edit",
                "critique": self.check_text(critique, "critique", self.settings.max_text_chars),
            }
        if text is not None:
            if critique is not None:
                raise InvalidInputError("Pass either a revision text or an edited critique, not both.")
            decision = {"action": "replace", "text": self.check_text(text, "revision", self.settings.max_text_chars)}
        async with self.persistence.db.thread_lock(thread_id):
            snap = await self.snapshot(thread_id)
            self._require_phase(snap.values, "needs_revision", "revise")
            end = await self._advance(thread_id, "revise", decision, snap)
        return await self._view(thread_id, end)

    @staticmethod
    def _require_phase(state: dict, wanted: str, action: str) -> None:
        phase = phase_of(state)
        if phase == wanted:
            return
        hints = {
            "empty": "there is no query yet: call draft first",
            "done": "the current query is finished: call draft with a new query",
            "needs_revision": "a critique is pending: call revise first",
            "ready_to_critique": "there is no pending critique: call critique first",
            "needs_draft": "the draft has not been written yet: call resume",
        }
        raise PhaseError(f"Cannot {action} now: {hints.get(phase, phase)}.")

    # --- whole runs -----------------------------------------------------------------------------------------------

    async def refine(
        self,
        thread_id: str,
        companion: str,
        query: str | None = None,
        *,
        on_step: StepCallback | None = None,
        on_token: TokenCallback | None = None,
        **options: Any,
    ) -> dict:
        """Run to convergence (or to the next human gate in ``step`` mode). With a query, start a new one first."""
        comp = self.companion(companion)
        graph_input = self.open_input(comp, query, **options) if query is not None else None
        started = time.monotonic()
        async with self.persistence.db.thread_lock(thread_id):
            snap = await self.snapshot(thread_id)
            phase = phase_of(snap.values)
            if graph_input is None and phase in ("empty", "done"):
                raise PhaseError("Nothing to refine: pass a query to start one.")
            if graph_input is not None:
                if _may_start(snap.values, graph_input, "calling refine with a new query"):
                    graph_input = None  # the same query again after its draft failed: write that draft
                else:
                    graph_input["run_log"][0]["slot"] = len(snap.values.get("run_log") or [])
            stepwise = (snap.values.get("run_config") or {}).get("mode", comp.mode) == "step"
            if graph_input is None and stepwise and pending_gate(snap) is not None:
                raise PhaseError("The thread is waiting for a human decision: call resume with one.")
            run_config = graph_input["run_config"] if graph_input is not None else snap.values.get("run_config") or {}
            end = await self._run(
                thread_id,
                graph_input,
                stepwise=stepwise,
                on_step=_with_total(on_step, 1 + 2 * int(run_config.get("max_loops", 1))),
                on_token=on_token,
            )
        result = await self._view(thread_id, end)
        result["duration_s"] = round(time.monotonic() - started, 6)
        return result

    async def resume(
        self, thread_id: str, decision: dict | None = None, *, on_step: StepCallback | None = None
    ) -> dict:
        """Continue a thread stopped by a crash, an error or a human gate (answering it with ``decision``)."""
        async with self.persistence.db.thread_lock(thread_id):
            snap = await self.snapshot(thread_id)
            # `tasks` also covers a crash between a task's saved writes and the next checkpoint (then `next` is empty)
            if not snap.next and not snap.tasks:
                raise PhaseError("Nothing to resume: the thread is not stopped mid-run.")
            gate = pending_gate(snap)
            stepwise = (snap.values.get("run_config") or {}).get("mode") == "step"
            answer = None
            if gate is not None:
                # the gated node runs with this decision (approve by default), in step and auto mode alike; an auto
                # run then carries on without gates
                self._require_open_step(snap, gate["gate"])
                answer = answer_for(gate["gate"], snap.values, self._checked_decision(gate["gate"], decision))
            elif decision is not None:
                raise InvalidInputError("The thread is not waiting for a decision; call resume without one.")
            end = await self._run(thread_id, None, stepwise=stepwise, on_step=on_step, answer=answer)
        return await self._view(thread_id, end)

    # --- reading --------------------------------------------------------------------------------------------------

    async def status(self, thread_id: str, checkpoint_id: str | None = None) -> dict:
        snap = await self.snapshot(thread_id, checkpoint_id)
        return describe(thread_id, snap)
