-- Durable rolling summaries of conversations (memory/summaries.py), and indexes
-- for the retrieval hot path (memory/longterm.py; docs/memory.md has the profile).

-- One row per conversation: the summary of its messages up to through_message_id
-- (0 and a NULL summary: no fold has succeeded yet), and the last unusable answer.
CREATE TABLE conversation_summaries (
    conversation_id    uuid PRIMARY KEY REFERENCES conversations (id) ON DELETE CASCADE,
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    summary            text,
    through_message_id bigint NOT NULL DEFAULT 0,
    updated_at         timestamptz NOT NULL DEFAULT now(),
    failures           integer NOT NULL DEFAULT 0,
    last_failure       text,
    last_failure_at    timestamptz
);
-- Export and erase of one user.
CREATE INDEX conversation_summaries_user_idx ON conversation_summaries (user_id);

-- Retrieval counts a user's live memories first (to choose between an exact scan
-- and the HNSW index) and again for the text scores' document frequencies. Over
-- live rows only, the count is an index-only scan instead of a visit to every
-- row's heap page.
CREATE INDEX memories_user_live_idx ON memories (user_id, conversation_id)
    WHERE superseded_by IS NULL;
