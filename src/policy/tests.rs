//! Policy loading, decisions, the engine's cache and reload, the dev policies.

use super::*;
use std::collections::BTreeMap;
use std::path::Path;

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")
}

fn shipped() -> Policies {
    match Policies::load_dir(&shipped_dir()) {
        Ok(p) => p,
        Err(e) => panic!("shipped policies do not load: {}", crate::error_chain(&e)),
    }
}

fn user(id: &str, groups: &[&str]) -> Principal {
    Principal {
        kind: PrincipalKind::User,
        id: id.to_owned(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        auth_method: "ssh".to_owned(),
        key_fingerprint: "SHA256:abc".to_owned(),
        attrs: BTreeMap::from([("kind".to_owned(), "human".to_owned())]),
    }
}

fn ci(owner: &str) -> Principal {
    Principal {
        kind: PrincipalKind::Workload,
        id: format!("repo:{owner}/api:ref:refs/heads/main"),
        groups: Vec::new(),
        auth_method: "oidc".to_owned(),
        key_fingerprint: "SHA256:ci".to_owned(),
        attrs: BTreeMap::from([
            ("kind".to_owned(), "ci".to_owned()),
            ("repository_owner".to_owned(), owner.to_owned()),
            ("repository".to_owned(), format!("{owner}/api")),
            ("ref".to_owned(), "refs/heads/main".to_owned()),
            ("event_name".to_owned(), "push".to_owned()),
            ("issuer".to_owned(), "github".to_owned()),
            // Not in the schema: must be ignored, not rejected.
            ("job_workflow_ref".to_owned(), "x".to_owned()),
        ]),
    }
}

fn schema_text() -> String {
    std::fs::read_to_string(shipped_dir().join(SCHEMA_FILE)).expect("schema file")
}

fn shipped_text() -> String {
    std::fs::read_to_string(shipped_dir().join("gocred.cedar")).expect("policy file")
}

#[test]
fn only_admins_may_revoke_others_sessions() {
    let p = shipped();
    let bobs = Resource::Session { owner_kind: "user".into(), owner: "bob".into(), auth_method: "ssh".into() };
    let d = p.decide(&user("alice", &["developers"]), Action::Revoke, &bobs);
    assert!(!d.allowed);
    assert_eq!(d.reason, "no policy permits revoke of the session of user:bob for user:alice");
    let d = p.decide(&user("root", &["gocred-admins"]), Action::Revoke, &bobs);
    assert!(d.allowed, "{}", d.reason);
    assert_eq!(d.policy_ids, ["admins-revoke-any"]);
}

#[test]
fn shipped_policies_load() {
    let p = shipped();
    assert_eq!(p.len(), 11);
    assert!(!p.is_empty());
    assert_eq!(p.location("developers-download-corp"), Some("gocred.cedar:12"));
    assert_eq!(p.location("no-push"), Some("gocred.cedar:95"));
}

#[test]
fn developers_download_corp_modules() {
    let p = shipped();
    let lib = Resource::module("git.corp.example/acme/lib", "corp");
    let d = p.decide(&user("alice", &["developers"]), Action::Download, &lib);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["developers-download-corp"]);
    assert_eq!(d.reason, "permitted by policy developers-download-corp");

    // Not a corp module.
    let other = Resource::module("github.com/acme/lib", "");
    let d = p.decide(&user("alice", &["developers"]), Action::Download, &other);
    assert!(!d.allowed);
    assert!(d.policy_ids.is_empty());
}

#[test]
fn user_without_group_is_denied() {
    let p = shipped();
    let secret = Resource::module("git.corp.example/secret/x", "corp");
    let d = p.decide(&user("alice", &["ops"]), Action::Download, &secret);
    assert!(!d.allowed);
    assert!(d.policy_ids.is_empty());
    assert_eq!(d.reason, "no policy permits download of git.corp.example/secret/x for user:alice");
}

#[test]
fn push_is_forbidden() {
    let p = shipped();
    let lib = Resource::module("git.corp.example/acme/lib", "corp");
    let d = p.decide(&user("alice", &["developers"]), Action::Push, &lib);
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["no-push"]);
    assert_eq!(d.reason, "forbidden by policy no-push: push of git.corp.example/acme/lib for user:alice");
}

#[test]
fn login_allowed_except_mallory() {
    let p = shipped();
    let d = p.decide(&user("alice", &[]), Action::Login, &Resource::Broker);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["login-all"]);

    let d = p.decide(&ci("acme"), Action::Login, &Resource::Broker);
    assert!(d.allowed, "{d:?}");

    let d = p.decide(&user("mallory", &["developers"]), Action::Login, &Resource::Broker);
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["ban-mallory-login"]);
    assert!(d.reason.contains("ban-mallory-login"), "{}", d.reason);
}

#[test]
fn ci_downloads_own_org_only() {
    let p = shipped();
    let own = Resource::module("git.corp.example/acme/api", "corp");
    let d = p.decide(&ci("acme"), Action::Download, &own);
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.policy_ids, ["ci-acme-main-download-acme"]);

    let other = Resource::module("git.corp.example/other/x", "corp");
    let d = p.decide(&ci("acme"), Action::Download, &other);
    assert!(!d.allowed);
    assert!(d.policy_ids.is_empty());
    assert!(d.reason.contains("git.corp.example/other/x"), "{}", d.reason);
    assert!(d.reason.contains("workload:repo:acme/api"), "{}", d.reason);

    // The same claims from another issuer (here the cluster's) get nothing.
    let mut k8s = ci("acme");
    k8s.attrs.insert("kind".to_owned(), "kubernetes".to_owned());
    k8s.attrs.insert("issuer".to_owned(), "cluster".to_owned());
    assert!(!p.decide(&k8s, Action::Download, &own).allowed);

    // A module path without an org element.
    let bare = Resource::module("git.corp.example", "corp");
    assert!(!p.decide(&ci("acme"), Action::Download, &bare).allowed);
    // The same org name from another issuer, or a pull_request_target run, gets nothing.
    let mut elsewhere = ci("acme");
    elsewhere.attrs.insert("issuer".to_owned(), "gitlab".to_owned());
    assert!(!p.decide(&elsewhere, Action::Download, &own).allowed);
    let mut prt = ci("acme");
    prt.attrs.insert("event_name".to_owned(), "pull_request_target".to_owned());
    assert!(!p.decide(&prt, Action::Download, &own).allowed);
    // Another org's main branch does not reach acme's modules (no generic owner == org rule).
    assert!(!p.decide(&ci("other"), Action::Download, &Resource::module("git.corp.example/other/x", "corp")).allowed);
    // A feature branch of the same repository gets nothing.
    let mut feature = ci("acme");
    feature.attrs.insert("ref".to_owned(), "refs/heads/feature".to_owned());
    assert!(!p.decide(&feature, Action::Download, &own).allowed);
    // Only acme/api main reaches the platform modules.
    let platform = Resource::module("git.corp.example/platform/log", "corp");
    assert!(p.decide(&ci("acme"), Action::Download, &platform).allowed);
    assert!(!p.decide(&ci("other"), Action::Download, &platform).allowed);
    assert!(!p.decide(&feature, Action::Download, &platform).allowed);
}

#[test]
fn kubernetes_namespace_builds_only() {
    let p = shipped();
    let mut k8s = ci("acme");
    k8s.attrs = BTreeMap::from([
        ("kind".to_owned(), "kubernetes".to_owned()),
        ("issuer".to_owned(), "cluster".to_owned()),
        ("namespace".to_owned(), "builds".to_owned()),
        ("service_account".to_owned(), "builder".to_owned()),
    ]);
    let m = Resource::module("git.corp.example/acme/lib", "corp");
    let d = p.decide(&k8s, Action::Download, &m);
    assert_eq!(d.policy_ids, ["k8s-builds-download-corp"], "{d:?}");
    k8s.attrs.insert("namespace".to_owned(), "sandbox".to_owned());
    assert!(!p.decide(&k8s, Action::Download, &m).allowed);
}

#[test]
fn every_declared_attribute_is_accepted() {
    let p = shipped();
    let mut principal = ci("acme");
    for name in DECLARED_ATTRS {
        principal.attrs.entry(name.to_owned()).or_insert_with(|| "v".to_owned());
    }
    principal.attrs.insert("kind".to_owned(), "ci".to_owned());
    let d = p.decide(&principal, Action::Download, &Resource::module("git.corp.example/acme/api", ""));
    assert!(d.allowed, "{d:?}");
}

#[test]
fn mismatched_action_and_resource_are_denied() {
    let p = shipped();
    let d = p.decide(&user("alice", &[]), Action::Login, &Resource::module("git.corp.example/acme/lib", ""));
    assert!(!d.allowed);
    assert!(d.reason.starts_with("cannot evaluate login"), "{}", d.reason);

    let d = p.decide(&user("alice", &["developers"]), Action::Download, &Resource::Broker);
    assert!(!d.allowed);
}

#[test]
fn invalid_module_paths_are_denied() {
    let p = shipped();
    for path in
        ["git.corp.example/acme/../../evil/x", "git.corp.example//x", "/git.corp.example/x", "git.corp.example/a b", ""]
    {
        let d = p.decide(&user("alice", &["developers"]), Action::Download, &Resource::module(path, ""));
        assert!(!d.allowed, "{path}");
        assert!(d.reason.contains("invalid module path"), "{}", d.reason);
    }
}

#[test]
fn syntax_error_names_file_and_line() {
    let bad = "// second file\n\n@id(\"broken\")\npermit (principal, action, resource)\nwhen { principal. };\n";
    let files = [("a.cedar".to_owned(), shipped_text()), ("that-file.cedar".to_owned(), bad.to_owned())];
    let err = Policies::from_sources(&schema_text(), &files).expect_err("must not parse");
    assert!(matches!(err, PolicyError::Parse { .. }), "{err:?}");
    assert!(err.to_string().contains("that-file.cedar:5"), "{err}");
}

#[test]
fn undeclared_attribute_fails_validation_with_file_and_line() {
    let bad = "\n@id(\"ok\")\npermit (principal, action == Action::\"login\", resource);\n\n@id(\"uses-owner\")\npermit (\n  principal,\n  action == Action::\"download\",\n  resource\n)\nwhen { resource.owner == \"acme\" };\n";
    let files = [("a.cedar".to_owned(), shipped_text()), ("bad.cedar".to_owned(), bad.to_owned())];
    let err = Policies::from_sources(&schema_text(), &files).expect_err("must not validate");
    let PolicyError::Validate { at, policy, .. } = &err else {
        panic!("expected a validation error, got {err:?}");
    };
    assert_eq!(at, "bad.cedar:5");
    assert_eq!(policy, "uses-owner");
    let msg = err.to_string();
    assert!(msg.starts_with("bad.cedar:5: policy `uses-owner`"), "{msg}");
    assert!(msg.contains("owner"), "{msg}");
    // The exact spot of the problem is named too.
    assert!(msg.contains("bad.cedar:11"), "{msg}");
}

#[test]
fn optional_attribute_without_has_fails_validation() {
    let bad = "permit (principal, action == Action::\"download\", resource)\nwhen { principal.repository_owner == resource.host };\n";
    let err = Policies::from_sources(&schema_text(), &[("x.cedar".to_owned(), bad.to_owned())])
        .expect_err("strict validation");
    assert!(err.to_string().starts_with("x.cedar:1: policy `x.cedar:1`"), "{err}");
}

#[test]
fn schema_error_names_line() {
    let schema = "entity User;\n\nentity Module {\n  path: Strin,\n};\n";
    let err = Policies::from_sources(schema, &[]).expect_err("bad schema");
    assert!(matches!(err, PolicyError::Schema { .. }), "{err:?}");
    assert!(err.to_string().contains("gocred.cedarschema:4"), "{err}");
}

#[test]
fn ids_default_to_file_and_line_and_must_be_unique() {
    let text = "// x\npermit (principal, action == Action::\"login\", resource);\n\n  permit (principal, action == Action::\"login\", resource);\n";
    let p = Policies::from_sources(&schema_text(), &[("f.cedar".to_owned(), text.to_owned())]).expect("valid");
    assert_eq!(p.location("f.cedar:2"), Some("f.cedar:2"));
    assert_eq!(p.location("f.cedar:4"), Some("f.cedar:4"));
    let d = p.decide(&user("alice", &[]), Action::Login, &Resource::Broker);
    assert_eq!(d.policy_ids, ["f.cedar:2", "f.cedar:4"]);
    assert_eq!(d.reason, "permitted by policies f.cedar:2, f.cedar:4");

    let dup = "\n@id(\"no-push\")\nforbid (principal, action, resource);\n";
    let err = Policies::from_sources(
        &schema_text(),
        &[("a.cedar".to_owned(), shipped_text()), ("b.cedar".to_owned(), dup.to_owned())],
    )
    .expect_err("duplicate id");
    assert_eq!(err.to_string(), "b.cedar:2: policy id `no-push` is already used by the policy at a.cedar:95");
}

#[test]
fn templates_are_rejected() {
    let text = "permit (principal, action == Action::\"login\", resource);\npermit (principal == ?principal, action == Action::\"login\", resource);\n";
    let err = Policies::from_sources(&schema_text(), &[("t.cedar".to_owned(), text.to_owned())]).expect_err("template");
    assert!(matches!(err, PolicyError::Template { .. }), "{err:?}");
    assert!(err.to_string().starts_with("t.cedar:2:"), "{err}");
}

#[test]
fn load_dir_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = Policies::load_dir(dir.path()).expect_err("no schema");
    assert!(matches!(err, PolicyError::ReadFile { .. }), "{err:?}");

    let err = Policies::load_dir(&dir.path().join("missing")).expect_err("no dir");
    assert!(matches!(err, PolicyError::ReadFile { .. }), "{err:?}");

    // Only the schema: loads, denies everything.
    std::fs::write(dir.path().join(SCHEMA_FILE), schema_text()).expect("write");
    std::fs::write(dir.path().join("notes.txt"), "not a policy").expect("write");
    std::fs::write(dir.path().join(".#gocred.cedar"), "editor lock").expect("write");
    let p = Policies::load_dir(dir.path()).expect("loads");
    assert!(p.is_empty());
    assert!(!p.decide(&user("alice", &[]), Action::Login, &Resource::Broker).allowed);
}

#[test]
fn reload_keeps_old_set_on_error_and_clears_cache_on_success() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(SCHEMA_FILE), schema_text()).expect("write");
    std::fs::write(dir.path().join("gocred.cedar"), shipped_text()).expect("write");
    let engine = PolicyEngine::new(Policies::load_dir(dir.path()).expect("loads"), Some(dir.path().to_owned()));
    let alice = user("alice", &["developers"]);
    let lib = Resource::module("git.corp.example/acme/lib", "corp");
    let before = engine.decide(&alice, Action::Download, &lib);
    assert!(before.allowed);

    // A broken second file: reload fails and decisions stay as they were.
    let extra = dir.path().join("zz-extra.cedar");
    std::fs::write(
        &extra,
        "@id(\"no-alice\")\nforbid (principal == User::\"alice\", action, resource)\nwhen { resource.nope };\n",
    )
    .expect("write");
    let err = engine.reload().expect_err("broken file");
    assert!(err.to_string().starts_with("zz-extra.cedar:1:"), "{err}");
    assert_eq!(engine.decide(&alice, Action::Download, &lib), before);
    assert_eq!(engine.read().policies.len(), 11);

    // Fixed: reload succeeds, and the cached "allowed" is not served any more.
    std::fs::write(&extra, "@id(\"no-alice\")\nforbid (principal == User::\"alice\", action, resource);\n")
        .expect("write");
    assert_eq!(engine.reload().expect("reloads"), Some(12));
    assert!(engine.cache().is_empty());
    let after = engine.decide(&alice, Action::Download, &lib);
    assert!(!after.allowed);
    assert_eq!(after.policy_ids, ["no-alice"]);
    // Others are unaffected.
    assert!(engine.decide(&user("bob", &["developers"]), Action::Download, &lib).allowed);
}

#[test]
fn engine_caches_per_principal() {
    let engine = PolicyEngine::new(shipped(), None);
    let lib = Resource::module("git.corp.example/acme/lib", "corp");
    assert!(engine.decide(&user("alice", &["developers"]), Action::Download, &lib).allowed);
    // Same id, different groups: a different cache entry.
    assert!(!engine.decide(&user("alice", &[]), Action::Download, &lib).allowed);
    assert_eq!(engine.cache().len(), 2);
    // Reload without a directory is a no-op.
    assert_eq!(engine.reload().expect("no-op"), None);
    assert_eq!(engine.cache().len(), 2);
}

#[test]
fn dev_policies_let_the_user_do_everything_but_push() {
    let p = dev_policies("bob").expect("dev policies");
    let bob = user("bob", &[]);
    let any = Resource::module("github.com/whatever/x", "");
    assert!(p.decide(&bob, Action::Login, &Resource::Broker).allowed);
    assert!(p.decide(&bob, Action::Download, &any).allowed);
    assert!(p.decide(&bob, Action::Credentials, &any).allowed);
    let d = p.decide(&bob, Action::Push, &any);
    assert!(!d.allowed);
    assert_eq!(d.policy_ids, ["dev-no-push"]);
    assert!(!p.decide(&user("eve", &[]), Action::Login, &Resource::Broker).allowed);
    assert!(!p.decide(&user("eve", &[]), Action::Download, &any).allowed);

    // Names needing escapes cannot break out of the string literal.
    let odd = "o'brien \"x\" \\ é\n";
    let p = dev_policies(odd).expect("dev policies");
    assert!(p.decide(&user(odd, &[]), Action::Login, &Resource::Broker).allowed);
    assert!(!p.decide(&user("o'brien", &[]), Action::Login, &Resource::Broker).allowed);
    let injection = "x\", action, resource); permit (principal, action, resource == Module::\"";
    let p = dev_policies(injection).expect("dev policies");
    assert_eq!(p.len(), 3);
    assert!(!p.decide(&user("x", &[]), Action::Login, &Resource::Broker).allowed);
}

#[test]
fn action_and_resource_parse() {
    for a in Action::ALL {
        assert_eq!(a.as_str().parse::<Action>(), Ok(a));
    }
    assert!("delete".parse::<Action>().is_err());
    assert_eq!("broker".parse::<Resource>(), Ok(Resource::Broker));
    assert_eq!("module:git.corp.example/a/b".parse::<Resource>(), Ok(Resource::module("git.corp.example/a/b", "")));
    assert_eq!("git.corp.example/a/b".parse::<Resource>(), Ok(Resource::module("git.corp.example/a/b", "")));
    assert!("module:".parse::<Resource>().is_err());
    assert!("a/../b".parse::<Resource>().is_err());
    assert_eq!(Resource::Broker.display(), "broker");
    assert_eq!(Resource::module("a/b", "u").display(), "a/b");
}
