-- First schema: users, conversations, messages, long-term memories.
-- Runs inside the applier's transaction; keep every statement transactional
-- (no CREATE INDEX CONCURRENTLY here).

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    username      text NOT NULL,
    password_hash text,
    is_admin      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

CREATE TABLE conversations (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    persona    text NOT NULL DEFAULT 'default',
    title      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
-- A user's conversation list, most recently active first.
CREATE INDEX conversations_user_updated_idx ON conversations (user_id, updated_at DESC);

CREATE TABLE messages (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    conversation_id uuid NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('system', 'user', 'assistant')),
    content         text NOT NULL,
    token_count     integer,
    metadata        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now()
);
-- History of one conversation in order (buffer rebuild, paging).
CREATE INDEX messages_conversation_idx ON messages (conversation_id, id);
-- Everything of one user (export, erase).
CREATE INDEX messages_user_idx ON messages (user_id, id);

CREATE TABLE memories (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    conversation_id    uuid REFERENCES conversations (id) ON DELETE SET NULL,
    kind               text NOT NULL CHECK (kind IN ('episodic', 'semantic')),
    content            text NOT NULL,
    embedding          vector(384) NOT NULL,
    search             tsvector GENERATED ALWAYS AS (to_tsvector('english', content)) STORED,
    importance         real NOT NULL DEFAULT 0.5 CHECK (importance >= 0 AND importance <= 1),
    -- provenance: the messages this memory was taken from
    source_message_ids bigint[] NOT NULL DEFAULT '{}',
    superseded_by      bigint REFERENCES memories (id) ON DELETE SET NULL,
    access_count       integer NOT NULL DEFAULT 0,
    created_at         timestamptz NOT NULL DEFAULT now(),
    last_accessed_at   timestamptz
);
-- Vector candidates (cosine); filtered by user with iterative scans at query time.
CREATE INDEX memories_embedding_idx ON memories USING hnsw (embedding vector_cosine_ops);
-- Full-text candidates.
CREATE INDEX memories_search_idx ON memories USING gin (search);
-- A user's memories, optionally of one conversation.
CREATE INDEX memories_user_conversation_idx ON memories (user_id, conversation_id);
-- A user's memories by importance and recency (ranking, decay, consolidation).
CREATE INDEX memories_user_importance_idx ON memories (user_id, importance DESC, created_at DESC);
