-- Wrenn control plane schema. Mirrors the upstream tables (wrenn-upstream.md §3.1); what upstream
-- kept in Redis (one-time tokens, the build queue, the event stream) lives here too, so PostgreSQL
-- is the only stateful dependency.

CREATE TABLE teams (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    slug TEXT NOT NULL UNIQUE,
    is_byoc BOOLEAN NOT NULL DEFAULT false,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at TIMESTAMPTZ
);

-- The platform team owns global templates and admin capsules; nobody is a member.
INSERT INTO teams (id, name, slug) VALUES ('00000000-0000-0000-0000-000000000000', 'Platform', 'platform');

CREATE TABLE users (
    id UUID PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT,
    name TEXT NOT NULL DEFAULT '',
    is_admin BOOLEAN NOT NULL DEFAULT false,
    status TEXT NOT NULL DEFAULT 'inactive' CHECK (status IN ('active', 'inactive', 'disabled', 'deleted')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    deleted_at TIMESTAMPTZ
);

CREATE TABLE users_teams (
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id UUID NOT NULL REFERENCES teams (id),
    is_default BOOLEAN NOT NULL DEFAULT false,
    role TEXT NOT NULL DEFAULT 'member' CHECK (role IN ('owner', 'admin', 'member')),
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (team_id, user_id)
);
CREATE INDEX users_teams_user_idx ON users_teams (user_id);

CREATE TABLE team_api_keys (
    id UUID PRIMARY KEY,
    team_id UUID NOT NULL REFERENCES teams (id),
    name TEXT NOT NULL,
    key_hash TEXT NOT NULL UNIQUE,
    key_prefix TEXT NOT NULL,
    created_by UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used TIMESTAMPTZ
);
CREATE INDEX team_api_keys_team_idx ON team_api_keys (team_id);

CREATE TABLE oauth_providers (
    provider TEXT NOT NULL,
    provider_id TEXT NOT NULL,
    user_id UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, provider_id)
);
CREATE INDEX oauth_providers_user_idx ON oauth_providers (user_id);

-- One-time tokens (account activation, password reset, host registration): only a SHA-256 of the
-- token is stored; consumption is a single UPDATE … WHERE used_at IS NULL AND expires_at > now().
CREATE TABLE one_time_tokens (
    token_hash TEXT PRIMARY KEY,
    purpose TEXT NOT NULL CHECK (purpose IN ('activation', 'password_reset', 'host_registration')),
    subject_id UUID NOT NULL,
    created_by UUID,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at TIMESTAMPTZ NOT NULL,
    used_at TIMESTAMPTZ
);
CREATE INDEX one_time_tokens_subject_idx ON one_time_tokens (purpose, subject_id);
CREATE INDEX one_time_tokens_expiry_idx ON one_time_tokens (expires_at);

CREATE TABLE hosts (
    id UUID PRIMARY KEY,
    type TEXT NOT NULL DEFAULT 'regular' CHECK (type IN ('regular', 'byoc')),
    team_id UUID REFERENCES teams (id),
    provider TEXT NOT NULL DEFAULT '',
    availability_zone TEXT NOT NULL DEFAULT '',
    arch TEXT NOT NULL DEFAULT '',
    cpu_cores INTEGER NOT NULL DEFAULT 0,
    memory_mb INTEGER NOT NULL DEFAULT 0,
    disk_gb INTEGER NOT NULL DEFAULT 0,
    address TEXT NOT NULL DEFAULT '',
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'online', 'offline', 'draining', 'unreachable')),
    last_heartbeat_at TIMESTAMPTZ,
    metadata JSONB NOT NULL DEFAULT '{}',
    created_by UUID REFERENCES users (id) ON DELETE SET NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    cert_fingerprint TEXT NOT NULL DEFAULT '',
    cert_expires_at TIMESTAMPTZ
);
CREATE INDEX hosts_type_idx ON hosts (type);
CREATE INDEX hosts_team_idx ON hosts (team_id);
CREATE INDEX hosts_status_idx ON hosts (status);

CREATE TABLE host_tags (
    host_id UUID NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    tag TEXT NOT NULL,
    PRIMARY KEY (host_id, tag)
);
CREATE INDEX host_tags_tag_idx ON host_tags (tag);

CREATE TABLE host_refresh_tokens (
    id UUID PRIMARY KEY,
    host_id UUID NOT NULL REFERENCES hosts (id) ON DELETE CASCADE,
    token_hash TEXT NOT NULL UNIQUE,
    expires_at TIMESTAMPTZ NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at TIMESTAMPTZ
);

CREATE TABLE templates (
    id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
    name TEXT NOT NULL,
    type TEXT NOT NULL DEFAULT 'base' CHECK (type IN ('base', 'snapshot')),
    vcpus INTEGER NOT NULL DEFAULT 1,
    memory_mb INTEGER NOT NULL DEFAULT 512,
    size_bytes BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    team_id UUID NOT NULL,
    -- Host holding a snapshot template's files (snapshots are host-local); NULL for base images.
    host_id UUID,
    default_user TEXT NOT NULL DEFAULT 'root',
    default_env JSONB NOT NULL DEFAULT '{}',
    metadata JSONB NOT NULL DEFAULT '{}',
    protected BOOLEAN NOT NULL DEFAULT false,
    UNIQUE (team_id, name)
);

-- The built-in base image every host carries. `minimal` is upstream's name for it; the SDK's
-- default is `minimal-ubuntu`, so both resolve to the same image.
INSERT INTO templates (id, name, type, team_id, protected) VALUES
    ('00000000-0000-0000-0000-000000000000', 'minimal', 'base', '00000000-0000-0000-0000-000000000000', true),
    ('00000000-0000-0000-0000-000000000001', 'minimal-ubuntu', 'base', '00000000-0000-0000-0000-000000000000', true);

-- A team may not shadow a platform template's name.
CREATE FUNCTION reject_platform_template_name() RETURNS trigger AS $$
BEGIN
    IF NEW.team_id <> '00000000-0000-0000-0000-000000000000' AND EXISTS (
        SELECT 1 FROM templates WHERE team_id = '00000000-0000-0000-0000-000000000000' AND name = NEW.name
    ) THEN
        RAISE EXCEPTION 'template name % is reserved by a platform template', NEW.name
            USING ERRCODE = 'unique_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER templates_reject_platform_name BEFORE INSERT OR UPDATE OF name ON templates
    FOR EACH ROW EXECUTE FUNCTION reject_platform_template_name();

CREATE TABLE sandboxes (
    id UUID PRIMARY KEY,
    team_id UUID NOT NULL REFERENCES teams (id),
    host_id UUID,
    template TEXT NOT NULL DEFAULT 'minimal',
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'starting', 'running', 'pausing', 'paused', 'snapshotting', 'resuming', 'stopping', 'hibernated', 'stopped', 'missing', 'error')),
    vcpus INTEGER NOT NULL DEFAULT 1,
    memory_mb INTEGER NOT NULL DEFAULT 512,
    timeout_sec INTEGER NOT NULL DEFAULT 0,
    disk_size_mb INTEGER NOT NULL DEFAULT 5120,
    guest_ip TEXT NOT NULL DEFAULT '',
    host_ip TEXT NOT NULL DEFAULT '',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at TIMESTAMPTZ,
    last_active_at TIMESTAMPTZ,
    last_updated TIMESTAMPTZ NOT NULL DEFAULT now(),
    template_id UUID,
    template_team_id UUID,
    metadata JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX sandboxes_status_idx ON sandboxes (status);
CREATE INDEX sandboxes_host_status_idx ON sandboxes (host_id, status);
CREATE INDEX sandboxes_team_idx ON sandboxes (team_id, created_at DESC);

CREATE TABLE audit_logs (
    id UUID PRIMARY KEY,
    team_id UUID NOT NULL,
    actor_type TEXT NOT NULL CHECK (actor_type IN ('user', 'api_key', 'system')),
    actor_id TEXT,
    actor_name TEXT NOT NULL DEFAULT '',
    resource_type TEXT NOT NULL,
    resource_id TEXT,
    action TEXT NOT NULL,
    scope TEXT NOT NULL DEFAULT 'team' CHECK (scope IN ('team', 'admin')),
    status TEXT NOT NULL DEFAULT 'success' CHECK (status IN ('success', 'info', 'warning', 'error')),
    metadata JSONB NOT NULL DEFAULT '{}',
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX audit_logs_team_time_idx ON audit_logs (team_id, created_at DESC, id DESC);
CREATE INDEX audit_logs_team_resource_idx ON audit_logs (team_id, resource_type, created_at DESC);

-- The event feed (SSE). Each insert is announced with NOTIFY wrenn_events '<id>' so every control
-- plane instance delivers every event; rows older than a day are pruned.
CREATE TABLE events (
    id BIGSERIAL PRIMARY KEY,
    team_id UUID NOT NULL,
    payload JSONB NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX events_created_idx ON events (created_at);

CREATE FUNCTION notify_event() RETURNS trigger AS $$
BEGIN
    PERFORM pg_notify('wrenn_events', NEW.id::text);
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;
CREATE TRIGGER events_notify AFTER INSERT ON events FOR EACH ROW EXECUTE FUNCTION notify_event();

CREATE TABLE sandbox_metrics_snapshots (
    id BIGSERIAL PRIMARY KEY,
    team_id UUID NOT NULL,
    sampled_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    running_count INTEGER NOT NULL DEFAULT 0,
    vcpus_reserved INTEGER NOT NULL DEFAULT 0,
    memory_mb_reserved INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX sandbox_metrics_snapshots_team_idx ON sandbox_metrics_snapshots (team_id, sampled_at DESC);

CREATE TABLE sandbox_metric_points (
    sandbox_id UUID NOT NULL,
    tier TEXT NOT NULL CHECK (tier IN ('10m', '2h', '24h')),
    ts BIGINT NOT NULL,
    cpu_pct DOUBLE PRECISION NOT NULL,
    mem_bytes BIGINT NOT NULL,
    disk_bytes BIGINT NOT NULL,
    PRIMARY KEY (sandbox_id, tier, ts)
);

CREATE TABLE daily_usage (
    team_id UUID NOT NULL,
    day DATE NOT NULL,
    cpu_minutes NUMERIC(18, 4) NOT NULL DEFAULT 0,
    ram_mb_minutes NUMERIC(18, 4) NOT NULL DEFAULT 0,
    PRIMARY KEY (team_id, day)
);

CREATE TABLE template_builds (
    id UUID PRIMARY KEY,
    name TEXT NOT NULL,
    base_template TEXT NOT NULL DEFAULT 'minimal',
    recipe JSONB NOT NULL DEFAULT '[]',
    healthcheck TEXT NOT NULL DEFAULT '',
    vcpus INTEGER NOT NULL DEFAULT 1,
    memory_mb INTEGER NOT NULL DEFAULT 512,
    status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'running', 'success', 'failed', 'cancelled')),
    current_step INTEGER NOT NULL DEFAULT 0,
    total_steps INTEGER NOT NULL DEFAULT 0,
    logs JSONB NOT NULL DEFAULT '[]',
    error TEXT NOT NULL DEFAULT '',
    sandbox_id UUID,
    host_id UUID,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at TIMESTAMPTZ,
    completed_at TIMESTAMPTZ,
    template_id UUID,
    team_id UUID NOT NULL,
    skip_pre_post BOOLEAN NOT NULL DEFAULT false,
    default_user TEXT NOT NULL DEFAULT 'root',
    default_env JSONB NOT NULL DEFAULT '{}',
    metadata JSONB NOT NULL DEFAULT '{}'
);
CREATE INDEX template_builds_queue_idx ON template_builds (status, created_at);

-- The internal CA that signs host agents' server certificates and the control plane's client
-- certificate. Generated by the first control plane to start (when none is configured) and shared
-- by every instance through this row.
CREATE TABLE internal_ca (
    id BOOLEAN PRIMARY KEY DEFAULT true CHECK (id),
    cert_pem TEXT NOT NULL,
    key_pem TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
