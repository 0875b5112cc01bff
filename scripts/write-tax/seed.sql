-- Write-tax benchmark data (scripts/bench-write-tax.sh). Ids are made from
-- integers so the pgbench scripts can name rows without a lookup:
--   users 10000000-…-<n>, teams 20000000-…, projects 30000000-…,
--   generations 40000000-… (the pending jobs that mix (a) completes).
-- psql variables: users, teams, projects, generations.
INSERT INTO users (id, email)
SELECT ('10000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid, 'user' || n || '@bench.test'
  FROM generate_series(1, :users) AS n;
INSERT INTO teams (id, name)
SELECT ('20000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid, 'team ' || n
  FROM generate_series(1, :teams) AS n;
-- Every user starts in one team.
INSERT INTO team_members (team_id, user_id, role)
SELECT ('20000000-0000-4000-8000-' || lpad(to_hex(n % :teams + 1), 12, '0'))::uuid,
       ('10000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid, 'member'
  FROM generate_series(1, :users) AS n;
INSERT INTO projects (id, owner_id, team_id, name)
SELECT ('30000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid,
       ('10000000-0000-4000-8000-' || lpad(to_hex(n % :users + 1), 12, '0'))::uuid,
       ('20000000-0000-4000-8000-' || lpad(to_hex(n % :teams + 1), 12, '0'))::uuid,
       'project ' || n
  FROM generate_series(1, :projects) AS n;
INSERT INTO generations (id, user_id, project_id, status)
SELECT ('40000000-0000-4000-8000-' || lpad(to_hex(n), 12, '0'))::uuid,
       ('10000000-0000-4000-8000-' || lpad(to_hex(n % :users + 1), 12, '0'))::uuid,
       ('30000000-0000-4000-8000-' || lpad(to_hex(n % :projects + 1), 12, '0'))::uuid,
       'pending'
  FROM generate_series(1, :generations) AS n;
VACUUM ANALYZE;
