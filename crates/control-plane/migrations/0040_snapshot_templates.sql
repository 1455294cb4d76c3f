-- Snapshot templates live on one host (their files are host-local): `host_id` names it, and a
-- capsule created from the snapshot is scheduled there. Deleting the host keeps the row (the team
-- still sees the snapshot and can delete it) but forgets where its files were.
ALTER TABLE templates ADD COLUMN IF NOT EXISTS host_id UUID;
UPDATE templates SET host_id = NULL
 WHERE host_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM hosts h WHERE h.id = templates.host_id);
ALTER TABLE templates
    ADD CONSTRAINT templates_host_fk FOREIGN KEY (host_id) REFERENCES hosts (id) ON DELETE SET NULL;
CREATE INDEX IF NOT EXISTS templates_host_idx ON templates (host_id);

-- The disk size of the capsule a snapshot was taken from: capsules created from it get the same
-- disk (the snapshot decides, like vCPUs and memory). NULL for base images.
ALTER TABLE templates ADD COLUMN IF NOT EXISTS disk_size_mb INTEGER;
