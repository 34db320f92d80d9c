-- Personality and goals: what the companion has come to understand about a user.
-- Everything here is derived from the user's own messages, belongs to the user
-- (exported with them, erased with them: ON DELETE CASCADE) and can be rebuilt.

-- One Big Five estimate per user and trait: score in [0, 1] (0.5 = no lean),
-- evidence = decayed weight of the observations behind it (confidence grows with it).
CREATE TABLE personality_traits (
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    trait        text NOT NULL CHECK (trait IN (
                     'openness', 'conscientiousness', 'extraversion', 'agreeableness', 'neuroticism')),
    score        real NOT NULL CHECK (score >= 0 AND score <= 1),
    evidence     real NOT NULL CHECK (evidence >= 0),
    observations integer NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, trait)
);

-- Every signal that moved an estimate, with the message it came from: why the
-- companion thinks so (shown in the export), and the guard that keeps a retried
-- job from counting the same message twice (one row per message, trait and source).
CREATE TABLE personality_observations (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    trait      text NOT NULL,
    value      real NOT NULL CHECK (value >= 0 AND value <= 1),
    weight     real NOT NULL CHECK (weight > 0),
    source     text NOT NULL CHECK (source IN ('rules', 'model')),
    message_id bigint NOT NULL,  -- no foreign key: estimates outlive a deleted conversation
    cue        text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (user_id, message_id, trait, source)
);

CREATE TABLE goals (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id            uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    description        text NOT NULL,
    status             text NOT NULL DEFAULT 'active'
                           CHECK (status IN ('active', 'achieved', 'abandoned')),
    embedding          vector(384) NOT NULL,
    source             text NOT NULL CHECK (source IN ('rules', 'model')),
    source_message_ids bigint[] NOT NULL DEFAULT '{}',
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);
-- A user's goals, most recently touched first (profile, prompt hint).
CREATE INDEX goals_user_updated_idx ON goals (user_id, updated_at DESC);

CREATE TABLE goal_notes (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    goal_id    bigint NOT NULL REFERENCES goals (id) ON DELETE CASCADE,
    note       text NOT NULL,
    status     text CHECK (status IN ('active', 'achieved', 'abandoned')),  -- what it set, if anything
    message_id bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (goal_id, message_id)  -- a retried job adds no second note for the same message
);
