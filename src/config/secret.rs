//! Secrets (database passwords, the HMAC key): where they come from and how they are kept
//! out of logs.
//!
//! A config file never holds a secret itself, only a [`SecretRef`] saying where to read it:
//! an environment variable, a file, or a systemd credential (`$CREDENTIALS_DIRECTORY/NAME`,
//! see `LoadCredential=` in systemd.exec(5)). The value lives in a [`Secret`], whose `Debug`
//! and `Display` print `***`, so it cannot leak through a log line, an error or a panic.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// A secret value. Deliberately has no `Serialize` and a redacting `Debug`/`Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Vec<u8>);

impl Secret {
    pub fn new(bytes: Vec<u8>) -> Self {
        Secret(bytes)
    }

    /// The secret bytes. Call this only where the value is used (a connect, a keyed hash).
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as text, for drivers that want a password string.
    pub fn expose_str(&self) -> Result<&str, std::str::Utf8Error> {
        std::str::from_utf8(&self.0)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret is read from. Exactly one of the three must be set.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SecretRef {
    /// Name of an environment variable holding the secret.
    pub env: Option<String>,
    /// Path of a file holding the secret (a trailing newline is removed).
    pub file: Option<PathBuf>,
    /// Name of a systemd credential (`LoadCredential=NAME:…`), read from
    /// `$CREDENTIALS_DIRECTORY/NAME`.
    pub credential: Option<String>,
}

/// Why a secret could not be read. Never contains the secret.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("set exactly one of `env`, `file` or `credential`")]
    NotExactlyOne,
    #[error("environment variable {0} is not set (or not valid UTF-8)")]
    EnvMissing(String),
    #[error("cannot read secret file {path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "systemd credential {0} requested but $CREDENTIALS_DIRECTORY is not set; add `LoadCredential={0}:/path` to the unit or use `file`"
    )]
    NoCredentialsDirectory(String),
    #[error("secret is empty")]
    Empty,
}

impl SecretRef {
    /// Reads the secret now. Called once at config load, so a missing secret is a start-up
    /// error and not a failure in the middle of a run.
    pub fn resolve(&self) -> Result<Secret, SecretError> {
        let set = [
            self.env.is_some(),
            self.file.is_some(),
            self.credential.is_some(),
        ]
        .iter()
        .filter(|s| **s)
        .count();
        if set != 1 {
            return Err(SecretError::NotExactlyOne);
        }
        let mut bytes = if let Some(var) = &self.env {
            std::env::var(var)
                .map_err(|_| SecretError::EnvMissing(var.clone()))?
                .into_bytes()
        } else if let Some(path) = &self.file {
            read_secret_file(path)?
        } else if let Some(name) = &self.credential {
            let dir = std::env::var_os("CREDENTIALS_DIRECTORY")
                .ok_or_else(|| SecretError::NoCredentialsDirectory(name.clone()))?;
            read_secret_file(&PathBuf::from(dir).join(name))?
        } else {
            return Err(SecretError::NotExactlyOne);
        };
        while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            bytes.pop();
        }
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Secret(bytes))
    }

    /// Where the secret comes from, safe to print.
    pub fn describe(&self) -> String {
        match (&self.env, &self.file, &self.credential) {
            (Some(v), _, _) => format!("env {v}"),
            (_, Some(p), _) => format!("file {}", p.display()),
            (_, _, Some(c)) => format!("credential {c}"),
            _ => "unset".to_string(),
        }
    }
}

fn read_secret_file(path: &std::path::Path) -> Result<Vec<u8>, SecretError> {
    std::fs::read(path).map_err(|source| SecretError::File {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_never_show_the_value() {
        let s = Secret::new(b"hunter2".to_vec());
        assert_eq!(format!("{s:?}"), "Secret(***)");
        assert_eq!(format!("{s}"), "***");
        assert!(!format!("{:?}", Some(&s)).contains("hunter2"));
    }

    #[test]
    fn resolves_from_file_and_strips_newline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("pw");
        std::fs::write(&p, "s3cret\n").unwrap();
        let r = SecretRef {
            file: Some(p),
            ..Default::default()
        };
        assert_eq!(r.resolve().unwrap().expose(), b"s3cret");
    }

    #[test]
    fn refuses_two_sources_and_missing_env() {
        let r = SecretRef {
            env: Some("A".into()),
            file: Some("/x".into()),
            credential: None,
        };
        assert!(matches!(r.resolve(), Err(SecretError::NotExactlyOne)));
        let r = SecretRef {
            env: Some("FEPD_TEST_SURELY_UNSET_VARIABLE".into()),
            ..Default::default()
        };
        let e = r.resolve().unwrap_err().to_string();
        assert!(e.contains("FEPD_TEST_SURELY_UNSET_VARIABLE"), "{e}");
    }
}
