//! `wrenn`, the command-line client of a Wrenn control plane. It speaks the same public REST and
//! WebSocket API as the official Python SDK (see `wrenn-client-contract.md`), with the JSON types
//! of `wrenn-api-types`.
//!
//! - [`cli`]: the clap definitions, settings resolution and dispatch.
//! - [`commands`]: one module per subcommand (`Args` + `run`).
//! - [`client`] / [`ws`]: REST and WebSocket plumbing (base URL, `X-API-Key`, errors, timeouts).
//! - [`config`]: the config file and where settings come from.
//! - [`terminal`]: raw mode, window size and the password prompt.
//! - [`quoting`], [`remote_path`], [`proxy`], [`multipart`], [`output`], [`progress`]: small
//!   pure pieces, unit-tested on their own.

pub mod cli;
pub mod client;
pub mod commands;
pub mod config;
pub mod error;
pub mod multipart;
pub mod output;
pub mod progress;
pub mod proxy;
pub mod quoting;
pub mod remote_path;
pub mod terminal;
pub mod ws;

pub use error::{CliError, CliResult};
