-- Mix (c), half of it: a team membership granted, or revoked if it exists.
-- Every transaction changes a decision, so every one must notify.
\set u random(1, :users)
\set t random(1, :teams)
WITH revoked AS (
    DELETE FROM team_members
     WHERE team_id = ('20000000-0000-4000-8000-' || lpad(to_hex(:t::int), 12, '0'))::uuid
       AND user_id = ('10000000-0000-4000-8000-' || lpad(to_hex(:u::int), 12, '0'))::uuid
    RETURNING 1
)
INSERT INTO team_members (team_id, user_id, role)
SELECT ('20000000-0000-4000-8000-' || lpad(to_hex(:t::int), 12, '0'))::uuid,
       ('10000000-0000-4000-8000-' || lpad(to_hex(:u::int), 12, '0'))::uuid, 'member'
 WHERE NOT EXISTS (SELECT 1 FROM revoked)
ON CONFLICT DO NOTHING;
