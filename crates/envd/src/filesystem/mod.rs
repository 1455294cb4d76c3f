//! The `filesystem.Filesystem` service: entries, directory operations and watchers.

pub mod entry;
pub mod service;
pub mod watcher;
