-- Credentials may expire; and the one seeded from TOLLGATE_ADMIN_TOKEN is
-- marked, so that a new token there revokes the credential of the old one.
ALTER TABLE credentials ADD COLUMN expires_at BIGINT;
ALTER TABLE credentials ADD COLUMN seeded INTEGER NOT NULL DEFAULT 0;
-- What earlier versions seeded, by the name they gave it.
UPDATE credentials SET seeded = 1 WHERE name = 'admin_token setting';
