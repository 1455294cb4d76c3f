//! Human output (aligned tables, key/value blocks) and `--json` output.

use crate::error::{CliError, CliResult};
use serde::Serialize;
use std::io::Write;
use wrenn_api_types::capsule::Capsule;
use wrenn_api_types::snapshots::{Template, TemplateType};

/// Pretty JSON on stdout, for `--json`.
pub fn print_json<T: Serialize + ?Sized>(value: &T) -> CliResult<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|error| CliError::Remote(format!("cannot encode JSON: {error}")))?;
    print_line(&text)
}

/// One line on stdout; a closed pipe (`wrenn list | head -1`) is an error we report, not a panic.
pub fn print_line(text: &str) -> CliResult<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{text}")
        .and_then(|()| stdout.flush())
        .map_err(|error| CliError::io("writing to stdout", error))
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub fn render_table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers
        .iter()
        .map(|header| header.chars().count())
        .collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let render_row = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut line = String::new();
        for (index, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            line.push_str(cell);
            if index < last {
                let pad = width.saturating_sub(cell.chars().count()) + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        line
    };
    let mut lines = vec![render_row(headers.to_vec())];
    lines.extend(
        rows.iter()
            .map(|row| render_row(row.iter().map(String::as_str).collect())),
    );
    lines.join("\n")
}

/// `2026-01-02 03:04:05` (UTC): sortable and short enough for a table.
pub fn short_time(time: &chrono::DateTime<chrono::Utc>) -> String {
    time.format("%Y-%m-%d %H:%M:%S").to_string()
}

/// The `wrenn list` table.
pub fn capsule_table(capsules: &[Capsule]) -> String {
    let rows: Vec<Vec<String>> = capsules
        .iter()
        .map(|capsule| {
            vec![
                capsule.id.clone(),
                capsule.status.to_string(),
                capsule.template.clone(),
                capsule.vcpus.to_string(),
                format!("{} MiB", capsule.memory_mb),
                short_time(&capsule.created_at),
            ]
        })
        .collect();
    render_table(
        &["ID", "STATUS", "TEMPLATE", "VCPUS", "MEM", "CREATED"],
        &rows,
    )
}

/// Bytes in the largest binary unit that keeps the number at or above 1 (`512 B`, `1.5 GiB`).
pub fn human_size(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes.max(0) as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The `wrenn snapshot list` table.
pub fn template_table(templates: &[Template]) -> String {
    let rows: Vec<Vec<String>> = templates
        .iter()
        .map(|template| {
            let kind = match (template.kind, template.platform) {
                (TemplateType::Base, true) => "base (platform)",
                (TemplateType::Base, false) => "base",
                (TemplateType::Snapshot, _) => "snapshot",
            };
            vec![
                template.name.clone(),
                kind.to_string(),
                template.vcpus.to_string(),
                format!("{} MiB", template.memory_mb),
                human_size(template.size_bytes),
                short_time(&template.created_at),
            ]
        })
        .collect();
    render_table(&["NAME", "TYPE", "VCPUS", "MEM", "SIZE", "CREATED"], &rows)
}

/// The `wrenn info` block: one `key: value` per line.
pub fn capsule_details(capsule: &Capsule) -> String {
    let optional_time = |time: &Option<chrono::DateTime<chrono::Utc>>| {
        time.as_ref().map(short_time).unwrap_or_else(|| "-".into())
    };
    let mut fields = vec![
        ("id", capsule.id.clone()),
        ("status", capsule.status.to_string()),
        ("template", capsule.template.clone()),
        ("vcpus", capsule.vcpus.to_string()),
        ("memory", format!("{} MiB", capsule.memory_mb)),
        (
            "disk",
            match capsule.disk_used_mb {
                Some(used) => format!("{used} / {} MiB", capsule.disk_size_mb),
                None => format!("{} MiB", capsule.disk_size_mb),
            },
        ),
        ("timeout", format!("{} s", capsule.timeout_sec)),
        ("created", short_time(&capsule.created_at)),
        ("started", optional_time(&capsule.started_at)),
        ("last active", optional_time(&capsule.last_active_at)),
    ];
    if let Some(host) = &capsule.host_id {
        fields.push(("host", host.clone()));
    }
    let metadata: Vec<(String, String)> = capsule
        .metadata
        .iter()
        .map(|(key, value)| (format!("  {key}"), value.clone()))
        .collect();
    let width = fields
        .iter()
        .map(|(key, _)| key.len() + 1)
        .chain(metadata.iter().map(|(key, _)| key.len() + 1))
        .max()
        .unwrap_or(0);
    let mut lines: Vec<String> = fields
        .iter()
        .map(|(key, value)| format!("{:width$}  {value}", format!("{key}:")))
        .collect();
    if !metadata.is_empty() {
        lines.push("metadata:".into());
        lines.extend(
            metadata
                .iter()
                .map(|(key, value)| format!("{:width$}  {value}", format!("{key}:"))),
        );
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_align() {
        let table = render_table(
            &["ID", "STATUS"],
            &[
                vec!["cl-long-id".into(), "running".into()],
                vec!["cl-a".into(), "paused".into()],
            ],
        );
        assert_eq!(
            table,
            "ID          STATUS\ncl-long-id  running\ncl-a        paused"
        );
    }

    #[test]
    fn capsule_table_has_the_documented_columns() {
        let capsule: Capsule = serde_json::from_value(serde_json::json!({
            "id": "cl-abc", "status": "running", "template": "minimal-ubuntu",
            "vcpus": 2, "memory_mb": 1024, "timeout_sec": 0,
            "created_at": "2026-01-02T03:04:05Z", "last_updated": "2026-01-02T03:04:05Z",
            "disk_size_mb": 4096
        }))
        .expect("capsule");
        let table = capsule_table(&[capsule]);
        let mut lines = table.lines();
        assert_eq!(
            lines
                .next()
                .map(|line| line.split_whitespace().collect::<Vec<_>>()),
            Some(vec!["ID", "STATUS", "TEMPLATE", "VCPUS", "MEM", "CREATED"])
        );
        assert_eq!(
            lines
                .next()
                .map(|line| line.split_whitespace().collect::<Vec<_>>()),
            Some(vec![
                "cl-abc",
                "running",
                "minimal-ubuntu",
                "2",
                "1024",
                "MiB",
                "2026-01-02",
                "03:04:05"
            ])
        );
    }

    #[test]
    fn sizes_are_human() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
