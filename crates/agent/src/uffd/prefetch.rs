//! Background prefetch: installs every page not yet present, so the guest stops faulting soon
//! after resume. Walks guest memory in offset order, coalescing missing pages into runs of up to
//! `prefetch_chunk` bytes (one `UFFDIO_COPY` each), and steps aside whenever a fault is pending.

use std::time::Instant;

use super::fill::{self, OnRemoved, Run, RunEnd};
use super::regions::BASE_PAGE;
use super::server::{Shared, bump};
use super::source::PageContent;

pub fn run(shared: &Shared) {
    let started = Instant::now();
    let mut cursor = 0u64;
    let mut buf = Vec::new();
    let mut zero = Vec::new();
    loop {
        if fill::yield_to_faults(shared) {
            return;
        }
        let Some(run) = next_run(shared, cursor) else {
            break;
        };
        let Some(memory) = run.memory else { break };
        cursor = memory + run.len;

        let units = usize::try_from(run.len / run.unit).unwrap_or(0);
        let unit_len = usize::try_from(run.unit).unwrap_or(0);
        buf.resize(units * unit_len, 0);
        zero.clear();
        for (i, unit) in buf.chunks_exact_mut(unit_len).enumerate() {
            let at = i as u64 * run.unit;
            match fill::read_unit(shared, &run, at, unit, None) {
                Ok(content) => zero.push(content == PageContent::Zero),
                Err(reason) => {
                    if !shared.stop.is_set() {
                        shared.fatal(format!("prefetch: {reason}"));
                    }
                    return;
                }
            }
        }
        match fill::populate(shared, &run, &buf, &zero, OnRemoved::Skip, None) {
            Ok((installed, end)) => {
                bump(&shared.counters.prefetched_pages, installed / BASE_PAGE);
                match end {
                    RunEnd::Done | RunEnd::Unmapped => {}
                    RunEnd::VmGone => return shared.vm_gone(),
                    RunEnd::Stopped => return,
                }
            }
            Err(reason) => return shared.fatal(format!("prefetch: {reason}")),
        }
    }
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        pages = shared
            .counters
            .prefetched_pages
            .load(std::sync::atomic::Ordering::Relaxed),
        "uffd prefetch finished"
    );
    shared.set_prefetch_done();
}

/// The next run of missing, not-freed pages at or after memory offset `cursor`, inside one
/// mapping, at most `prefetch_chunk` bytes (at least one page).
fn next_run(shared: &Shared, cursor: u64) -> Option<Run> {
    let state = shared.read_state();
    let mut mappings: Vec<_> = state
        .table
        .mappings()
        .iter()
        .filter(|m| m.memory + m.len > cursor)
        .copied()
        .collect();
    drop(state);
    mappings.sort_by_key(|m| m.memory);
    let wanted = |offset: u64, unit: u64| {
        !shared.present.all(offset, unit) && !shared.removed.any(offset, unit)
    };
    for m in mappings {
        let unit = m.page_size;
        let end = m.memory + m.len;
        let mut start = cursor.max(m.memory);
        start -= (start - m.memory) % unit;
        while start < end && !wanted(start, unit) {
            start += unit;
        }
        if start >= end {
            continue;
        }
        let limit = end.min(start + shared.opts.prefetch_chunk.max(unit));
        let mut stop = start + unit;
        while stop + unit <= limit && wanted(stop, unit) {
            stop += unit;
        }
        return Some(Run {
            host: m.host + (start - m.memory),
            memory: Some(start),
            len: stop - start,
            unit,
            region: Some(m.region),
        });
    }
    None
}
