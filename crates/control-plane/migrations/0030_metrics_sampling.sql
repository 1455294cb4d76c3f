-- Team reservation samples are taken every 10 s on a fixed grid (`sampled_at` is the start of the
-- 10-second slot). Every control-plane instance runs the sampler; the unique key makes the extra
-- instances' inserts no-ops, so usage (which sums the samples) never counts a slot twice.
DELETE FROM sandbox_metrics_snapshots a
 USING sandbox_metrics_snapshots b
 WHERE a.team_id = b.team_id AND a.sampled_at = b.sampled_at AND a.id > b.id;
DROP INDEX IF EXISTS sandbox_metrics_snapshots_team_idx;
CREATE UNIQUE INDEX sandbox_metrics_snapshots_team_slot_idx
    ON sandbox_metrics_snapshots (team_id, sampled_at DESC);
-- Pruning by age scans by time alone.
CREATE INDEX sandbox_metrics_snapshots_sampled_idx ON sandbox_metrics_snapshots (sampled_at);
