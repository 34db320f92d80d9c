"""The companion turn: one message in, one reply (or a panel's replies) out.

How the package is cut, and why:

- `events`: what a turn yields. One `TurnMeta` for single turns and panels (a
  panel's ``personas`` is a field, left out of a single turn's JSON), so clients
  and the responder read one shape.
- `prompt`: the pure prompt builder (no engine, no database). The order of its
  parts is what lets the engine reuse the previous turn's KV, so it is unit-tested
  on its own (tests/unit/test_turn_prompt.py: turn N's prompt is a prefix of turn
  N+1's up to the volatile block, for every persona and memory state).
- `fit`: measuring the prompt in the engine's tokens and trimming it to the
  context; the only prompt code that needs an engine.
- `gather`: understanding the message, loading the conversation, retrieving
  memories, routing (everything before the prompt).
- `store`: what a turn writes (the user's message, replies, queued memory work).
- `voices`: who answers (route, persona, tier and engine; a panel's personas), with
  which prompt, and the ``meta`` event that says so.
- `orchestrator`: `ChatTurnService`, the one orchestrator. A single turn is a panel
  of one persona: both run the same gather, the same engine loop and the same
  store of each reply; only the events they yield differ in shape.
- `merge`: several generations relayed as one stream (a panel's personas).
- `stats` / `metrics`: step timings as numbers (`TurnClock`, a `StepObserver`),
  and the Prometheus histogram made of them, kept apart as `inference.stats` /
  `inference.metrics` are.
- `responder`: the HTTP side (SSE or collected JSON, idempotent replay,
  keep-alives, the error event), built once per app and injected into the
  handlers (`server.conversations_api`), which only parse and delegate.
- `errors`: why a turn is refused before it starts.

Nothing is re-exported here: import from the module, so `server.idempotency` can
use `events` without importing the orchestrator.
"""
