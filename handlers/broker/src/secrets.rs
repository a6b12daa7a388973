//! Where the service credentials live: AWS Secrets Manager (the real SDK client; `--endpoint-url`
//! style override for emulators) or, for the zero-dependency demo, a local JSON file with the same
//! semantics (a missing name is "not found", an unreadable store is "unavailable").

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use secrecy::SecretString;

/// Why a secret could not be read. Messages name the secret, never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// No such secret.
    #[error("secret `{0}` does not exist")]
    NotFound(String),
    /// The store could not be read (network, permissions, KMS, format).
    #[error("secret `{name}` could not be read: {reason}")]
    Unreadable {
        /// Secret id.
        name: String,
        /// Why.
        reason: String,
    },
}

/// Boxed future returned by [`SecretStore::get`].
pub type SecretFuture<'a> =
    Pin<Box<dyn Future<Output = Result<SecretString, SecretError>> + Send + 'a>>;

/// A secret store.
pub trait SecretStore: Send + Sync + std::fmt::Debug {
    /// Short name for spans (`secretsmanager`, `file`).
    fn kind(&self) -> &'static str;
    /// The secret's string value.
    fn get<'a>(&'a self, secret_id: &'a str) -> SecretFuture<'a>;
}

/// AWS Secrets Manager through `aws-sdk-secretsmanager`.
#[derive(Debug, Clone)]
pub struct SecretsManager {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretsManager {
    /// From a loaded SDK configuration.
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_secretsmanager::Client::new(config),
        }
    }
}

impl SecretStore for SecretsManager {
    fn kind(&self) -> &'static str {
        "secretsmanager"
    }

    fn get<'a>(&'a self, secret_id: &'a str) -> SecretFuture<'a> {
        Box::pin(async move {
            use aws_sdk_secretsmanager::operation::get_secret_value::GetSecretValueError;
            let out = self
                .client
                .get_secret_value()
                .secret_id(secret_id)
                .send()
                .await
                .map_err(|e| {
                    let service = e.into_service_error();
                    match service {
                        GetSecretValueError::ResourceNotFoundException(_) => {
                            SecretError::NotFound(secret_id.to_owned())
                        }
                        other => SecretError::Unreadable {
                            name: secret_id.to_owned(),
                            reason: aws_sdk_secretsmanager::error::DisplayErrorContext(&other)
                                .to_string(),
                        },
                    }
                })?;
            match out.secret_string {
                Some(s) => Ok(SecretString::from(s)),
                None => Err(SecretError::Unreadable {
                    name: secret_id.to_owned(),
                    reason: "the secret has no SecretString (binary secrets are not supported)"
                        .into(),
                }),
            }
        })
    }
}

/// A JSON file `{"<secret id>": <value>}`; a value that is not a string is stored as its JSON
/// text, as Secrets Manager stores key/value secrets. Read at every call, so edits apply at once.
#[derive(Debug, Clone)]
pub struct FileSecrets {
    path: PathBuf,
}

impl FileSecrets {
    /// Secrets from `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }
}

impl SecretStore for FileSecrets {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn get<'a>(&'a self, secret_id: &'a str) -> SecretFuture<'a> {
        Box::pin(async move {
            let unreadable = |reason: String| SecretError::Unreadable {
                name: secret_id.to_owned(),
                reason,
            };
            let text = tokio::fs::read_to_string(&self.path)
                .await
                .map_err(|e| unreadable(format!("cannot read {}: {e}", self.path.display())))?;
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text)
                .map_err(|e| {
                    unreadable(format!(
                        "{} is not a JSON object (line {}, column {})",
                        self.path.display(),
                        e.line(),
                        e.column()
                    ))
                })?;
            match map.get(secret_id) {
                None => Err(SecretError::NotFound(secret_id.to_owned())),
                Some(serde_json::Value::String(s)) => Ok(SecretString::from(s.clone())),
                Some(other) => Ok(SecretString::from(other.to_string())),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    #[tokio::test]
    async fn the_file_store_behaves_like_secrets_manager() {
        let dir = std::env::temp_dir().join(format!("tt-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secrets.json");
        std::fs::write(
            &path,
            r#"{"a": {"client_id": "x", "client_secret": "y"}, "b": "plain"}"#,
        )
        .unwrap();
        let store = FileSecrets::new(&path);
        assert!(
            store
                .get("a")
                .await
                .unwrap()
                .expose_secret()
                .contains("client_secret")
        );
        assert_eq!(store.get("b").await.unwrap().expose_secret(), "plain");
        assert_eq!(
            store.get("c").await.unwrap_err(),
            SecretError::NotFound("c".into())
        );
        std::fs::write(&path, "{ not json").unwrap();
        let e = store.get("a").await.unwrap_err();
        assert!(matches!(e, SecretError::Unreadable { .. }));
        assert!(!e.to_string().contains("not json"));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            store.get("a").await,
            Err(SecretError::Unreadable { .. })
        ));
    }
}
