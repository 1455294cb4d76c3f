//! Host selection: least loaded among the hosts a team may use.
//!
//! Eligibility: a BYOC team uses only its own BYOC hosts (never platform hosts); every other team
//! uses only regular hosts. Load follows upstream's reservations: paused capsules hold half their
//! memory and two thirds of their disk (their snapshot), running ones all of it; CPU may be
//! overcommitted 1.5×. Upstream reserves fixed amounts for the host itself (8 GiB RAM, 4 cores,
//! 30 GiB disk), which leaves nothing on a small machine; here the reserve is that or a fraction
//! of the host, whichever is smaller, so a 2-core 8 GiB host still takes capsules.
//!
//! Selection and the capsule's insert happen in one transaction under an advisory lock, so two
//! concurrent creates (even on different control-plane instances) cannot both take the last room.

use crate::error::{ApiError, ApiResult};
use crate::ids::{self, IdKind};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

/// A host's capacity and current reservations.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct HostLoad {
    pub id: Uuid,
    pub address: String,
    pub cpu_cores: i32,
    pub memory_mb: i32,
    pub disk_gb: i32,
    pub running_vcpus: i64,
    pub running_memory_mb: i64,
    pub running_disk_mb: i64,
    pub paused_memory_mb: i64,
    pub paused_disk_mb: i64,
}

/// What the capsule needs.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub vcpus: i32,
    pub memory_mb: i32,
    pub disk_mb: i32,
}

/// Room left on a host; negative means over-committed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Headroom {
    pub ram_free: f64,
    pub ram_total: f64,
    pub cpu_free: f64,
    pub cpu_total: f64,
    pub disk_free: f64,
    pub disk_total: f64,
}

impl HostLoad {
    pub fn headroom(&self) -> Headroom {
        let mem = f64::from(self.memory_mb);
        let ram_total = mem - (8192.0f64).min(mem * 0.25);
        let cores = f64::from(self.cpu_cores);
        let cpu_total = cores * 1.5 - (4.0f64).min(cores * 0.5);
        let disk = f64::from(self.disk_gb) * 1024.0;
        let disk_total = disk - (30720.0f64).min(disk * 0.2);
        let ram_used = self.running_memory_mb as f64 + 0.5 * self.paused_memory_mb as f64;
        let disk_used = self.running_disk_mb as f64 + (2.0 / 3.0) * self.paused_disk_mb as f64;
        Headroom {
            ram_free: ram_total - ram_used,
            ram_total,
            cpu_free: cpu_total - self.running_vcpus as f64,
            cpu_total,
            disk_free: disk_total - disk_used,
            disk_total,
        }
    }
}

impl Headroom {
    /// Memory and disk must fit; CPU may be overcommitted.
    pub fn admits(&self, req: Request) -> bool {
        self.ram_free >= f64::from(req.memory_mb) && self.disk_free >= f64::from(req.disk_mb)
    }

    /// The scarcest resource's free fraction.
    pub fn score(&self) -> f64 {
        let frac = |free: f64, total: f64| if total <= 0.0 { 0.0 } else { free / total };
        frac(self.ram_free, self.ram_total)
            .min(frac(self.cpu_free, self.cpu_total))
            .min(frac(self.disk_free, self.disk_total))
    }
}

/// Picks among `hosts`: the admissible one with the best score.
pub fn pick(hosts: &[HostLoad], req: Request) -> Option<&HostLoad> {
    hosts
        .iter()
        .map(|h| (h, h.headroom()))
        .filter(|(_, room)| room.admits(req))
        .max_by(|a, b| a.1.score().total_cmp(&b.1.score()))
        .map(|(h, _)| h)
}

const SCHEDULER_LOCK: i64 = 0x5752_454e_4e53_4348; // "WRENNSCH"

/// Within `tx`: locks the scheduler (held until the transaction ends, so the capsule's insert
/// is covered) and loads the online hosts `team_id` may use, with their load. Also says whether
/// the team is BYOC.
async fn eligible_hosts(
    tx: &mut Transaction<'_, Postgres>,
    team_id: Uuid,
) -> ApiResult<(bool, Vec<HostLoad>)> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(SCHEDULER_LOCK)
        .execute(&mut **tx)
        .await?;
    let byoc: bool = sqlx::query_scalar("SELECT is_byoc FROM teams WHERE id = $1")
        .bind(team_id)
        .fetch_optional(&mut **tx)
        .await?
        .unwrap_or(false);
    let hosts: Vec<HostLoad> = sqlx::query_as(
        "SELECT h.id, h.address, h.cpu_cores, h.memory_mb, h.disk_gb,
                COALESCE(SUM(s.vcpus) FILTER (WHERE s.status IN ('pending','starting','running','resuming','pausing','snapshotting')), 0)::BIGINT AS running_vcpus,
                COALESCE(SUM(s.memory_mb) FILTER (WHERE s.status IN ('pending','starting','running','resuming','pausing','snapshotting')), 0)::BIGINT AS running_memory_mb,
                COALESCE(SUM(s.disk_size_mb) FILTER (WHERE s.status IN ('pending','starting','running','resuming','pausing','snapshotting')), 0)::BIGINT AS running_disk_mb,
                COALESCE(SUM(s.memory_mb) FILTER (WHERE s.status = 'paused'), 0)::BIGINT AS paused_memory_mb,
                COALESCE(SUM(s.disk_size_mb) FILTER (WHERE s.status = 'paused'), 0)::BIGINT AS paused_disk_mb
           FROM hosts h
           LEFT JOIN sandboxes s ON s.host_id = h.id
          WHERE h.status = 'online' AND h.address <> ''
            AND CASE WHEN $1 THEN h.type = 'byoc' AND h.team_id = $2 ELSE h.type = 'regular' END
          GROUP BY h.id",
    )
    .bind(byoc)
    .bind(team_id)
    .fetch_all(&mut **tx)
    .await?;
    Ok((byoc, hosts))
}

fn no_room(req: Request, on: &str) -> ApiError {
    ApiError::host_unavailable(format!(
        "{on} has room for {} MiB of memory and {} MiB of disk",
        req.memory_mb, req.disk_mb
    ))
}

/// Within `tx`: locks the scheduler, loads eligible online hosts with their load, and picks one.
pub async fn select_host(
    tx: &mut Transaction<'_, Postgres>,
    team_id: Uuid,
    req: Request,
) -> ApiResult<HostLoad> {
    let (byoc, hosts) = eligible_hosts(tx, team_id).await?;
    if hosts.is_empty() {
        return Err(ApiError::host_unavailable(if byoc {
            "no online BYOC hosts are available for this team"
        } else {
            "no online hosts are available; start a host agent and register it"
        }));
    }
    pick(&hosts, req)
        .cloned()
        .ok_or_else(|| no_room(req, "no host"))
}

/// Within `tx`, like [`select_host`] but for a capsule from a snapshot: only `host_id`, the host
/// holding the snapshot's files, will do. It must be online, usable by the team, and have room.
pub async fn select_snapshot_host(
    tx: &mut Transaction<'_, Postgres>,
    team_id: Uuid,
    req: Request,
    host_id: Uuid,
    snapshot: &str,
) -> ApiResult<HostLoad> {
    let (_, hosts) = eligible_hosts(tx, team_id).await?;
    let host_name = ids::encode(IdKind::Host, host_id);
    let host = hosts.into_iter().find(|h| h.id == host_id).ok_or_else(|| {
        ApiError::host_unavailable(format!(
            "snapshot {snapshot:?} lives on host {host_name}, which is not online (or not \
             available to this team); start it from there once the host is back"
        ))
    })?;
    if host.headroom().admits(req) {
        Ok(host)
    } else {
        Err(no_room(
            req,
            &format!("host {host_name}, where snapshot {snapshot:?} lives, no longer"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(id: u128, mem: i32, running_mem: i64) -> HostLoad {
        HostLoad {
            id: Uuid::from_u128(id),
            address: format!("10.0.0.{id}:50051"),
            cpu_cores: 8,
            memory_mb: mem,
            disk_gb: 200,
            running_vcpus: 0,
            running_memory_mb: running_mem,
            running_disk_mb: 0,
            paused_memory_mb: 0,
            paused_disk_mb: 0,
        }
    }

    const REQ: Request = Request {
        vcpus: 1,
        memory_mb: 512,
        disk_mb: 5120,
    };

    #[test]
    fn picks_the_least_loaded_admissible_host() {
        let hosts = [
            host(1, 32768, 20000),
            host(2, 32768, 1000),
            host(3, 32768, 10000),
        ];
        assert_eq!(pick(&hosts, REQ).map(|h| h.id), Some(Uuid::from_u128(2)));
    }

    #[test]
    fn a_full_host_is_not_admitted_and_paused_memory_counts_half() {
        // ram_total = 16384 - min(8192, 25%) = 12288.
        let mut full = host(1, 16384, 12288 - 511);
        assert!(pick(std::slice::from_ref(&full), REQ).is_none());
        full.running_memory_mb = 0;
        full.paused_memory_mb = 2 * (16384 - 4096);
        // ram_total = 16384 - 4096 = 12288; half the paused memory uses all of it.
        assert!(pick(std::slice::from_ref(&full), REQ).is_none());
        full.paused_memory_mb -= 1024;
        assert!(pick(std::slice::from_ref(&full), REQ).is_some());
    }

    #[test]
    fn a_small_host_still_has_room() {
        let small = HostLoad {
            cpu_cores: 2,
            memory_mb: 8192,
            disk_gb: 20,
            ..host(1, 8192, 0)
        };
        let room = small.headroom();
        assert!(room.ram_total > 6000.0 && room.cpu_total > 0.0 && room.disk_total > 16000.0);
        assert!(pick(&[small], REQ).is_some());
    }

    #[test]
    fn cpu_may_be_overcommitted_but_scores_lower() {
        let mut busy = host(1, 32768, 0);
        busy.running_vcpus = 40;
        let idle = host(2, 32768, 0);
        assert!(busy.headroom().admits(REQ));
        assert_eq!(
            pick(&[busy, idle], REQ).map(|h| h.id),
            Some(Uuid::from_u128(2))
        );
    }
}
