-- Tokens for the live stream, one department each; only a SHA-256 is kept.
CREATE TABLE stream_tokens (
    token_hash  text PRIMARY KEY,
    department  text NOT NULL,
    name        text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
