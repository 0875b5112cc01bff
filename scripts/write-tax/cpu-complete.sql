-- Server CPU per statement, mix (a): bench.n single-row status updates in one
-- session (one transaction; no commit per statement, so no commit lock: this
-- isolates what the triggers themselves cost). The CPU time is Postgres' own
-- (log_statement_stats), far steadier than throughput on a shared machine.
SET client_min_messages = log;
SET log_statement_stats = on;
DO $$
BEGIN
    FOR n IN 1 .. current_setting('bench.n')::int LOOP
        UPDATE generations
           SET status = CASE status WHEN 'pending' THEN 'completed' ELSE 'pending' END
         WHERE id = ('40000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid;
    END LOOP;
END;
$$;
