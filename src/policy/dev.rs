//! The built-in policies of `gocred serve --dev`.
//!
//! Must not: be used outside `--dev` (they trust one user with every module).

use super::*;

/// Placeholder for the (escaped) user name in [`DEV_POLICIES`].
const DEV_USER: &str = "{{USER}}";

/// The `--dev` policy set: one user may log in, download and get credentials for anything.
const DEV_POLICIES: &str = r#"// Built-in development policies (gocred --dev).
@id("dev-login")
permit (principal == User::"{{USER}}", action == Action::"login", resource);

@id("dev-download")
permit (
  principal == User::"{{USER}}",
  action in [Action::"download", Action::"credentials"],
  resource
);

@id("dev-no-push")
forbid (principal, action == Action::"push", resource);
"#;

/// The policies for `gocred --dev`: `user` may log in, and download and get credentials for
/// every module; nobody may push. Built from the embedded schema.
pub fn dev_policies(user: &str) -> Result<Policies, PolicyError> {
    let text = DEV_POLICIES.replace(DEV_USER, &user.escape_default().to_string());
    Policies::from_sources(EMBEDDED_SCHEMA, &[("dev.cedar".to_owned(), text)])
}
