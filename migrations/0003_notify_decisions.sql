-- Change notifications that cost the application nothing it does not need
-- (issue 11; replaces the triggers of 0002_notify.sql, which stays as it was).
--
-- Why: a transaction that issued NOTIFY takes a database-wide lock at commit
-- (PreCommit_Notify in Postgres' async.c) and holds it until its commit is
-- durable, so notifying transactions commit one at a time. 0002 announced
-- every row change, including the ones no decision reads (a generation going
-- `pending` -> `completed`, which the platform does for every AI generation),
-- and so serialized the application's hottest writes. Now:
--
--   1. An UPDATE is announced only when a column that a cached fact holds
--      changes (the WHEN clauses below, per table). Columns the application
--      adds later never match, so they never notify. DELETE always notifies.
--   2. An INSERT notifies on every table except `generations` (reasons below).
--   3. Announcements are batched: one notification per statement and table,
--      carrying every key the statement changed, instead of one per row.
--   4. TRUNCATE still flushes everything.
--
-- The channel is unchanged: 'velro_authz_invalidate'.
--
-- Payload (JSON, parsed by src/invalidate.rs; keys always in this order):
--   keys:     {"t":"<table>","op":"INSERT"|"UPDATE"|"DELETE","ts":<epoch s.µs>,
--              "keys":[{<key columns as strings>}, ...]}
--             e.g. {"t":"shares","op":"DELETE","ts":1764513735.912345,
--                   "keys":[{"resource_kind":"generation","resource_id":"…"}]}
--   flush:    {"t":"<table>","op":"FLUSH","ts":<...>}   the keys would not fit
--   truncate: {"t":"<table>","op":"TRUNCATE","ts":<...>}
-- Keys are distinct within a payload. An UPDATE contributes the key of the old
-- row and, when it differs, of the new row (a row can move: a membership to
-- another user, a share to another resource). "ts" is taken just before the
-- notification is queued, i.e. before commit, so "now - ts" on the listener is
-- an upper bound of the invalidation lag.
--
-- NOTIFY payloads must be shorter than 8000 bytes. A statement whose keys do
-- not fit (about 170 generation ids, 95 shares, 100 API keys) sends the flush
-- payload instead: the listener then voids everything. Never a lost key.
--
-- Key columns per table (exactly what the listener maps to a cached fact):
--   users: id · teams: id · team_members: user_id · projects: id ·
--   generations: id · shares: resource_kind, resource_id · api_keys: key_hash ·
--   sessions: id
-- (0002 also sent team_members.team_id; no cached fact is keyed by it.)
--
-- Compatibility: a sidecar built before this migration reads a "keys" or
-- "FLUSH" payload as unreadable and flushes its whole cache: safe, not precise.
-- Upgrade the sidecars first, then run this migration.
--
-- Mechanics, and why this combination:
--   INSERT, DELETE: statement-level AFTER triggers with a transition table.
--     One call per statement whatever the number of rows; no per-row cost.
--   UPDATE: row triggers `UPDATE OF` the columns that matter and WHEN one of
--     them really changed (details above the triggers). When the UPDATE sets
--     none of them, or sets them to what they were, the row trigger runs no
--     function. When a row matters, its trigger appends the row's keys to a
--     transaction-local buffer (a custom setting, velro_authz.pending_<table>,
--     set with is_local = true), and a statement-level AFTER UPDATE trigger
--     sends the buffer as one notification and empties it. Postgres does not
--     allow the obvious alternative: an UPDATE trigger with a transition table
--     cannot have a column list, and a statement trigger cannot look at rows,
--     so a transition-table UPDATE trigger would capture and inspect every
--     updated row of every UPDATE, relevant or not.
--     A statement trigger's WHEN clause is evaluated when its event is
--     queued: after the statement's BEFORE row triggers, before its AFTER row
--     triggers. So:
--     - generations (the hot table): the row triggers are BEFORE triggers,
--       and the statement trigger runs only WHEN the buffer is not empty.
--       `pending` -> `completed` runs no function at all: its whole cost is
--       two WHEN clauses. (Measured, Postgres backend CPU per single-row
--       status UPDATE: +6 µs, vs +11 µs with an unconditional flush call,
--       most of it the function's SET search_path; docs/performance.md.)
--       BEFORE is free here: any BEFORE UPDATE row trigger makes Postgres
--       lock the row before the update, and generations has one already
--       (generations_no_cycle).
--     - the other tables: AFTER row triggers, and a statement trigger with no
--       WHEN clause that returns at once when the buffer is empty (one call
--       per UPDATE that names a decision column, ~8 µs; such updates are
--       rare and mostly do notify). A BEFORE row trigger there would add that
--       row lock to every UPDATE of the table, relevant or not.
--     Row triggers run before the statement trigger of their statement, and
--     a statement nested in them (a foreign key's ON DELETE SET NULL, say)
--     sends what is buffered so far, so every buffered key is sent by the end
--     of the statement that buffered it. A rolled-back statement or savepoint
--     rolls back its buffer and its notifications with it.
--     Caveats (the application's own triggers): a BEFORE UPDATE trigger that
--     changes a decision column the UPDATE does not name is not seen (column
--     lists look at the statement); on generations, neither is one that sorts
--     after velro_authz_notify_* (BEFORE triggers run in name order) and
--     changes a decision column. A BEFORE trigger that cancels a row after
--     ours saw it costs a needless invalidation, nothing more.
--   Every function has a fixed search_path (hardening: nothing a session puts
--   first on its search_path can stand in for a table or function here).
--
-- What an INSERT must announce. A cached fact can depend on a row's absence:
-- the "no such row" (negative) entries, cached for up to 30 s. An insert must
-- void any such entry, unless no cache ever holds one.
--   users, teams, projects, api_keys, sessions: negative entries exist (an
--     unknown JWT `sub`, a team or project id asked for before it was created,
--     a key or `sid` presented before its row committed). Their inserts are
--     rare; they keep notifying.
--   team_members, shares: an insert is a grant; it changes the memberships of
--     its user / the shares of its resource. They notify.
--   generations: the hot insert (one per AI generation). It does NOT notify.
--     This is safe only under this cache contract, which the sidecar must
--     keep (its fact cache, L1 and L2):
--       - A "no such generation" result is never stored, in L1 or in Redis,
--         and nothing cached or derived (a decision, a parent chain) may rest
--         on a generation's absence; a read that finds no row answers only the
--         requests that were waiting on that very read.
--     Nothing else cached depends on a generation row not existing:
--       - a child's parent chain reads the parent generation by id (the same
--         fact; and the foreign key makes the parent exist first);
--       - the shares of a generation are their own fact; a share can only be
--         created after its generation exists (shares_check_resource), and
--         that insert notifies;
--       - a generation's id is new when inserted: a row that had that id was
--         deleted before, and that delete notified.
--     A generation status is cached, but only "deleted or not" is trusted: a
--     cached `pending` may be `completed` by now (no decision differs).
--
-- Replacing the triggers: this migration runs in one transaction, so no
-- change commits between the old triggers and the new ones. DROP/CREATE
-- TRIGGER lock each table briefly against writes while it runs.

-- ---------------------------------------------------------------------------
-- Out with 0002's per-row triggers.
-- ---------------------------------------------------------------------------

DROP TRIGGER velro_authz_notify ON users;
DROP TRIGGER velro_authz_notify_truncate ON users;
DROP TRIGGER velro_authz_notify ON teams;
DROP TRIGGER velro_authz_notify_truncate ON teams;
DROP TRIGGER velro_authz_notify ON team_members;
DROP TRIGGER velro_authz_notify_truncate ON team_members;
DROP TRIGGER velro_authz_notify ON projects;
DROP TRIGGER velro_authz_notify_truncate ON projects;
DROP TRIGGER velro_authz_notify ON generations;
DROP TRIGGER velro_authz_notify_truncate ON generations;
DROP TRIGGER velro_authz_notify ON shares;
DROP TRIGGER velro_authz_notify_truncate ON shares;
DROP TRIGGER velro_authz_notify ON api_keys;
DROP TRIGGER velro_authz_notify_truncate ON api_keys;
DROP TRIGGER velro_authz_notify ON sessions;
DROP TRIGGER velro_authz_notify_truncate ON sessions;
DROP FUNCTION velro_authz_notify();

-- ---------------------------------------------------------------------------
-- Functions
-- ---------------------------------------------------------------------------

-- Statement-level AFTER INSERT / UPDATE / DELETE / TRUNCATE: sends this
-- statement's keys as one notification.
--   INSERT, DELETE: the keys of every row of the transition table (new_rows,
--     old_rows); TG_ARGV = the table's key columns.
--   UPDATE: what this statement's row triggers buffered (emptied here).
--   TRUNCATE: no rows to name: the listener flushes everything.
-- Sends the flush payload instead when the keys would not fit in 8000 bytes.
CREATE FUNCTION velro_authz_notify_statement() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    setting text := 'velro_authz.pending_' || TG_TABLE_NAME;
    head    text;
    keys    text;
    n       bigint := 0;
    payload text;
BEGIN
    IF TG_OP = 'UPDATE' THEN
        keys := current_setting(setting, true);
        IF keys IS NULL OR keys = '' THEN
            RETURN NULL;  -- the common case: no row changed anything that matters
        END IF;
        PERFORM set_config(setting, '', true);
    -- Every key is at least 45 bytes ({"id":"<uuid>"}), so 200 distinct keys
    -- can never fit in one payload: stop collecting there (bounded work on a
    -- huge statement) and flush.
    ELSIF TG_OP = 'INSERT' THEN
        SELECT string_agg(k, ','), count(*) INTO keys, n
          FROM (SELECT DISTINCT
                       coalesce('{' || (SELECT string_agg(to_json(c)::text || ':' || to_json(j ->> c)::text,
                                                          ',' ORDER BY i)
                                          FROM unnest(TG_ARGV) WITH ORDINALITY AS a (c, i))
                                || '}', '{}') AS k
                  FROM new_rows AS r, LATERAL (SELECT to_jsonb(r) AS j) AS x
                 LIMIT 200) AS s;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT string_agg(k, ','), count(*) INTO keys, n
          FROM (SELECT DISTINCT
                       coalesce('{' || (SELECT string_agg(to_json(c)::text || ':' || to_json(j ->> c)::text,
                                                          ',' ORDER BY i)
                                          FROM unnest(TG_ARGV) WITH ORDINALITY AS a (c, i))
                                || '}', '{}') AS k
                  FROM old_rows AS r, LATERAL (SELECT to_jsonb(r) AS j) AS x
                 LIMIT 200) AS s;
    ELSE
        keys := '!';  -- TRUNCATE
    END IF;
    IF keys IS NULL THEN
        RETURN NULL;  -- the statement touched no row
    END IF;

    head := '{"t":' || to_json(TG_TABLE_NAME::text)::text || ',"op":';
    IF keys <> '!' AND n < 200 THEN
        payload := head || to_json(TG_OP::text)::text
                   || ',"ts":' || extract(epoch FROM clock_timestamp())::text
                   || ',"keys":[' || keys || ']}';
    END IF;
    IF payload IS NULL OR octet_length(payload) >= 8000 THEN
        payload := head || CASE TG_OP WHEN 'TRUNCATE' THEN '"TRUNCATE"' ELSE '"FLUSH"' END
                   || ',"ts":' || extract(epoch FROM clock_timestamp())::text || '}';
    END IF;
    PERFORM pg_notify('velro_authz_invalidate', payload);
    RETURN NULL;
END;
$$;

-- Row-level UPDATE (BEFORE on generations, AFTER elsewhere), only for rows
-- whose WHEN clause saw a relevant change: appends the old and new row's keys
-- (once each) to this transaction's buffer for the table. Past 7,900 bytes the buffer becomes '!' (flush).
-- TG_ARGV = the table's key columns.
CREATE FUNCTION velro_authz_notify_buffer() RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    setting text := 'velro_authz.pending_' || TG_TABLE_NAME;
    buf     text := coalesce(current_setting(setting, true), '');
    o       jsonb := to_jsonb(OLD);
    n       jsonb := to_jsonb(NEW);
    k       text;
BEGIN
    IF buf = '!' THEN
        RETURN NEW;
    END IF;
    FOREACH k IN ARRAY ARRAY[
        (SELECT '{' || string_agg(to_json(c)::text || ':' || to_json(o ->> c)::text, ',' ORDER BY i) || '}'
           FROM unnest(TG_ARGV) WITH ORDINALITY AS a (c, i)),
        (SELECT '{' || string_agg(to_json(c)::text || ':' || to_json(n ->> c)::text, ',' ORDER BY i) || '}'
           FROM unnest(TG_ARGV) WITH ORDINALITY AS a (c, i))
    ] LOOP
        IF k IS NULL THEN
            buf := '!';  -- a key column without a value: cannot name the fact
            EXIT;
        END IF;
        -- Whole objects cannot contain one another: a match is the same key.
        IF strpos(buf, k) = 0 THEN
            buf := CASE WHEN buf = '' THEN k ELSE buf || ',' || k END;
        END IF;
    END LOOP;
    IF octet_length(buf) > 7900 THEN
        buf := '!';
    END IF;
    PERFORM set_config(setting, buf, true);
    RETURN NEW;  -- unchanged (a BEFORE trigger on generations)
END;
$$;

-- ---------------------------------------------------------------------------
-- Triggers, per table. Every trigger's name starts with velro_authz_notify, so
-- the set can be found (and, for a benchmark, disabled) as one.
--
-- The columns are the ones src/store.rs reads into the table's fact. Each row
-- trigger has both a column list and a WHEN clause: the column list alone
-- decides, at no cost, to skip an UPDATE that sets none of those columns; the
-- WHEN clause then drops an UPDATE that sets them to the values they had.
-- (Postgres re-reads a WHEN clause for every statement it runs: measured, the
-- 5-column clause cost ~7 µs per single-row UPDATE, the 1-column one ~3 µs, a
-- column list that does not match ~0.) The statement trigger's column list is
-- the union of the row triggers', so it runs whenever one of them may have
-- buffered a key.
-- ---------------------------------------------------------------------------

-- users: the fact is the status (only `active` users are allowed anything).
-- email and created_at are read by no decision.
CREATE TRIGGER velro_authz_notify_insert
    AFTER INSERT ON users REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('id');
CREATE TRIGGER velro_authz_notify_update
    AFTER UPDATE OF id, status ON users
    FOR EACH ROW
    WHEN ((OLD.id, OLD.status) IS DISTINCT FROM (NEW.id, NEW.status))
    EXECUTE FUNCTION velro_authz_notify_buffer('id');
CREATE TRIGGER velro_authz_notify_update_flush
    AFTER UPDATE OF id, status ON users
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();
CREATE TRIGGER velro_authz_notify_delete
    AFTER DELETE ON users REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();

-- teams: the fact is the parent edge (the tree). name is read by no decision.
CREATE TRIGGER velro_authz_notify_insert
    AFTER INSERT ON teams REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('id');
CREATE TRIGGER velro_authz_notify_update
    AFTER UPDATE OF id, parent_id ON teams
    FOR EACH ROW
    WHEN ((OLD.id, OLD.parent_id) IS DISTINCT FROM (NEW.id, NEW.parent_id))
    EXECUTE FUNCTION velro_authz_notify_buffer('id');
CREATE TRIGGER velro_authz_notify_update_flush
    AFTER UPDATE OF id, parent_id ON teams
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();
CREATE TRIGGER velro_authz_notify_delete
    AFTER DELETE ON teams REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON teams
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();

-- team_members: the fact is a user's list of (team, role); every column counts.
CREATE TRIGGER velro_authz_notify_insert
    AFTER INSERT ON team_members REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('user_id');
CREATE TRIGGER velro_authz_notify_update
    AFTER UPDATE OF user_id, team_id, role ON team_members
    FOR EACH ROW
    WHEN ((OLD.user_id, OLD.team_id, OLD.role)
          IS DISTINCT FROM (NEW.user_id, NEW.team_id, NEW.role))
    EXECUTE FUNCTION velro_authz_notify_buffer('user_id');
CREATE TRIGGER velro_authz_notify_update_flush
    AFTER UPDATE OF user_id, team_id, role ON team_members
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();
CREATE TRIGGER velro_authz_notify_delete
    AFTER DELETE ON team_members REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('user_id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON team_members
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();

-- projects: owner, team and visibility. name is read by no decision.
CREATE TRIGGER velro_authz_notify_insert
    AFTER INSERT ON projects REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('id');
CREATE TRIGGER velro_authz_notify_update
    AFTER UPDATE OF id, owner_id, team_id, visibility ON projects
    FOR EACH ROW
    WHEN ((OLD.id, OLD.owner_id, OLD.team_id, OLD.visibility)
          IS DISTINCT FROM (NEW.id, NEW.owner_id, NEW.team_id, NEW.visibility))
    EXECUTE FUNCTION velro_authz_notify_buffer('id');
CREATE TRIGGER velro_authz_notify_update_flush
    AFTER UPDATE OF id, owner_id, team_id, visibility ON projects
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();
CREATE TRIGGER velro_authz_notify_delete
    AFTER DELETE ON projects REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON projects
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();

-- generations: owner, project, parent, and whether the status is `deleted`
-- (SPEC §9: the other statuses do not affect decisions, so `pending` ->
-- `completed` / `failed` is silent). Two row triggers, so that the hot
-- status-only UPDATE evaluates the one-column WHEN clause only; BEFORE row
-- triggers and a WHEN on the buffer for the statement trigger (see the top).
-- No INSERT trigger: see the cache contract at the top. created_at is read by
-- no decision.
CREATE TRIGGER velro_authz_notify_update
    BEFORE UPDATE OF id, user_id, project_id, parent_id ON generations
    FOR EACH ROW
    WHEN ((OLD.id, OLD.user_id, OLD.project_id, OLD.parent_id)
          IS DISTINCT FROM (NEW.id, NEW.user_id, NEW.project_id, NEW.parent_id))
    EXECUTE FUNCTION velro_authz_notify_buffer('id');
CREATE TRIGGER velro_authz_notify_update_status
    BEFORE UPDATE OF status ON generations
    FOR EACH ROW
    WHEN ((OLD.status = 'deleted') <> (NEW.status = 'deleted'))
    EXECUTE FUNCTION velro_authz_notify_buffer('id');
CREATE TRIGGER velro_authz_notify_update_flush
    AFTER UPDATE OF id, user_id, project_id, parent_id, status ON generations
    FOR EACH STATEMENT
    WHEN (current_setting('velro_authz.pending_generations', true) <> '')
    EXECUTE FUNCTION velro_authz_notify_statement();
CREATE TRIGGER velro_authz_notify_delete
    AFTER DELETE ON generations REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON generations
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();

-- shares: the fact is a resource's list of (grantee, role). id is read by no
-- decision.
CREATE TRIGGER velro_authz_notify_insert
    AFTER INSERT ON shares REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('resource_kind', 'resource_id');
CREATE TRIGGER velro_authz_notify_update
    AFTER UPDATE OF resource_kind, resource_id, grantee_user_id, grantee_team_id, role ON shares
    FOR EACH ROW
    WHEN ((OLD.resource_kind, OLD.resource_id, OLD.grantee_user_id, OLD.grantee_team_id, OLD.role)
          IS DISTINCT FROM (NEW.resource_kind, NEW.resource_id, NEW.grantee_user_id, NEW.grantee_team_id, NEW.role))
    EXECUTE FUNCTION velro_authz_notify_buffer('resource_kind', 'resource_id');
CREATE TRIGGER velro_authz_notify_update_flush
    AFTER UPDATE OF resource_kind, resource_id, grantee_user_id, grantee_team_id, role ON shares
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();
CREATE TRIGGER velro_authz_notify_delete
    AFTER DELETE ON shares REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('resource_kind', 'resource_id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON shares
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();

-- api_keys: the whole row except display_prefix and created_at.
CREATE TRIGGER velro_authz_notify_insert
    AFTER INSERT ON api_keys REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('key_hash');
CREATE TRIGGER velro_authz_notify_update
    AFTER UPDATE OF id, user_id, key_hash, scopes, expires_at, revoked_at ON api_keys
    FOR EACH ROW
    WHEN ((OLD.id, OLD.user_id, OLD.key_hash, OLD.scopes, OLD.expires_at, OLD.revoked_at)
          IS DISTINCT FROM (NEW.id, NEW.user_id, NEW.key_hash, NEW.scopes, NEW.expires_at, NEW.revoked_at))
    EXECUTE FUNCTION velro_authz_notify_buffer('key_hash');
CREATE TRIGGER velro_authz_notify_update_flush
    AFTER UPDATE OF id, user_id, key_hash, scopes, expires_at, revoked_at ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();
CREATE TRIGGER velro_authz_notify_delete
    AFTER DELETE ON api_keys REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('key_hash');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();

-- sessions: user, expiry, revocation. created_at is read by no decision.
CREATE TRIGGER velro_authz_notify_insert
    AFTER INSERT ON sessions REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('id');
CREATE TRIGGER velro_authz_notify_update
    AFTER UPDATE OF id, user_id, expires_at, revoked_at ON sessions
    FOR EACH ROW
    WHEN ((OLD.id, OLD.user_id, OLD.expires_at, OLD.revoked_at)
          IS DISTINCT FROM (NEW.id, NEW.user_id, NEW.expires_at, NEW.revoked_at))
    EXECUTE FUNCTION velro_authz_notify_buffer('id');
CREATE TRIGGER velro_authz_notify_update_flush
    AFTER UPDATE OF id, user_id, expires_at, revoked_at ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();
CREATE TRIGGER velro_authz_notify_delete
    AFTER DELETE ON sessions REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement('id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify_statement();
