-- Accounts and teams (helper C).

-- At most one default team per user: concurrent first logins cannot both create one.
CREATE UNIQUE INDEX users_teams_one_default_idx ON users_teams (user_id) WHERE is_default;

-- Disabling or deleting a user deletes the API keys they created.
CREATE INDEX team_api_keys_created_by_idx ON team_api_keys (created_by);

-- `GET /v1/users/search?email=<prefix>` is a prefix match.
CREATE INDEX users_email_prefix_idx ON users (email text_pattern_ops);
