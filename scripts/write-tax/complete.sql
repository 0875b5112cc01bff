-- Mix (a): a column no decision reads changes. An existing generation goes
-- pending -> completed (or back, so every run finds work): SPEC §9, only
-- `deleted` matters. One statement, autocommit.
\set n random(1, :generations)
UPDATE generations
   SET status = CASE status WHEN 'pending' THEN 'completed' ELSE 'pending' END
 WHERE id = ('40000000-0000-4000-8000-' || lpad(to_hex(:n::int), 12, '0'))::uuid;
