//! Public identifiers: a type prefix and the 25-character base36 form of a UUID (`cl-…`, `usr-…`),
//! as upstream. The database keeps the UUID; ids are converted only at the API boundary, and a
//! string that does not decode is simply an unknown id (404), never a server error.

use uuid::Uuid;

/// The kinds of public id and their prefixes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdKind {
    Capsule,
    User,
    Team,
    ApiKey,
    Host,
    AuditLog,
    Build,
}

impl IdKind {
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Capsule => "cl-",
            Self::User => "usr-",
            Self::Team => "team-",
            Self::ApiKey => "key-",
            Self::Host => "host-",
            Self::AuditLog => "log-",
            Self::Build => "bld-",
        }
    }
}

const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
/// 36^25 > 2^128, so every UUID fits in 25 digits.
const DIGITS: usize = 25;

pub fn encode(kind: IdKind, id: Uuid) -> String {
    let mut n = id.as_u128();
    let mut digits = [b'0'; DIGITS];
    for slot in digits.iter_mut().rev() {
        *slot = ALPHABET[(n % 36) as usize];
        n /= 36;
    }
    let mut out = String::with_capacity(kind.prefix().len() + DIGITS);
    out.push_str(kind.prefix());
    out.extend(digits.iter().map(|&b| b as char));
    out
}

/// Decodes `cl-…` (for [`IdKind::Capsule`]); `None` for anything that is not such an id.
pub fn decode(kind: IdKind, text: &str) -> Option<Uuid> {
    let digits = text.strip_prefix(kind.prefix())?;
    if digits.len() != DIGITS {
        return None;
    }
    let mut n: u128 = 0;
    for b in digits.bytes() {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'z' => b - b'a' + 10,
            _ => return None,
        };
        n = n.checked_mul(36)?.checked_add(u128::from(d))?;
    }
    Some(Uuid::from_u128(n))
}

pub fn new_uuid() -> Uuid {
    Uuid::new_v4()
}

pub fn capsule(id: Uuid) -> String {
    encode(IdKind::Capsule, id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_garbage() {
        for id in [Uuid::nil(), Uuid::max(), Uuid::new_v4(), Uuid::new_v4()] {
            let text = encode(IdKind::Capsule, id);
            assert_eq!(text.len(), 3 + DIGITS);
            assert!(text[3..].bytes().all(|b| ALPHABET.contains(&b)));
            assert_eq!(decode(IdKind::Capsule, &text), Some(id));
            assert_eq!(decode(IdKind::User, &text), None, "wrong prefix");
        }
        assert_eq!(decode(IdKind::Capsule, "cl-"), None);
        assert_eq!(
            decode(IdKind::Capsule, "cl-ZZZZZZZZZZZZZZZZZZZZZZZZZ"),
            None
        );
        assert_eq!(
            decode(IdKind::Capsule, "cl-zzzzzzzzzzzzzzzzzzzzzzzzz"),
            None,
            "overflow"
        );
        assert_eq!(decode(IdKind::Capsule, "cl-../../etc/passwd"), None);
    }
}
