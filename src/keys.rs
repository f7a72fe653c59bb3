//! The agent's Ed25519 signing key: a file holding the base64 of the 32-byte secret seed,
//! mode 0600. `fepd keygen` writes it; the platform gets the base64 public key.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read signing key {path}: {source}; create one with `fepd keygen --out {path}`")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "signing key {0} is not a base64 Ed25519 key (32 bytes); create one with `fepd keygen`"
    )]
    Malformed(PathBuf),
    #[error("signing key {0} is readable by other users; run `chmod 600 {0}`")]
    Permissions(PathBuf),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("public key `{0}` is not a base64 Ed25519 public key (or a file holding one)")]
    BadPublicKey(String),
    #[error("no random source: {0}")]
    Random(String),
}

/// Loads the signing key, refusing a key file that others can read.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let meta = std::fs::metadata(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(KeyError::Permissions(path.to_path_buf()));
    }
    let text = std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let bytes = B64
        .decode(text.trim())
        .map_err(|_| KeyError::Malformed(path.to_path_buf()))?;
    let seed: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyError::Malformed(path.to_path_buf()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Creates a new key file (never overwrites) with mode 0600; returns the key.
pub fn generate_signing_key(path: &Path) -> Result<SigningKey, KeyError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
    let key = SigningKey::from_bytes(&seed);
    let write_err = |source| KeyError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(write_err)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(write_err)?;
    f.write_all(format!("{}\n", B64.encode(seed)).as_bytes())
        .map_err(write_err)?;
    f.sync_all().map_err(write_err)?;
    Ok(key)
}

/// The base64 public key, as given to the platform.
pub fn public_key_b64(key: &SigningKey) -> String {
    B64.encode(key.verifying_key().to_bytes())
}

/// Parses a public key given as base64 text or as the path of a file holding it.
pub fn parse_public_key(arg: &str) -> Result<VerifyingKey, KeyError> {
    let text = match std::fs::read_to_string(arg) {
        Ok(t) => t,
        Err(_) => arg.to_string(),
    };
    let bytes = B64
        .decode(text.trim())
        .map_err(|_| KeyError::BadPublicKey(arg.to_string()))?;
    let arr: [u8; 32] = bytes
        .try_into()
        .map_err(|_| KeyError::BadPublicKey(arg.to_string()))?;
    VerifyingKey::from_bytes(&arr).map_err(|_| KeyError::BadPublicKey(arg.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_writes_0600_and_loads_back() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        let k = generate_signing_key(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(load_signing_key(&p).unwrap().to_bytes(), k.to_bytes());
        assert!(generate_signing_key(&p).is_err(), "never overwrites");
        let pk = parse_public_key(&public_key_b64(&k)).unwrap();
        assert_eq!(pk, k.verifying_key());
    }

    #[test]
    fn refuses_group_readable_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        generate_signing_key(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            load_signing_key(&p),
            Err(KeyError::Permissions(_))
        ));
    }
}
