-- Trigger functions that no session's search_path can redirect (issue 12,
-- item 13). 0001's four functions name their tables without a schema
-- (`generations`, `projects`, `shares`, `teams`) and had no search_path of
-- their own, so they resolved those names through the search_path of whichever
-- session fired them. Postgres searches a session's temporary schema first for
-- tables unless the search_path places pg_temp elsewhere, so any role that may
-- create a temporary table (PUBLIC may, by default) could shadow a table for its
-- own statements: `CREATE TEMP TABLE projects (id uuid)` with a made-up id in it
-- let a share on a project that does not exist pass velro_authz_check_share_resource;
-- a temporary `teams` could hide a cycle from velro_authz_reject_team_cycle. A
-- schema earlier on a session's search_path could do the same with tables,
-- functions or operators.
--
-- Now every one of them runs with
--     search_path = pg_catalog, <the schema the tables are in>, pg_temp
-- pg_catalog first (no shadowing of built-in functions or operators), then the
-- schema this migration runs in (where 0001 created the tables: the same
-- current_schema()), pg_temp last (a temporary table never stands in for one of
-- ours). 0003's functions already have `pg_catalog, pg_temp` and name no table.
--
-- Cost, and the choice between the two ways to do it (measured by
-- scripts/write-tax/search-path.sh; figures in docs/performance.md): a
-- function-level SET makes Postgres save and restore
-- the setting around every call, ~4 µs of backend CPU per call here. Writing
-- every name schema-qualified instead avoids that, but leaves operators and
-- built-in functions (`=`, `pg_advisory_xact_lock`, `num_nonnulls`) to the
-- caller's search_path unless each is spelled `OPERATOR(pg_catalog.=)`, and
-- the schema would have to be baked into the function text. The SET is the
-- sound fix; its cost is taken off the hot path instead:
--   the only one of these functions on the application's hot path is the
--   generation cycle check, a BEFORE INSERT trigger on every generation,
--   which returns at once for a generation without a parent. Its trigger (and
--   the team one, alike) now has WHEN (NEW.parent_id IS NOT NULL): a root
--   generation's insert calls no function at all. The function still begins
--   with the same test, so the trigger stays right if the WHEN is ever lost.
--   Measured per generation insert (+ status update), against no SET: +0.5 µs
--   with SET and WHEN, +4.2 µs with SET alone, +0.7 µs schema-qualified.
--
-- Everything here is catalogue changes; no row is touched. The migration runs
-- in one transaction: no write sees the cycle triggers missing.

DO $$
DECLARE
    path text := format('pg_catalog, %I, pg_temp', current_schema());
BEGIN
    EXECUTE format('ALTER FUNCTION velro_authz_check_share_resource() SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION velro_authz_cascade_shares() SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION velro_authz_reject_team_cycle() SET search_path = %s', path);
    EXECUTE format('ALTER FUNCTION velro_authz_reject_generation_cycle() SET search_path = %s', path);
END;
$$;

DROP TRIGGER teams_no_cycle ON teams;
CREATE TRIGGER teams_no_cycle
    BEFORE INSERT OR UPDATE OF id, parent_id ON teams
    FOR EACH ROW
    WHEN (NEW.parent_id IS NOT NULL)
    EXECUTE FUNCTION velro_authz_reject_team_cycle();

DROP TRIGGER generations_no_cycle ON generations;
CREATE TRIGGER generations_no_cycle
    BEFORE INSERT OR UPDATE OF id, parent_id ON generations
    FOR EACH ROW
    WHEN (NEW.parent_id IS NOT NULL)
    EXECUTE FUNCTION velro_authz_reject_generation_cycle();
