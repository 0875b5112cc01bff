-- Mix (c), other half: a project shared with a user, or unshared if it was.
\set u random(1, :users)
\set p random(1, :projects)
WITH revoked AS (
    DELETE FROM shares
     WHERE resource_kind = 'project'
       AND resource_id = ('30000000-0000-4000-8000-' || lpad(to_hex(:p::int), 12, '0'))::uuid
       AND grantee_user_id = ('10000000-0000-4000-8000-' || lpad(to_hex(:u::int), 12, '0'))::uuid
    RETURNING 1
)
INSERT INTO shares (resource_kind, resource_id, grantee_user_id, role)
SELECT 'project', ('30000000-0000-4000-8000-' || lpad(to_hex(:p::int), 12, '0'))::uuid,
       ('10000000-0000-4000-8000-' || lpad(to_hex(:u::int), 12, '0'))::uuid, 'viewer'
 WHERE NOT EXISTS (SELECT 1 FROM revoked)
ON CONFLICT ON CONSTRAINT shares_one_per_grantee DO NOTHING;
