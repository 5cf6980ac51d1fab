//! TEMPORARY STUB — replaced by the Cedar policy module.
use crate::auth::Principal;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{0}")]
    Parse(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Login,
    Download,
    Push,
    Credentials,
    Tunnel,
}
impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Login => "login",
            Action::Download => "download",
            Action::Push => "push",
            Action::Credentials => "credentials",
            Action::Tunnel => "tunnel",
        }
    }
}
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    Broker,
    Module { path: String, upstream: String },
}
impl Resource {
    pub fn display(&self) -> String {
        match self {
            Resource::Broker => "broker".into(),
            Resource::Module { path, .. } => path.clone(),
        }
    }
}
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub policy_ids: Vec<String>,
    pub reason: String,
}
pub struct Policies;
impl Policies {
    pub fn load_dir(_dir: &std::path::Path) -> Result<Policies, PolicyError> {
        Ok(Policies)
    }
    pub fn len(&self) -> usize {
        0
    }
}
pub fn dev_policies(_user: &str) -> Result<Policies, PolicyError> {
    Ok(Policies)
}
pub struct PolicyEngine;
impl PolicyEngine {
    pub fn new(_p: Policies, _dir: Option<std::path::PathBuf>) -> PolicyEngine {
        PolicyEngine
    }
    pub fn reload(&self) -> Result<usize, PolicyError> {
        Ok(0)
    }
    pub fn decide(&self, p: &Principal, a: Action, r: &Resource) -> Decision {
        Decision {
            allowed: a == Action::Login,
            policy_ids: vec![],
            reason: format!("stub {} {}", p.display(), r.display()),
        }
    }
}
