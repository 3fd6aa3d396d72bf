//! RADIUS passwords: generated strong, stored encrypted in NOC's own table.
//!
//! FreeRADIUS needs the cleartext (PAP, CHAP and MS-CHAP all compare against it), so
//! `radius.radcheck` holds it, in a schema only `isp_noc` and `isp_radius` can read.
//! The NOC's `subscribers.radius_password` holds ChaCha20-Poly1305 ciphertext
//! (ring's AEAD, already our crypto dependency) under a key from
//! `ISP_NOC_SECRET_KEY` (base64, 32 bytes) or, like the JWT key, a key file
//! `ISP_NOC_SECRET_KEY_FILE` (default `<data>/keys/noc-secret.key`) created on
//! first start. Never created later: with encrypted passwords in the database and
//! no key (or a key that does not decrypt them) the NOC refuses to start.

use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context};
use base64::Engine;
use rand::Rng;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

#[derive(Clone)]
pub struct SecretBox {
    key: Arc<LessSafeKey>,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

impl SecretBox {
    pub fn from_key(raw: &[u8]) -> anyhow::Result<Self> {
        if raw.len() != 32 {
            bail!("the NOC secret key must be 32 bytes, got {}", raw.len());
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, raw)
            .map_err(|_| anyhow::anyhow!("invalid ChaCha20-Poly1305 key"))?;
        Ok(Self {
            key: Arc::new(LessSafeKey::new(key)),
        })
    }

    /// The configured key, or a new one (written to the key file) on a first
    /// start. `stored` is a ciphertext already in the database, if any: then the
    /// key must exist and decrypt it. Generating a new key there would leave every
    /// stored password unreadable, so the start fails with what to restore.
    pub fn load_or_create(data_dir: &Path, stored: Option<&str>) -> anyhow::Result<Self> {
        let file = isp_platform::config::env_opt("ISP_NOC_SECRET_KEY_FILE")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| data_dir.join("keys").join("noc-secret.key"));
        Self::resolve(
            isp_platform::config::env_opt("ISP_NOC_SECRET_KEY"),
            &file,
            stored,
        )
    }

    fn resolve(env_key: Option<String>, file: &Path, stored: Option<&str>) -> anyhow::Result<Self> {
        let (loaded, source) = if let Some(k) = env_key {
            let key = Self::from_key(&B64.decode(k.trim()).context("ISP_NOC_SECRET_KEY")?)?;
            (Some(key), "ISP_NOC_SECRET_KEY".to_string())
        } else if file.exists() {
            let text = std::fs::read_to_string(file)?;
            let key = Self::from_key(&B64.decode(text.trim()).context("NOC secret key file")?)?;
            (Some(key), file.display().to_string())
        } else {
            (None, String::new())
        };
        match (loaded, stored) {
            (Some(key), Some(ciphertext)) => {
                if key.decrypt(ciphertext).is_err() {
                    bail!(
                        "the NOC secret key from {source} does not decrypt the RADIUS passwords already stored in noc.subscribers: it is not the key they were encrypted with. Configure the original key (ISP_NOC_SECRET_KEY, or the key file ISP_NOC_SECRET_KEY_FILE) and start again."
                    );
                }
                Ok(key)
            }
            (Some(key), None) => Ok(key),
            (None, Some(_)) => bail!(
                "no NOC secret key: ISP_NOC_SECRET_KEY is not set and {} does not exist, but noc.subscribers holds RADIUS passwords encrypted with a key. Restore that key (ISP_NOC_SECRET_KEY, or the key file at ISP_NOC_SECRET_KEY_FILE) and start again; a new key would leave every stored password unreadable, so none is generated.",
                file.display()
            ),
            (None, None) => {
                let mut raw = [0u8; 32];
                SystemRandom::new()
                    .fill(&mut raw)
                    .map_err(|_| anyhow::anyhow!("no randomness"))?;
                if let Some(dir) = file.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_private(file, &B64.encode(raw))?;
                tracing::info!(path = %file.display(), "generated a new NOC secret key");
                Self::from_key(&raw)
            }
        }
    }

    /// base64(nonce || ciphertext || tag), a fresh random nonce each time.
    pub fn encrypt(&self, plain: &str) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut buf = plain.as_bytes().to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(B64.encode(out))
    }

    pub fn decrypt(&self, stored: &str) -> anyhow::Result<String> {
        let raw = B64.decode(stored).context("ciphertext is not base64")?;
        if raw.len() < NONCE_LEN {
            bail!("ciphertext too short");
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let mut buf = ct.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut buf)
            .map_err(|_| anyhow::anyhow!("decryption failed (wrong key or tampered data)"))?;
        Ok(String::from_utf8(plain.to_vec())?)
    }
}

fn write_private(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

/// 20 characters from an alphabet without look-alikes (about 115 bits): strong,
/// and still typeable by a technician configuring a router by hand.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789";
    let mut rng = rand::rngs::OsRng;
    (0..20)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encrypts_with_fresh_nonces_and_detects_tampering() {
        let b = SecretBox::from_key(&[7u8; 32]).unwrap();
        let a = b.encrypt("s3cret-pass").unwrap();
        let c = b.encrypt("s3cret-pass").unwrap();
        assert_ne!(a, c);
        assert_eq!(b.decrypt(&a).unwrap(), "s3cret-pass");
        let mut raw = B64.decode(&a).unwrap();
        let last = raw.len() - 1;
        raw[last] ^= 1;
        assert!(b.decrypt(&B64.encode(raw)).is_err());
        let other = SecretBox::from_key(&[8u8; 32]).unwrap();
        assert!(other.decrypt(&a).is_err());
        assert!(SecretBox::from_key(&[1u8; 16]).is_err());
    }

    #[test]
    fn a_key_is_generated_only_while_no_password_is_encrypted() {
        let dir = std::env::temp_dir().join(format!("noc-key-{}", uuid::Uuid::new_v4().simple()));
        let file = dir.join("keys").join("noc-secret.key");
        // First start: a new key, written to the file, and loaded from it after.
        let first = SecretBox::resolve(None, &file, None).unwrap();
        let ct = first.encrypt("pw").unwrap();
        let again = SecretBox::resolve(None, &file, Some(&ct)).unwrap();
        assert_eq!(again.decrypt(&ct).unwrap(), "pw");
        // The key file is lost while passwords exist: no silent new key.
        std::fs::remove_file(&file).unwrap();
        let e = SecretBox::resolve(None, &file, Some(&ct))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no NOC secret key") && e.contains("Restore"),
            "{e}"
        );
        assert!(!file.exists(), "no key was generated");
        // Another key than the one the passwords were encrypted with.
        let other = B64.encode([9u8; 32]);
        let e = SecretBox::resolve(Some(other), &file, Some(&ct))
            .unwrap_err()
            .to_string();
        assert!(e.contains("does not decrypt"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn generated_passwords_are_long_and_distinct() {
        let a = generate_password();
        assert_eq!(a.len(), 20);
        assert_ne!(a, generate_password());
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
    }
}
