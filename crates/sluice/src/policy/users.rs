//! SMTP AUTH users: names and argon2 password hashes from the config. Verification runs on the blocking
//! pool (argon2 is deliberately slow) and takes the same time for unknown names as for wrong passwords.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

use crate::config::UserConfig;

#[derive(Debug, Default)]
pub struct Users {
    hashes: HashMap<String, String>,
}

impl Users {
    pub fn new(users: &[UserConfig]) -> Arc<Users> {
        Arc::new(Users { hashes: users.iter().map(|u| (u.name.clone(), u.password_hash.clone())).collect() })
    }

    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// True if `name` is a configured user and `password` matches its hash.
    pub async fn verify(self: &Arc<Self>, name: &str, password: &str) -> bool {
        let users = self.clone();
        let (name, password) = (name.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || users.verify_blocking(&name, &password)).await.unwrap_or(false)
    }

    fn verify_blocking(&self, name: &str, password: &str) -> bool {
        let known = self.hashes.get(name);
        let phc = known.map(String::as_str).unwrap_or_else(|| dummy_hash());
        let ok = Argon2::default().verify_password(password.as_bytes(), phc).is_ok();
        ok && known.is_some()
    }
}

/// Hashes a password the way `sluice passwd` prints it (argon2id, default parameters, random salt).
pub fn hash_password(password: &str) -> Result<String, argon2::password_hash::Error> {
    Ok(Argon2::default().hash_password(password.as_bytes())?.to_string())
}

/// A hash to verify against when the user name is unknown, so a failed login takes as long either way
/// and timing does not reveal which names exist.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| hash_password("sluice-dummy-password").expect("argon2 with default parameters"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn verifies_known_users_only() {
        let hash = hash_password("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let users = Users::new(&[UserConfig { name: "scanner".into(), password_hash: hash }]);
        assert!(users.verify("scanner", "s3cret").await);
        assert!(!users.verify("scanner", "wrong").await);
        assert!(!users.verify("nobody", "s3cret").await);
    }
}
