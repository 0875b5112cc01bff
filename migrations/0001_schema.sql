-- velro-authz schema (SPEC §3): the facts every decision is computed from.
--
-- Postgres is the source of truth; sidecars cache these rows and learn about
-- every change through the NOTIFY triggers of 0002_notify.sql.
-- Needs Postgres 15+ (gen_random_uuid() is built in since 13; the shares
-- uniqueness uses NULLS NOT DISTINCT, new in 15).

CREATE TABLE users (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    email      text        NOT NULL UNIQUE,
    -- Only 'active' users are ever allowed anything.
    status     text        NOT NULL DEFAULT 'active'
                           CHECK (status IN ('active', 'suspended', 'deleted')),
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A tree: membership of a team counts in all its descendants. Deleting a team
-- deletes its subtree. Cycles are rejected by a trigger below.
CREATE TABLE teams (
    id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name      text NOT NULL,
    parent_id uuid NULL REFERENCES teams (id) ON DELETE CASCADE
);
CREATE INDEX teams_parent_id_idx ON teams (parent_id);

CREATE TABLE team_members (
    team_id uuid NOT NULL REFERENCES teams (id) ON DELETE CASCADE,
    user_id uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- viewer < member < admin < owner
    role    text NOT NULL CHECK (role IN ('viewer', 'member', 'admin', 'owner')),
    PRIMARY KEY (team_id, user_id)
);
-- "which teams is U in" (the primary key serves "who is in T").
CREATE INDEX team_members_user_id_idx ON team_members (user_id);

CREATE TABLE projects (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    owner_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    team_id    uuid NULL REFERENCES teams (id) ON DELETE SET NULL,
    visibility text NOT NULL DEFAULT 'private' CHECK (visibility IN ('private', 'public')),
    name       text NOT NULL
);
CREATE INDEX projects_team_id_idx ON projects (team_id);
-- For the ON DELETE CASCADE from users.
CREATE INDEX projects_owner_id_idx ON projects (owner_id);

-- parent_id is a lineage (a generation derived from another); it is walked only
-- to find a generation's project. Cycles are rejected by a trigger below.
CREATE TABLE generations (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    project_id uuid        NULL REFERENCES projects (id) ON DELETE SET NULL,
    parent_id  uuid        NULL REFERENCES generations (id) ON DELETE SET NULL,
    -- 'deleted' generations do not exist for anyone; the others do not affect decisions.
    status     text        NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('pending', 'completed', 'failed', 'deleted')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX generations_parent_id_idx ON generations (parent_id);
-- For the ON DELETE actions from users and projects.
CREATE INDEX generations_user_id_idx ON generations (user_id);
CREATE INDEX generations_project_id_idx ON generations (project_id);

-- Explicit grants on a generation or a project, to one user or one team.
-- resource_id cannot be a foreign key to two tables: the triggers below check
-- that it exists and delete the shares of a deleted resource.
CREATE TABLE shares (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    resource_kind   text NOT NULL CHECK (resource_kind IN ('generation', 'project')),
    resource_id     uuid NOT NULL,
    grantee_user_id uuid NULL REFERENCES users (id) ON DELETE CASCADE,
    grantee_team_id uuid NULL REFERENCES teams (id) ON DELETE CASCADE,
    role            text NOT NULL CHECK (role IN ('viewer', 'member', 'admin', 'owner')),
    CONSTRAINT shares_exactly_one_grantee
        CHECK (num_nonnulls(grantee_user_id, grantee_team_id) = 1),
    -- One share per (resource, grantee). Exactly one grantee column is NULL, so
    -- NULLS NOT DISTINCT makes this "unique per user grantee / per team grantee".
    -- Its leading columns also serve the lookup "shares on this resource".
    CONSTRAINT shares_one_per_grantee
        UNIQUE NULLS NOT DISTINCT (resource_kind, resource_id, grantee_user_id, grantee_team_id)
);
-- For the ON DELETE CASCADE from users and teams.
CREATE INDEX shares_grantee_user_id_idx ON shares (grantee_user_id) WHERE grantee_user_id IS NOT NULL;
CREATE INDEX shares_grantee_team_id_idx ON shares (grantee_team_id) WHERE grantee_team_id IS NOT NULL;

-- Service keys. Only the hex SHA-256 of the key is stored.
CREATE TABLE api_keys (
    id             uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    key_hash       text        NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    -- The first characters of the plain key, so a human can tell keys apart.
    display_prefix text        NULL,
    -- NULL = no narrowing of the five actions (never 'ops'); '{}' = nothing.
    scopes         text[]      NULL,
    expires_at     timestamptz NULL,
    revoked_at     timestamptz NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX api_keys_user_id_idx ON api_keys (user_id);

-- A JWT's `sid` names a row here; revoking it kills every token that carries it.
CREATE TABLE sessions (
    id         uuid        PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id    uuid        NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX sessions_user_id_idx ON sessions (user_id);

-- ---------------------------------------------------------------------------
-- shares.resource_id integrity
-- ---------------------------------------------------------------------------

-- Rejects a share whose resource does not exist in the table named by
-- resource_kind. Like a real foreign key it locks the referenced row
-- (FOR KEY SHARE), so a concurrent delete of the resource either waits for this
-- transaction (and then its delete trigger removes the new share) or wins
-- (and then this check no longer finds the row).
CREATE FUNCTION velro_authz_check_share_resource() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.resource_kind = 'generation' THEN
        PERFORM 1 FROM generations WHERE id = NEW.resource_id FOR KEY SHARE;
    ELSIF NEW.resource_kind = 'project' THEN
        PERFORM 1 FROM projects WHERE id = NEW.resource_id FOR KEY SHARE;
    ELSE
        RETURN NEW;  -- an unknown kind: the CHECK constraint rejects it
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'share refers to a % that does not exist: %',
                        NEW.resource_kind, NEW.resource_id
            USING ERRCODE = 'foreign_key_violation',
                  TABLE = 'shares',
                  COLUMN = 'resource_id';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER shares_check_resource
    BEFORE INSERT OR UPDATE OF resource_kind, resource_id ON shares
    FOR EACH ROW EXECUTE FUNCTION velro_authz_check_share_resource();

-- Deleting a generation or project deletes its shares (the ON DELETE CASCADE a
-- foreign key would give); changing its id moves them (ON UPDATE CASCADE).
-- TG_ARGV[0] is the resource_kind.
CREATE FUNCTION velro_authz_cascade_shares() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM shares WHERE resource_kind = TG_ARGV[0];
    ELSIF TG_OP = 'DELETE' THEN
        DELETE FROM shares WHERE resource_kind = TG_ARGV[0] AND resource_id = OLD.id;
    ELSIF TG_OP = 'UPDATE' AND NEW.id IS DISTINCT FROM OLD.id THEN
        UPDATE shares SET resource_id = NEW.id
         WHERE resource_kind = TG_ARGV[0] AND resource_id = OLD.id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER generations_cascade_shares
    AFTER DELETE OR UPDATE OF id ON generations
    FOR EACH ROW EXECUTE FUNCTION velro_authz_cascade_shares('generation');
CREATE TRIGGER generations_cascade_shares_truncate
    AFTER TRUNCATE ON generations
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_cascade_shares('generation');
CREATE TRIGGER projects_cascade_shares
    AFTER DELETE OR UPDATE OF id ON projects
    FOR EACH ROW EXECUTE FUNCTION velro_authz_cascade_shares('project');
CREATE TRIGGER projects_cascade_shares_truncate
    AFTER TRUNCATE ON projects
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_cascade_shares('project');

-- ---------------------------------------------------------------------------
-- Cycle rejection for the two trees (teams.parent_id, generations.parent_id)
-- ---------------------------------------------------------------------------
--
-- Before a row gets a new parent, walk the new parent's ancestor chain; if the
-- row itself is on it (including "its own parent"), the change would close a
-- cycle: raise check_violation.
--
-- Concurrency: two transactions could each pass the check and together form a
-- cycle (A.parent := B and B.parent := A at once). An UPDATE therefore first
-- takes a transaction-level advisory lock per tree, so tree changes run one at
-- a time, and the walk (a new statement, hence a fresh snapshot under READ
-- COMMITTED) sees every change committed before it. An INSERT needs no lock:
-- no other transaction can point at a row it cannot see yet (the foreign key
-- would fail), so only rows of this transaction can close the cycle, and the
-- walk sees those.
-- Caveat: under REPEATABLE READ the walk uses the transaction's snapshot, which
-- can predate a concurrent, committed tree change; make tree changes under
-- READ COMMITTED (the default) or SERIALIZABLE everywhere.
--
-- Advisory lock keys: (0x56524c4f = 'VRLO', 1) for teams, (…, 2) for generations.

CREATE FUNCTION velro_authz_reject_team_cycle() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.parent_id IS NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        PERFORM pg_advisory_xact_lock(1448234063, 1);
    END IF;
    -- UNION (not UNION ALL) ends the walk even if the data already had a cycle.
    IF EXISTS (
        WITH RECURSIVE ancestors (id) AS (
            SELECT NEW.parent_id
            UNION
            SELECT t.parent_id
              FROM teams t JOIN ancestors a ON t.id = a.id
             WHERE t.parent_id IS NOT NULL
        )
        SELECT 1 FROM ancestors WHERE id = NEW.id
    ) THEN
        RAISE EXCEPTION 'team % cannot have parent %: that would make a cycle in the team tree',
                        NEW.id, NEW.parent_id
            USING ERRCODE = 'check_violation',
                  TABLE = 'teams',
                  COLUMN = 'parent_id',
                  CONSTRAINT = 'teams_no_cycle';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER teams_no_cycle
    BEFORE INSERT OR UPDATE OF id, parent_id ON teams
    FOR EACH ROW EXECUTE FUNCTION velro_authz_reject_team_cycle();

CREATE FUNCTION velro_authz_reject_generation_cycle() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.parent_id IS NULL THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        PERFORM pg_advisory_xact_lock(1448234063, 2);
    END IF;
    IF EXISTS (
        WITH RECURSIVE ancestors (id) AS (
            SELECT NEW.parent_id
            UNION
            SELECT g.parent_id
              FROM generations g JOIN ancestors a ON g.id = a.id
             WHERE g.parent_id IS NOT NULL
        )
        SELECT 1 FROM ancestors WHERE id = NEW.id
    ) THEN
        RAISE EXCEPTION 'generation % cannot have parent %: that would make a cycle in the generation lineage',
                        NEW.id, NEW.parent_id
            USING ERRCODE = 'check_violation',
                  TABLE = 'generations',
                  COLUMN = 'parent_id',
                  CONSTRAINT = 'generations_no_cycle';
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER generations_no_cycle
    BEFORE INSERT OR UPDATE OF id, parent_id ON generations
    FOR EACH ROW EXECUTE FUNCTION velro_authz_reject_generation_cycle();
