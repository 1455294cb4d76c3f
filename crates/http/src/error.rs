//! The crate's one error type. Messages are complete sentences for an operator: what is wrong,
//! with which file or value, and (where the caller gave one) how to fix it.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A certificate, key or TLS configuration is unusable.
    #[error("{0}")]
    Tls(String),
    /// The certificate authority could not load or sign.
    #[error("certificate authority: {0}")]
    Pki(String),
}
