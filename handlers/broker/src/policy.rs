//! Which caller roles may receive which service credentials (a TOML file).
//!
//! ```toml
//! [credentials.orders-api]
//! secret = "tokentrail/orders-api/client"  # Secrets Manager secret id: {"client_id","client_secret"}
//! scope = "orders:read"                     # scopes asked for at the IdP (optional)
//!
//! [[allow]]
//! role = "arn:aws:iam::111122223333:role/tokentrail-interceptor"
//! credentials = ["orders-api"]
//! ```
//!
//! Callers are matched by role ARN with the session name ignored (see [`auth::iam::caller_role`]).

use std::collections::BTreeMap;

use serde::Deserialize;

/// A service credential the broker can hand out tokens for.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Credential {
    /// Secrets Manager secret id (name or ARN) holding `{"client_id", "client_secret"}`.
    pub secret: String,
    /// Scopes to ask for (space separated); empty asks for the client's default.
    #[serde(default)]
    pub scope: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Allow {
    role: String,
    credentials: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    credentials: BTreeMap<String, Credential>,
    #[serde(default)]
    allow: Vec<Allow>,
}

/// Errors loading a policy.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not valid TOML / wrong shape.
    #[error("broker policy is invalid: {0}")]
    Parse(String),
    /// A rule names something that does not exist or is not a role.
    #[error("broker policy is invalid: {0}")]
    Invalid(String),
}

/// Why the policy refused a caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The role is in no rule.
    #[error("role {0} is not allowed any service credential")]
    UnknownCaller(String),
    /// The role may not receive the credential it asked for.
    #[error("role {role} may not receive `{credential}`")]
    NotForThisCaller {
        /// Caller role.
        role: String,
        /// Credential asked for.
        credential: String,
    },
    /// The caller asked for nothing and may receive several credentials.
    #[error("role {0} may receive several credentials: name one")]
    Ambiguous(String),
}

/// The loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    credentials: BTreeMap<String, Credential>,
    /// Normalised role ARN → credential names.
    allow: BTreeMap<String, Vec<String>>,
}

impl Policy {
    /// Parse and check a policy.
    pub fn from_toml(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile =
            toml::from_str(text).map_err(|e| PolicyError::Parse(e.to_string()))?;
        let mut allow: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for rule in &file.allow {
            let role = auth::iam::caller_role(&rule.role);
            if !role.starts_with("arn:") || !role.contains(":role/") {
                return Err(PolicyError::Invalid(format!(
                    "`{}` is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)",
                    rule.role
                )));
            }
            for c in &rule.credentials {
                if !file.credentials.contains_key(c) {
                    return Err(PolicyError::Invalid(format!(
                        "rule for {} names unknown credential `{c}`",
                        rule.role
                    )));
                }
            }
            allow
                .entry(role)
                .or_default()
                .extend(rule.credentials.iter().cloned());
        }
        for (name, c) in &file.credentials {
            if c.secret.trim().is_empty() {
                return Err(PolicyError::Invalid(format!(
                    "credential `{name}` has no secret"
                )));
            }
        }
        Ok(Self {
            credentials: file.credentials,
            allow,
        })
    }

    /// The credential `caller_arn` may receive (`requested`, or its only one).
    pub fn resolve(
        &self,
        caller_arn: &str,
        requested: Option<&str>,
    ) -> Result<(&str, &Credential), Denied> {
        let role = auth::iam::caller_role(caller_arn);
        let Some(names) = self.allow.get(&role) else {
            return Err(Denied::UnknownCaller(role));
        };
        let name = match requested {
            Some(r) if names.iter().any(|n| n == r) => r,
            Some(r) => {
                return Err(Denied::NotForThisCaller {
                    role,
                    credential: r.to_owned(),
                });
            }
            None => match names.as_slice() {
                [only] => only.as_str(),
                _ => return Err(Denied::Ambiguous(role)),
            },
        };
        self.credentials
            .get_key_value(name)
            .map(|(k, v)| (k.as_str(), v))
            .ok_or(Denied::UnknownCaller(role))
    }

    /// Every credential (name, definition).
    pub fn credentials(&self) -> impl Iterator<Item = (&str, &Credential)> {
        self.credentials.iter().map(|(k, v)| (k.as_str(), v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = r#"
[credentials.orders-api]
secret = "tokentrail/orders-api/client"
scope = "orders:read"

[credentials.billing]
secret = "tokentrail/billing/client"

[[allow]]
role = "arn:aws:iam::111122223333:role/interceptor"
credentials = ["orders-api"]

[[allow]]
role = "arn:aws:iam::111122223333:role/ops/admin"
credentials = ["orders-api", "billing"]
"#;

    #[test]
    fn roles_match_with_the_session_name_ignored() {
        let p = Policy::from_toml(POLICY).unwrap();
        let (name, c) = p
            .resolve(
                "arn:aws:sts::111122223333:assumed-role/interceptor/any-session",
                None,
            )
            .unwrap();
        assert_eq!(name, "orders-api");
        assert_eq!(c.scope, "orders:read");
        assert_eq!(
            p.resolve(
                "arn:aws:sts::111122223333:assumed-role/interceptor/s",
                Some("billing")
            ),
            Err(Denied::NotForThisCaller {
                role: "arn:aws:iam::111122223333:role/interceptor".into(),
                credential: "billing".into()
            })
        );
        assert!(matches!(
            p.resolve("arn:aws:sts::999999999999:assumed-role/interceptor/s", None),
            Err(Denied::UnknownCaller(_))
        ));
        assert!(matches!(
            p.resolve("arn:aws:sts::111122223333:assumed-role/admin/s", None),
            Err(Denied::Ambiguous(_))
        ));
        assert!(
            p.resolve(
                "arn:aws:sts::111122223333:assumed-role/admin/s",
                Some("billing")
            )
            .is_ok()
        );
        assert!(matches!(
            p.resolve("arn:aws:iam::111122223333:user/interceptor", None),
            Err(Denied::UnknownCaller(_))
        ));
    }

    #[test]
    fn bad_policies_are_refused_with_the_reason() {
        let e = Policy::from_toml(
            "[[allow]]\nrole = \"arn:aws:iam::1:role/x\"\ncredentials = [\"nope\"]\n",
        )
        .unwrap_err();
        assert!(e.to_string().contains("unknown credential `nope`"), "{e}");
        let e = Policy::from_toml("[[allow]]\nrole = \"alice\"\ncredentials = []\n").unwrap_err();
        assert!(e.to_string().contains("not an IAM role ARN"), "{e}");
        assert!(Policy::from_toml("allow = 3").is_err());
    }
}
