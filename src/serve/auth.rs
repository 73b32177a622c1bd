//! Who may query: one user and password (from `LAKEHOUSE_USER` /
//! `LAKEHOUSE_PASSWORD` or the config file), checked by SCRAM on Postgres
//! wire and by basic auth on Flight SQL and HTTP; bearer tokens issued by the
//! Flight handshake (valid on Flight and HTTP for 12 hours) or one fixed
//! token (`LAKEHOUSE_TOKEN`). Without a password every client is trusted,
//! which `serve` allows on loopback addresses only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

const TOKEN_LIFETIME: Duration = Duration::from_secs(12 * 3600);

#[derive(Debug)]
pub struct Auth {
    user: String,
    password: Option<String>,
    fixed_token: Option<String>,
    issued: Mutex<HashMap<String, Instant>>,
    /// The bearer token `/metrics` asks for, if any.
    metrics_token: Option<String>,
}

/// What a request's `authorization` header proved.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Missing,
    Wrong,
}

impl Auth {
    pub fn new(user: String, password: Option<String>, fixed_token: Option<String>) -> Self {
        Self {
            user,
            password: password.filter(|p| !p.is_empty()),
            fixed_token: fixed_token.filter(|t| !t.is_empty()),
            issued: Mutex::new(HashMap::new()),
            metrics_token: None,
        }
    }

    /// `/metrics` asks for this bearer token (none: open).
    pub fn with_metrics_token(mut self, token: Option<String>) -> Self {
        self.metrics_token = token.filter(|t| !t.is_empty());
        self
    }

    /// Whether an `authorization` header may read `/metrics`.
    pub fn metrics_allowed(&self, header: Option<&str>) -> bool {
        match &self.metrics_token {
            None => true,
            Some(token) => header
                .and_then(|h| h.strip_prefix("Bearer "))
                .is_some_and(|given| same(given.trim().as_bytes(), token.as_bytes())),
        }
    }

    /// Whether clients must prove who they are.
    pub fn required(&self) -> bool {
        self.password.is_some() || self.fixed_token.is_some()
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    pub fn check_password(&self, user: &str, password: &str) -> bool {
        match &self.password {
            // Both compared in full, so timing does not tell which was wrong.
            Some(p) => {
                same(user.as_bytes(), self.user.as_bytes())
                    & same(password.as_bytes(), p.as_bytes())
            }
            None => !self.required(),
        }
    }

    /// A new bearer token, after a successful basic login.
    pub fn issue_token(&self) -> String {
        let token = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        let mut issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued.retain(|_, at| at.elapsed() < TOKEN_LIFETIME);
        issued.insert(token.clone(), Instant::now());
        token
    }

    fn check_token(&self, token: &str) -> bool {
        if let Some(fixed) = &self.fixed_token {
            if same(token.as_bytes(), fixed.as_bytes()) {
                return true;
            }
        }
        let issued = self.issued.lock().unwrap_or_else(|p| p.into_inner());
        issued
            .get(token)
            .is_some_and(|at| at.elapsed() < TOKEN_LIFETIME)
    }

    /// Checks an `authorization` header value (`Basic ...` or `Bearer ...`).
    pub fn check_header(&self, header: Option<&str>) -> Verdict {
        if !self.required() {
            return Verdict::Allowed;
        }
        let Some(header) = header.map(str::trim) else {
            return Verdict::Missing;
        };
        let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
        let ok = if scheme.eq_ignore_ascii_case("bearer") {
            self.check_token(value.trim())
        } else if scheme.eq_ignore_ascii_case("basic") {
            match decode_basic(value.trim()) {
                Some((u, p)) => self.check_password(&u, &p),
                None => false,
            }
        } else {
            false
        };
        if ok {
            Verdict::Allowed
        } else {
            Verdict::Wrong
        }
    }
}

/// `user:password` from a basic auth value, with or without base64's `=`
/// padding: Go's Flight SQL driver (under ADBC) sends it unpadded, so a
/// strict decoder refused every password whose `user:password` is not a
/// multiple of 3 bytes long.
pub fn decode_basic(value: &str) -> Option<(String, String)> {
    use base64::engine::{general_purpose::GeneralPurpose, DecodePaddingMode};
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    let bytes = LENIENT.decode(value).ok()?;
    let text = String::from_utf8(bytes).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Constant-time equality (for equal lengths; a length mismatch is simply false).
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(u: &str, p: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
        )
    }

    #[test]
    fn passwords_and_tokens() {
        let auth = Auth::new("ana".into(), Some("s3cret".into()), None);
        assert!(auth.required());
        assert_eq!(
            auth.check_header(Some(&basic("ana", "s3cret"))),
            Verdict::Allowed
        );
        assert_eq!(
            auth.check_header(Some(&basic("ana", "wrong"))),
            Verdict::Wrong
        );
        assert_eq!(
            auth.check_header(Some(&basic("bob", "s3cret"))),
            Verdict::Wrong
        );
        assert_eq!(auth.check_header(None), Verdict::Missing);
        assert_eq!(auth.check_header(Some("Bearer nope")), Verdict::Wrong);
        let token = auth.issue_token();
        assert_eq!(
            auth.check_header(Some(&format!("Bearer {token}"))),
            Verdict::Allowed
        );

        // Every length of `user:password` mod 3, padded and unpadded.
        for password in ["p", "pw", "pwd", "pass", "passw", "s3cr3t!"] {
            let auth = Auth::new("ana".into(), Some(password.into()), None);
            let padded =
                base64::engine::general_purpose::STANDARD.encode(format!("ana:{password}"));
            let unpadded =
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("ana:{password}"));
            for value in [&padded, &unpadded] {
                assert_eq!(
                    auth.check_header(Some(&format!("Basic {value}"))),
                    Verdict::Allowed,
                    "{password} as {value}"
                );
            }
            let wrong =
                base64::engine::general_purpose::STANDARD_NO_PAD.encode(format!("ana:{password}x"));
            assert_eq!(
                auth.check_header(Some(&format!("Basic {wrong}"))),
                Verdict::Wrong
            );
        }

        let open = Auth::new("x".into(), None, None);
        assert!(!open.required());
        assert_eq!(open.check_header(None), Verdict::Allowed);
    }
}
