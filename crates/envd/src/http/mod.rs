//! envd's plain HTTP routes.

pub mod files;
pub mod lifecycle;
