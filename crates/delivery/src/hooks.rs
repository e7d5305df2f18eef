//! Push webhooks from GitHub, GitLab and Gitea/Forgejo: authenticity first
//! (HMAC-SHA256 of the raw body, or GitLab's shared token, compared in
//! constant time), then the push payload as each provider documents it.

use subtle::ConstantTimeEq;
use tandem_core::signature;

/// A provider of push webhooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    GitHub,
    GitLab,
    Gitea,
}

impl Provider {
    pub fn from_path(s: &str) -> Option<Provider> {
        match s {
            "github" => Some(Provider::GitHub),
            "gitlab" => Some(Provider::GitLab),
            "gitea" | "forgejo" => Some(Provider::Gitea),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Gitea => "gitea",
        }
    }
}

/// Why a delivery is refused (401) or ignored (202).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum HookError {
    #[error("the service has no webhook secret; register it with --webhook-secret")]
    NoSecret,
    #[error("missing {0} header")]
    MissingSignature(&'static str),
    #[error("signature does not match")]
    BadSignature,
    /// Said under `"ignored"` in the answer: the reason alone.
    #[error("{0}")]
    Ignored(String),
    #[error("malformed payload: {0}")]
    Malformed(String),
}

impl HookError {
    /// 401 for authenticity failures; the rest are answered 202 or 400.
    pub fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            HookError::NoSecret | HookError::MissingSignature(_) | HookError::BadSignature
        )
    }
}

/// A verified push to a branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Push {
    pub branch: String,
    pub after: String,
}

/// Checks a delivery's authenticity. `header` looks up a request header by
/// (lower-case) name.
pub fn verify<'a>(
    provider: Provider,
    secret: Option<&str>,
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
) -> Result<(), HookError> {
    let secret = secret.ok_or(HookError::NoSecret)?;
    match provider {
        Provider::GitLab => {
            let token =
                header("x-gitlab-token").ok_or(HookError::MissingSignature("X-Gitlab-Token"))?;
            if bool::from(token.as_bytes().ct_eq(secret.as_bytes())) {
                Ok(())
            } else {
                Err(HookError::BadSignature)
            }
        }
        Provider::GitHub => {
            let sig = header("x-hub-signature-256")
                .ok_or(HookError::MissingSignature("X-Hub-Signature-256"))?;
            let hex = sig.strip_prefix("sha256=").ok_or(HookError::BadSignature)?;
            check_hmac(secret, body, hex)
        }
        Provider::Gitea => {
            // Gitea and Forgejo sign without a prefix; newer versions also
            // send GitHub's header.
            let sig = header("x-gitea-signature")
                .or_else(|| header("x-forgejo-signature"))
                .or_else(|| header("x-hub-signature-256").and_then(|s| s.strip_prefix("sha256=")))
                .ok_or(HookError::MissingSignature("X-Gitea-Signature"))?;
            check_hmac(secret, body, sig)
        }
    }
}

fn check_hmac(secret: &str, body: &[u8], hex: &str) -> Result<(), HookError> {
    if signature::verify(secret, body, hex) {
        Ok(())
    } else {
        Err(HookError::BadSignature)
    }
}

/// Reads a verified delivery: a push to a branch, or why it is ignored.
pub fn parse<'a>(
    provider: Provider,
    header: impl Fn(&str) -> Option<&'a str>,
    body: &[u8],
) -> Result<Push, HookError> {
    let (event_header, push_event) = match provider {
        Provider::GitHub => ("x-github-event", "push"),
        Provider::GitLab => ("x-gitlab-event", "Push Hook"),
        Provider::Gitea => ("x-gitea-event", "push"),
    };
    let event = header(event_header)
        .or_else(|| {
            (provider == Provider::Gitea)
                .then(|| header("x-forgejo-event"))
                .flatten()
        })
        .unwrap_or_default();
    if event != push_event {
        return Err(HookError::Ignored(format!("event {event:?} is not a push")));
    }
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| HookError::Malformed(e.to_string()))?;
    let field = |name: &str| {
        v.get(name)
            .and_then(|x| x.as_str())
            .ok_or_else(|| HookError::Malformed(format!("no string field {name:?}")))
    };
    let refname = field("ref")?;
    let Some(branch) = refname.strip_prefix("refs/heads/") else {
        return Err(HookError::Ignored(format!("{refname} is not a branch")));
    };
    let after = field("after")?;
    if after.bytes().all(|b| b == b'0') {
        return Err(HookError::Ignored(format!("branch {branch} was deleted")));
    }
    if after.len() < 7 || !after.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HookError::Malformed(format!(
            "{after:?} is not a commit id"
        )));
    }
    Ok(Push {
        branch: branch.to_owned(),
        after: after.to_ascii_lowercase(),
    })
}

/// The hex signature GitHub and Gitea send for `body` under `secret`.
pub use tandem_core::signature::sign;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        move |name| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
    }

    #[test]
    fn github_signature_is_checked_over_the_raw_body() {
        let body =
            br#"{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567"}"#;
        let good = format!("sha256={}", sign("s3cret", body));
        let h = [("x-hub-signature-256", good.as_str())];
        assert_eq!(
            verify(Provider::GitHub, Some("s3cret"), headers(&h), body),
            Ok(())
        );
        assert_eq!(
            verify(Provider::GitHub, Some("other"), headers(&h), body),
            Err(HookError::BadSignature)
        );
        let tampered =
            br#"{"ref":"refs/heads/main","after":"1123456789abcdef0123456789abcdef01234567"}"#;
        assert_eq!(
            verify(Provider::GitHub, Some("s3cret"), headers(&h), tampered),
            Err(HookError::BadSignature)
        );
        assert!(
            verify(Provider::GitHub, Some("s3cret"), headers(&[]), body)
                .expect_err("no signature")
                .is_unauthorized()
        );
        assert_eq!(
            verify(Provider::GitHub, None, headers(&h), body),
            Err(HookError::NoSecret)
        );
    }

    #[test]
    fn gitea_signs_without_prefix_and_gitlab_sends_the_token() {
        let body = b"{}";
        let sig = sign("k", body);
        let h = [("x-gitea-signature", sig.as_str())];
        assert_eq!(
            verify(Provider::Gitea, Some("k"), headers(&h), body),
            Ok(())
        );
        let github_style = format!("sha256={sig}");
        let h = [("x-hub-signature-256", github_style.as_str())];
        assert_eq!(
            verify(Provider::Gitea, Some("k"), headers(&h), body),
            Ok(())
        );
        let h = [("x-gitlab-token", "k")];
        assert_eq!(
            verify(Provider::GitLab, Some("k"), headers(&h), body),
            Ok(())
        );
        let h = [("x-gitlab-token", "K")];
        assert_eq!(
            verify(Provider::GitLab, Some("k"), headers(&h), body),
            Err(HookError::BadSignature)
        );
    }

    #[test]
    fn only_pushes_to_branches_are_taken() {
        let sha = "89abcdef0123456789abcdef0123456789abcdef";
        let push = format!(r#"{{"ref":"refs/heads/main","after":"{sha}"}}"#);
        let h = [("x-github-event", "push")];
        assert_eq!(
            parse(Provider::GitHub, headers(&h), push.as_bytes()),
            Ok(Push {
                branch: "main".into(),
                after: sha.into()
            })
        );
        let h = [("x-github-event", "ping")];
        assert!(matches!(
            parse(Provider::GitHub, headers(&h), push.as_bytes()),
            Err(HookError::Ignored(_))
        ));
        let tag = format!(r#"{{"ref":"refs/tags/v1","after":"{sha}"}}"#);
        let h = [("x-gitlab-event", "Push Hook")];
        assert!(matches!(
            parse(Provider::GitLab, headers(&h), tag.as_bytes()),
            Err(HookError::Ignored(_))
        ));
        let deleted =
            r#"{"ref":"refs/heads/main","after":"0000000000000000000000000000000000000000"}"#;
        let h = [("x-gitea-event", "push")];
        assert!(matches!(
            parse(Provider::Gitea, headers(&h), deleted.as_bytes()),
            Err(HookError::Ignored(_))
        ));
        assert!(matches!(
            parse(Provider::Gitea, headers(&h), b"not json"),
            Err(HookError::Malformed(_))
        ));
    }
}
