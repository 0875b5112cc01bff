-- Server CPU per statement pair, mix (b): insert a generation, mark it
-- completed; bench.n times in one session (see cpu-complete.sql).
SET client_min_messages = log;
SET log_statement_stats = on;
DO $$
DECLARE
    g uuid;
BEGIN
    FOR n IN 1 .. current_setting('bench.n')::int LOOP
        INSERT INTO generations (user_id, project_id)
        VALUES (('10000000-0000-4000-8000-' || lpad(to_hex(n % 1000 + 1), 12, '0'))::uuid,
                ('30000000-0000-4000-8000-' || lpad(to_hex(n % 200 + 1), 12, '0'))::uuid)
        RETURNING id INTO g;
        UPDATE generations SET status = 'completed' WHERE id = g;
    END LOOP;
END;
$$;
