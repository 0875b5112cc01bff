-- velro-authz demo data set. Idempotent: every row has a fixed id and is
-- inserted with ON CONFLICT DO NOTHING, so loading it twice changes nothing
-- (and does not undo edits made to demo rows since). Needs migrations/ applied.
-- Expected decisions for every user and resource: demo/README.md.
--
-- Id scheme: <kind digit>0000000-0000-4000-8000-0000000000<nn>
--   1 = user, 2 = team, 3 = project, 4 = generation, 5 = share, 6 = session.
--
-- id                                   | what                     | for
-- -------------------------------------+--------------------------+-----------------------------------------------
-- 10000000-0000-4000-8000-000000000001 | user alice  (active)     | owns all three projects: owner everywhere via a project
-- 10000000-0000-4000-8000-000000000002 | user bob    (active)     | member of acme-research; owns generations 01 and 06
-- 10000000-0000-4000-8000-000000000003 | user carol  (active)     | admin of acme (the PARENT team): inherits admin in acme-research
-- 10000000-0000-4000-8000-000000000004 | user dave   (suspended)  | member of acme-research, but inactive: 403 user_inactive always
-- 10000000-0000-4000-8000-000000000005 | user erin   (active)     | no team, no project: public things + one generation shared to her
-- 20000000-0000-4000-8000-000000000001 | team acme                | root team; carol is admin
-- 20000000-0000-4000-8000-000000000002 | team acme-research       | child of acme; bob and dave are members
-- 30000000-0000-4000-8000-000000000001 | project research-notebook| private, team acme-research, owner alice
-- 30000000-0000-4000-8000-000000000002 | project public-gallery   | public, no team, owner alice
-- 30000000-0000-4000-8000-000000000003 | project alice-sketches   | private, no team, owner alice; shared with team acme as member
-- 40000000-0000-4000-8000-000000000001 | generation (bob)         | in research-notebook, completed
-- 40000000-0000-4000-8000-000000000002 | generation (alice)       | in public-gallery, completed
-- 40000000-0000-4000-8000-000000000003 | generation (alice)       | in alice-sketches, completed; shared with erin as viewer
-- 40000000-0000-4000-8000-000000000004 | generation (carol)       | no project, parent = 01: inherits research-notebook (1 hop)
-- 40000000-0000-4000-8000-000000000005 | generation (alice)       | in public-gallery, status DELETED: 404 for everyone
-- 40000000-0000-4000-8000-000000000006 | generation (bob)         | no project, no parent, failed: only bob has a role
-- 40000000-0000-4000-8000-000000000007 | generation (carol)       | no project, parent = 04: inherits research-notebook (2 hops), pending
-- 40000000-0000-4000-8000-0000000000ff | (no such generation)     | unknown id: 404 not_found (403 for dave)
-- 50000000-0000-4000-8000-000000000001 | share                    | generation 03 -> user erin, viewer
-- 50000000-0000-4000-8000-000000000002 | share                    | project alice-sketches -> team acme, member
-- 60000000-0000-4000-8000-000000000001 | session (alice)          | active (expires 2099): a JWT with this sid works
-- 60000000-0000-4000-8000-000000000002 | session (bob)            | revoked: a JWT with this sid gets 401 session_revoked
--
-- Team memberships (no ids): acme/carol admin; acme-research/bob member;
-- acme-research/dave member. No api_keys: `velro-authz apikey create` makes them.

INSERT INTO users (id, email, status) VALUES
    ('10000000-0000-4000-8000-000000000001', 'alice@example.com', 'active'),
    ('10000000-0000-4000-8000-000000000002', 'bob@example.com',   'active'),
    ('10000000-0000-4000-8000-000000000003', 'carol@example.com', 'active'),
    ('10000000-0000-4000-8000-000000000004', 'dave@example.com',  'suspended'),
    ('10000000-0000-4000-8000-000000000005', 'erin@example.com',  'active')
ON CONFLICT DO NOTHING;

-- Parent first (the foreign key and the cycle check both look it up).
INSERT INTO teams (id, name, parent_id) VALUES
    ('20000000-0000-4000-8000-000000000001', 'acme',          NULL),
    ('20000000-0000-4000-8000-000000000002', 'acme-research', '20000000-0000-4000-8000-000000000001')
ON CONFLICT DO NOTHING;

INSERT INTO team_members (team_id, user_id, role) VALUES
    ('20000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000003', 'admin'),
    ('20000000-0000-4000-8000-000000000002', '10000000-0000-4000-8000-000000000002', 'member'),
    ('20000000-0000-4000-8000-000000000002', '10000000-0000-4000-8000-000000000004', 'member')
ON CONFLICT DO NOTHING;

INSERT INTO projects (id, owner_id, team_id, visibility, name) VALUES
    ('30000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000001',
     '20000000-0000-4000-8000-000000000002', 'private', 'research-notebook'),
    ('30000000-0000-4000-8000-000000000002', '10000000-0000-4000-8000-000000000001',
     NULL, 'public', 'public-gallery'),
    ('30000000-0000-4000-8000-000000000003', '10000000-0000-4000-8000-000000000001',
     NULL, 'private', 'alice-sketches')
ON CONFLICT DO NOTHING;

-- Parents before children.
INSERT INTO generations (id, user_id, project_id, parent_id, status) VALUES
    ('40000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000002',
     '30000000-0000-4000-8000-000000000001', NULL, 'completed'),
    ('40000000-0000-4000-8000-000000000002', '10000000-0000-4000-8000-000000000001',
     '30000000-0000-4000-8000-000000000002', NULL, 'completed'),
    ('40000000-0000-4000-8000-000000000003', '10000000-0000-4000-8000-000000000001',
     '30000000-0000-4000-8000-000000000003', NULL, 'completed'),
    ('40000000-0000-4000-8000-000000000004', '10000000-0000-4000-8000-000000000003',
     NULL, '40000000-0000-4000-8000-000000000001', 'completed'),
    ('40000000-0000-4000-8000-000000000005', '10000000-0000-4000-8000-000000000001',
     '30000000-0000-4000-8000-000000000002', NULL, 'deleted'),
    ('40000000-0000-4000-8000-000000000006', '10000000-0000-4000-8000-000000000002',
     NULL, NULL, 'failed'),
    ('40000000-0000-4000-8000-000000000007', '10000000-0000-4000-8000-000000000003',
     NULL, '40000000-0000-4000-8000-000000000004', 'pending')
ON CONFLICT DO NOTHING;

INSERT INTO shares (id, resource_kind, resource_id, grantee_user_id, grantee_team_id, role) VALUES
    ('50000000-0000-4000-8000-000000000001', 'generation', '40000000-0000-4000-8000-000000000003',
     '10000000-0000-4000-8000-000000000005', NULL, 'viewer'),
    ('50000000-0000-4000-8000-000000000002', 'project', '30000000-0000-4000-8000-000000000003',
     NULL, '20000000-0000-4000-8000-000000000001', 'member')
ON CONFLICT DO NOTHING;

INSERT INTO sessions (id, user_id, expires_at, revoked_at) VALUES
    ('60000000-0000-4000-8000-000000000001', '10000000-0000-4000-8000-000000000001',
     '2099-12-31T23:59:59Z', NULL),
    ('60000000-0000-4000-8000-000000000002', '10000000-0000-4000-8000-000000000002',
     '2099-12-31T23:59:59Z', '2026-01-01T00:00:00Z')
ON CONFLICT DO NOTHING;
