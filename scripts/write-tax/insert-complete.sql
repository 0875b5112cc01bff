-- Mix (b): what the platform does per AI generation. Insert the job, then
-- mark it completed, in one transaction.
\set u random(1, :users)
\set p random(1, :projects)
BEGIN;
INSERT INTO generations (user_id, project_id)
VALUES (('10000000-0000-4000-8000-' || lpad(to_hex(:u::int), 12, '0'))::uuid,
        ('30000000-0000-4000-8000-' || lpad(to_hex(:p::int), 12, '0'))::uuid)
RETURNING id AS generation \gset
UPDATE generations SET status = 'completed' WHERE id = :generation;
COMMIT;
