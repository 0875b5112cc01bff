-- Change notifications (SPEC §3, §5): every change to an authorization table is
-- announced on channel 'velro_authz_invalidate' so that every sidecar drops the
-- facts it cached from the old row, within the notification delay.
--
-- Payload (JSON, parsed by the Rust listener; keys always in this order):
--   row change:  {"t": "<table>", "op": "INSERT"|"UPDATE"|"DELETE",
--                 "ts": <clock_timestamp() as epoch seconds, microseconds>,
--                 "old": {<key columns of OLD as strings>} | null,
--                 "new": {<key columns of NEW as strings>} | null}
--   truncate:    {"t": "<table>", "op": "TRUNCATE", "ts": <...>}
-- e.g. {"t" : "shares", "op" : "DELETE", "ts" : 1764513735.912345,
--       "old" : {"resource_kind" : "generation", "resource_id" : "…"}, "new" : null}
-- An UPDATE carries both old and new keys (a row can move: a membership to
-- another team, a share to another resource). An UPDATE that changed no column
-- at all sends nothing. Keys are uuids, enum words and 64-hex hashes, so a
-- payload stays a few hundred bytes, far below NOTIFY's 8000-byte limit.
--
-- Notifications are delivered at commit, in commit order, and not at all on
-- rollback. "ts" is taken when the row changed (just before commit), so
-- "now - ts" on the listener is an upper bound of the invalidation lag.
--
-- Key columns per table are the trigger arguments:
--   users: id · teams: id · team_members: user_id, team_id · projects: id ·
--   generations: id · shares: resource_kind, resource_id · api_keys: key_hash ·
--   sessions: id

CREATE FUNCTION velro_authz_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    ts      numeric := extract(epoch FROM clock_timestamp());
    old_row jsonb;
    new_row jsonb;
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        PERFORM pg_notify('velro_authz_invalidate',
            json_build_object('t', TG_TABLE_NAME, 'op', TG_OP, 'ts', ts)::text);
        RETURN NULL;
    END IF;

    IF TG_OP = 'UPDATE' AND OLD IS NOT DISTINCT FROM NEW THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        old_row := to_jsonb(OLD);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        new_row := to_jsonb(NEW);
    END IF;

    PERFORM pg_notify('velro_authz_invalidate', json_build_object(
        't',   TG_TABLE_NAME,
        'op',  TG_OP,
        'ts',  ts,
        'old', (SELECT json_object_agg(k, old_row ->> k ORDER BY i)
                  FROM unnest(TG_ARGV) WITH ORDINALITY AS a (k, i)
                 WHERE old_row IS NOT NULL),
        'new', (SELECT json_object_agg(k, new_row ->> k ORDER BY i)
                  FROM unnest(TG_ARGV) WITH ORDINALITY AS a (k, i)
                 WHERE new_row IS NOT NULL)
    )::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER velro_authz_notify
    AFTER INSERT OR UPDATE OR DELETE ON users
    FOR EACH ROW EXECUTE FUNCTION velro_authz_notify('id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON users
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify();

CREATE TRIGGER velro_authz_notify
    AFTER INSERT OR UPDATE OR DELETE ON teams
    FOR EACH ROW EXECUTE FUNCTION velro_authz_notify('id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON teams
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify();

CREATE TRIGGER velro_authz_notify
    AFTER INSERT OR UPDATE OR DELETE ON team_members
    FOR EACH ROW EXECUTE FUNCTION velro_authz_notify('user_id', 'team_id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON team_members
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify();

CREATE TRIGGER velro_authz_notify
    AFTER INSERT OR UPDATE OR DELETE ON projects
    FOR EACH ROW EXECUTE FUNCTION velro_authz_notify('id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON projects
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify();

CREATE TRIGGER velro_authz_notify
    AFTER INSERT OR UPDATE OR DELETE ON generations
    FOR EACH ROW EXECUTE FUNCTION velro_authz_notify('id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON generations
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify();

CREATE TRIGGER velro_authz_notify
    AFTER INSERT OR UPDATE OR DELETE ON shares
    FOR EACH ROW EXECUTE FUNCTION velro_authz_notify('resource_kind', 'resource_id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON shares
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify();

CREATE TRIGGER velro_authz_notify
    AFTER INSERT OR UPDATE OR DELETE ON api_keys
    FOR EACH ROW EXECUTE FUNCTION velro_authz_notify('key_hash');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON api_keys
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify();

CREATE TRIGGER velro_authz_notify
    AFTER INSERT OR UPDATE OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION velro_authz_notify('id');
CREATE TRIGGER velro_authz_notify_truncate
    AFTER TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION velro_authz_notify();
