//! Unit tests of the whole pipeline: TOML + env + flags → [`Config`] or a [`ConfigError`]
//! naming the key.

use super::*;
use crate::proto::rules::secure_url;

const MIN: &str = "[server]\nlisten = \"127.0.0.1:0\"\n[secrets]\nbackend = \"file\"\nfile = \"s.enc\"\n";
/// What an enabled webhook needs besides itself: a Kubernetes issuer and a goproxy upstream.
const K8S_AND_GOPROXY: &str = "[[oidc.issuers]]\nname = \"cluster\"\nissuer = \"https://k.example\"\nkind = \"kubernetes\"\naudiences = [\"gocred\"]\n\
                               [[upstreams]]\nname = \"mods\"\nkind = \"goproxy\"\nmodules = [\"a.b\"]\nurl = \"https://127.0.0.1:2\"\n";

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    Config::from_toml(
        text,
        Some(Path::new("/etc/gocred/broker.toml")),
        env.iter().map(|(a, b)| (a.to_string(), b.to_string())),
        &Overrides::default(),
    )
}

#[test]
fn minimal_file_config_gets_defaults() {
    let c = parse(MIN, &[]).unwrap();
    assert_eq!(c.tokens.ttl, Duration::from_secs(900));
    assert!(c.tokens.require_proof);
    match c.secrets.backend {
        BackendConfig::File(f) => assert_eq!(f.path, Path::new("/etc/gocred/s.enc")),
        _ => panic!("expected file backend"),
    }
}

#[test]
fn connection_and_rate_limit_settings_have_defaults_and_are_validated() {
    let c = parse(MIN, &[]).unwrap();
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(10));
    assert_eq!(c.server.idle_timeout, Duration::from_secs(60));
    assert_eq!(c.server.limits.login_burst, 60);
    let text = format!(
        "{}\nheader_read_timeout = \"2s\"\nmax_connections_per_client = 5\ntrusted_proxies = [\"10.0.0.0/8\", \"fd00::/8\"]\n{}[limits]\nlogin_per_second = 2\nrequests_burst = 7\n",
        "[server]\nlisten = \"127.0.0.1:0\"", "[secrets]\nbackend = \"file\"\nfile = \"s.enc\"\n"
    );
    let c = parse(&text, &[("GOCRED_SERVER__MAX_CONNECTIONS", "99"), ("GOCRED_LIMITS__LOGIN_BURST", "4")]).unwrap();
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(2));
    assert_eq!((c.server.max_connections, c.server.max_connections_per_client), (99, 5));
    assert_eq!(c.server.trusted_proxies.len(), 2);
    assert_eq!((c.server.limits.login_per_second, c.server.limits.login_burst), (2.0, 4));
    assert_eq!(c.server.limits.requests_burst, 7);
    let e = parse(&text.replace("10.0.0.0/8", "10.0.0.0/40"), &[]).unwrap_err().to_string();
    assert!(e.contains("server.trusted_proxies") && e.contains("0..=32"), "{e}");
    let e = parse(&text, &[("GOCRED_LIMITS__LOGIN_BURST", "many")]).unwrap_err().to_string();
    assert!(e.contains("limits.login_burst") && e.contains("GOCRED_LIMITS__LOGIN_BURST"), "{e}");
    let e = parse(&text, &[("GOCRED_SERVER__IDLE_TIMEOUT", "0s")]).unwrap_err().to_string();
    assert!(e.contains("server.idle_timeout"), "{e}");
    let e = parse(&text, &[("GOCRED_LIMITS__LOGIN_PER_SECOND", "-1")]).unwrap_err().to_string();
    assert!(e.contains("limits.login_per_second"), "{e}");
}

#[test]
fn unknown_key_is_named() {
    let e = parse(&format!("{MIN}[tokens]\nttl = \"5m\"\nlifetime = \"1h\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("tokens.lifetime"), "{e}");
    assert!(e.contains("/etc/gocred/broker.toml"), "{e}");
    let e = parse(&format!("{MIN}[bogus]\nx = 1\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("`bogus`"), "{e}");
}

#[test]
fn wrong_type_is_named() {
    let e = parse(&format!("{MIN}[tokens]\nrequire_proof = \"yes\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("tokens.require_proof"), "{e}");
    let e = parse(&MIN.replace("\"127.0.0.1:0\"", "8443"), &[]).unwrap_err().to_string();
    assert!(e.contains("server.listen"), "{e}");
}

#[test]
fn missing_required_key_is_named() {
    let e = parse("[server]\n[secrets]\nbackend = \"file\"\nfile = \"x\"\n", &[]).unwrap_err().to_string();
    assert!(e.contains("server.listen") && e.contains("missing"), "{e}");
    let e = parse("[server]\nlisten = \"127.0.0.1:1\"\n[secrets]\nbackend = \"vault\"\n", &[]).unwrap_err().to_string();
    assert!(e.contains("`vault`"), "{e}");
    let v = "[server]\nlisten = \"127.0.0.1:1\"\n[secrets]\nbackend = \"vault\"\n[vault]\naddress = \"http://127.0.0.1:8200\"\n[vault.auth]\nmethod = \"approle\"\nsecret_id = \"s\"\n";
    let e = parse(v, &[]).unwrap_err().to_string();
    assert!(e.contains("vault.auth.role_id"), "{e}");
}

#[test]
fn env_overrides_file_and_errors_name_the_variable() {
    let c = parse(
        MIN,
        &[
            ("GOCRED_SERVER__LISTEN", "127.0.0.1:9999"),
            ("GOCRED_TOKENS__REQUIRE_PROOF", "false"),
            ("GOCRED_FILE_KEY", "ignored"),
        ],
    )
    .unwrap();
    assert_eq!(c.server.listen.port(), 9999);
    assert!(!c.tokens.require_proof);
    let e = parse(MIN, &[("GOCRED_TOKENS__LIFETIME", "1h")]).unwrap_err().to_string();
    assert!(e.contains("env GOCRED_TOKENS__LIFETIME") && e.contains("tokens.lifetime"), "{e}");
    let e = parse(MIN, &[("GOCRED_TOKENS__TTL", "soon")]).unwrap_err().to_string();
    assert!(e.contains("tokens.ttl"), "{e}");
}

#[test]
fn upstreams_validate_and_env_indexes_arrays() {
    let text = format!(
        "{MIN}[[upstreams]]\nname = \"corp\"\nkind = \"git\"\nhosts = [\"git.corp.test\"]\nurl = \"https://127.0.0.1:1/\"\ncredentials = \"vault:gitcreds/corp\"\n"
    );
    let c = parse(&text, &[("GOCRED_UPSTREAMS__0__URL", "https://10.0.0.1:2")]).unwrap();
    assert_eq!(c.upstreams[0].url, "https://10.0.0.1:2");
    assert_eq!(c.upstreams[0].credentials.as_deref(), Some("gitcreds/corp"));
    assert!(c.upstreams[0].serves("git.corp.test/acme/lib"));
    assert!(!c.upstreams[0].serves("git.corp.testevil/acme"));
    let e = parse(&text.replace("hosts = [\"git.corp.test\"]\n", ""), &[]).unwrap_err().to_string();
    assert!(e.contains("upstreams[0].hosts"), "{e}");
    let e = parse(&text.replace("vault:gitcreds/corp", "gitcreds"), &[]).unwrap_err().to_string();
    assert!(e.contains("upstreams[0].credentials"), "{e}");
}

#[test]
fn flags_override_env() {
    let c = Config::from_toml(
        MIN,
        None,
        [("GOCRED_SERVER__LISTEN".to_string(), "127.0.0.1:1".to_string())],
        &Overrides { listen: Some("127.0.0.1:2".into()), ..Default::default() },
    )
    .unwrap();
    assert_eq!(c.server.listen.port(), 2);
}

#[test]
fn secrets_never_in_debug() {
    let v = "[server]\nlisten = \"127.0.0.1:1\"\n[secrets]\nbackend = \"vault\"\n[vault]\naddress = \"http://127.0.0.1:8200\"\n[vault.auth]\nmethod = \"approle\"\nrole_id = \"r\"\nsecret_id = \"hunter2-secret\"\n";
    let c = parse(v, &[]).unwrap();
    assert!(!format!("{c:?}").contains("hunter2"));
}

#[test]
fn dev_refuses_non_loopback() {
    let e = Config::dev(
        Path::new("/tmp/x"),
        &DevIdentity::default(),
        &Overrides { listen: Some("0.0.0.0:8443".into()), ..Default::default() },
    )
    .unwrap_err();
    assert!(e.to_string().contains("loopback"));
}

#[test]
fn vault_kubernetes_and_jwt_auth() {
    let base = "[server]\nlisten = \"127.0.0.1:1\"\n[secrets]\nbackend = \"vault\"\n[vault]\naddress = \"http://127.0.0.1:8200\"\n[vault.auth]\n";
    let c = parse(&format!("{base}method = \"kubernetes\"\nrole = \"gocred\"\n"), &[]).unwrap();
    let BackendConfig::Vault(v) = c.secrets.backend else { panic!("vault") };
    match v.auth {
        VaultAuth::Kubernetes { mount, role, jwt_file } => {
            assert_eq!((mount.as_str(), role.as_str()), ("kubernetes", "gocred"));
            assert_eq!(jwt_file, Path::new("/var/run/secrets/kubernetes.io/serviceaccount/token"));
        }
        other => panic!("{other:?}"),
    }
    let e = parse(&format!("{base}method = \"kubernetes\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("vault.auth.role") && e.contains("missing"), "{e}");
    let c = parse(&format!("{base}method = \"jwt\"\nrole = \"r\"\njwt_file = \"tok\"\n"), &[]).unwrap();
    let BackendConfig::Vault(v) = c.secrets.backend else { panic!("vault") };
    match v.auth {
        VaultAuth::Jwt { mount, role, jwt_file } => {
            assert_eq!((mount.as_str(), role.as_deref()), ("jwt", Some("r")));
            assert_eq!(jwt_file, Path::new("/etc/gocred/tok"), "relative to the config file");
        }
        other => panic!("{other:?}"),
    }
    let e = parse(&format!("{base}method = \"jwt\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("vault.auth.jwt_file"), "{e}");
    let e =
        parse(&format!("{base}method = \"jwt\"\njwt_file = \"t\"\nrole_id = \"x\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("vault.auth.role_id") && e.contains("approle"), "{e}");
    let e = parse(&format!("{base}method = \"token\"\ntoken = \"t\"\nrole = \"x\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("vault.auth.role") && e.contains("kubernetes"), "{e}");
    let e = parse(&format!("{base}method = \"ldap\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("vault.auth.method"), "{e}");
}

#[test]
fn oidc_issuers_validation_prefixes_and_transport() {
    assert!(secure_url("https://sso.example"));
    assert!(secure_url("http://127.0.0.1:8080/x") && secure_url("http://localhost:1") && secure_url("http://[::1]:9"));
    assert!(
        !secure_url("http://sso.example") && !secure_url("http://127.0.0.1.evil.example") && !secure_url("ftp://x")
    );
    let issuer = |extra: &str| {
        format!(
            "{MIN}[[oidc.issuers]]\nname = \"sso\"\nissuer = \"https://sso.example\"\nkind = \"human\"\naudiences = [\"cli\"]\nclient_id = \"cli\"\n{extra}"
        )
    };
    let c = parse(&issuer(""), &[]).unwrap();
    let i = &c.oidc[0];
    assert_eq!((i.username_prefix.as_str(), i.groups_prefix.as_str()), ("sso:", "sso:"));
    assert_eq!(i.groups_claim.as_deref(), Some("groups"));
    assert_eq!(i.discovery_url, "https://sso.example/.well-known/openid-configuration");
    let e = parse(&issuer("").replace("https://sso.example", "http://sso.example"), &[]).unwrap_err().to_string();
    assert!(e.contains("oidc.issuers[0].issuer") && e.contains("https"), "{e}");
    let e = parse(&issuer("").replace("client_id = \"cli\"\n", ""), &[]).unwrap_err().to_string();
    assert!(e.contains("oidc.issuers[0].client_id"), "{e}");
    let e = parse(&issuer("claims = { colour = \"c\" }\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("claims.colour") && e.contains("unknown principal attribute"), "{e}");
    // Two human issuers may not both drop the prefix.
    let two = format!(
        "{}username_prefix = \"\"\n[[oidc.issuers]]\nname = \"b\"\nissuer = \"https://b.example\"\nkind = \"human\"\naudiences = [\"cli\"]\nclient_id = \"cli\"\nusername_prefix = \"\"\n",
        issuer("")
    );
    let e = parse(&two, &[]).unwrap_err().to_string();
    assert!(e.contains("oidc.issuers[1].username_prefix"), "{e}");
    // Workloads: no user prefix, the kind's default claims.
    let k = format!(
        "{MIN}[[oidc.issuers]]\nname = \"cluster\"\nissuer = \"https://k.example\"\nkind = \"kubernetes\"\naudiences = [\"gocred\"]\n"
    );
    let c = parse(&k, &[]).unwrap();
    assert_eq!(c.oidc[0].username_prefix, "");
    assert_eq!(c.oidc[0].claims["namespace"], "/kubernetes.io/namespace");
}

#[test]
fn webhook_goproxy_mode_needs_a_private_upstream_of_either_kind() {
    let issuer = "[[oidc.issuers]]\nname = \"cluster\"\nissuer = \"https://k.example\"\nkind = \"kubernetes\"\naudiences = [\"gocred\"]\n";
    let hook =
        "[webhook]\nenabled = true\nimage = \"i:1\"\nbroker_url = \"https://b\"\nmodules = [\"git.corp.test/*\"]\n";
    let public =
        "[[upstreams]]\nname = \"public\"\nkind = \"goproxy\"\nurl = \"https://proxy.golang.org\"\npublic = true\n";
    let git =
        "[[upstreams]]\nname = \"g\"\nkind = \"git\"\nhosts = [\"git.corp.test\"]\nurl = \"https://git.corp.test\"\n";
    // Only a public upstream: nothing would serve the private modules.
    let e = parse(&format!("{MIN}{issuer}{public}{hook}"), &[]).unwrap_err().to_string();
    assert!(e.contains("webhook.mode") && e.contains("kind = \"goproxy\" or \"git\""), "{e}");
    // A git upstream is enough (/mod/ builds its modules); with the public one, pods need nothing
    // after the broker.
    let w = parse(&format!("{MIN}{issuer}{git}{public}{hook}"), &[]).unwrap().webhook.unwrap();
    assert!(w.has_goproxy);
    assert_eq!(w.goproxy_fallback, "off");
}

#[test]
fn webhook_section_defaults_validation_and_env() {
    let up = "[[upstreams]]\nname = \"corp\"\nkind = \"git\"\nhosts = [\"git.corp.test\"]\nurl = \"https://127.0.0.1:1\"\n\
              [[upstreams]]\nname = \"mods\"\nkind = \"goproxy\"\nmodules = [\"mods.corp.test/team\", \"git.corp.test\"]\nurl = \"https://127.0.0.1:2\"\n\
              [[oidc.issuers]]\nname = \"cluster\"\nissuer = \"https://k.example\"\nkind = \"kubernetes\"\naudiences = [\"gocred\"]\n";
    let base = format!(
        "{MIN}{up}[webhook]\nimage = \"ghcr.io/gocred/gocred:0.1.0\"\nbroker_url = \"https://gocred.gocred.svc:8443/\"\n"
    );
    // Disabled (the default): no settings, but the keys are still checked.
    assert!(parse(&base, &[]).unwrap().webhook.is_none());
    let e = parse(&format!("{base}mode = \"svn\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("webhook.mode") && e.contains("svn"), "{e}");
    let e = parse(&format!("{base}colour = \"blue\"\n"), &[]).unwrap_err().to_string();
    assert!(e.contains("webhook.colour"), "{e}");

    let c = parse(&base, &[("GOCRED_WEBHOOK__ENABLED", "true")]).unwrap();
    let w = c.webhook.unwrap();
    assert_eq!(w.broker_url, "https://gocred.gocred.svc:8443");
    assert_eq!(w.modules, ["git.corp.test", "mods.corp.test/team"], "upstream modules, deduplicated");
    assert_eq!(w.mode, webhook::InjectMode::Goproxy);
    assert_eq!(w.goproxy_fallback, "https://proxy.golang.org,direct");
    assert_eq!((w.token_audience.as_str(), w.token_expiration_seconds), ("gocred", 600));
    assert_eq!(w.on_malformed, webhook::OnMalformed::Deny);
    assert!(w.ca_pem.is_none() && w.init_resources.is_none());

    let on = format!("{base}enabled = true\n");
    let c = parse(
        &format!(
            "{on}modules = [\"git.corp.test/*\"]\nmode = \"git\"\ngoproxy_fallback = \"off\"\ntoken_audience = \"gocred\"\n\
             token_expiration = \"1h\"\non_malformed = \"allow\"\ninit_resources = \"cpu=50m,memory=32Mi\"\n"
        ),
        &[],
    )
    .unwrap();
    let w = c.webhook.unwrap();
    assert_eq!((w.modules.as_slice(), w.mode), (&["git.corp.test/*".to_string()][..], webhook::InjectMode::Git));
    assert_eq!((w.goproxy_fallback.as_str(), w.token_audience.as_str()), ("off", "gocred"));
    assert_eq!(w.token_expiration_seconds, 3600);
    assert_eq!(w.on_malformed, webhook::OnMalformed::Allow);
    assert_eq!(w.init_resources.unwrap()["memory"].0, "32Mi");

    for (extra, key) in [
        ("token_expiration = \"5m\"\n", "webhook.token_expiration"),
        ("modules = [\"corp\"]\n", "webhook.modules"),
        ("modules = []\n", "webhook.modules"),
        ("on_malformed = \"ignore\"\n", "webhook.on_malformed"),
        ("init_resources = \"cpu=fast\"\n", "webhook.init_resources"),
        ("goproxy_fallback = \"proxy.golang.org\"\n", "webhook.goproxy_fallback"),
        ("ca_file = \"missing-ca.pem\"\n", "webhook.ca_file"),
    ] {
        let e = parse(&format!("{on}{extra}"), &[]).unwrap_err().to_string();
        assert!(e.contains(key), "{extra}: {e}");
    }
    let e = parse(&on.replace("https://gocred.gocred.svc:8443/", "http://gocred:8080"), &[]).unwrap_err().to_string();
    assert!(e.contains("webhook.broker_url") && e.contains("https://"), "{e}");
    let e = parse(&on.replace("image = \"ghcr.io/gocred/gocred:0.1.0\"\n", ""), &[]).unwrap_err().to_string();
    assert!(e.contains("webhook.image") && e.contains("missing"), "{e}");
    // broker_url defaults to server.public_url; modules are required without upstreams.
    let no_url = format!("{MIN}[webhook]\nenabled = true\nimage = \"i:1\"\nmodules = [\"git.corp.test/*\"]\n");
    let e = parse(&no_url, &[]).unwrap_err().to_string();
    assert!(e.contains("webhook.broker_url"), "{e}");
    let with_url = no_url.replace("[server]\n", "[server]\npublic_url = \"https://gocred.corp.test\"\n");
    let e = parse(&with_url, &[]).unwrap_err().to_string();
    assert!(e.contains("webhook.enabled") && e.contains("kind = \"kubernetes\""), "{e}");
    let with_issuer = with_url.replace("[webhook]", &format!("{K8S_AND_GOPROXY}[webhook]"));
    // goproxy mode without a goproxy upstream: private paths would fall through to public proxies.
    let only_issuer = with_issuer.split("[[upstreams]]").next().unwrap().to_string()
        + "[webhook]"
        + with_issuer.split("[webhook]").nth(1).unwrap();
    let e = parse(&only_issuer, &[]).unwrap_err().to_string();
    assert!(e.contains("webhook.mode") && e.contains("kind = \"goproxy\" or \"git\""), "{e}");
    let c = parse(&with_issuer, &[]).unwrap();
    assert_eq!(c.webhook.unwrap().broker_url, "https://gocred.corp.test");
    let e = parse(&format!("{MIN}[webhook]\nenabled = true\nimage = \"i:1\"\nbroker_url = \"https://b\"\n"), &[])
        .unwrap_err()
        .to_string();
    assert!(e.contains("webhook.modules"), "{e}");
}

#[test]
fn webhook_ca_file_is_read_and_must_hold_only_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    std::fs::write(dir.path().join("ca.pem"), pem).unwrap();
    std::fs::write(
        dir.path().join("key.pem"),
        format!("{pem}-----BEGIN PRIVATE KEY-----\nx\n-----END PRIVATE KEY-----\n"),
    )
    .unwrap();
    let cfg = dir.path().join("broker.toml");
    let text = |ca: &str| {
        format!(
            "{MIN}{K8S_AND_GOPROXY}[webhook]\nenabled = true\nimage = \"i:1\"\nbroker_url = \"https://b\"\nmodules = [\"a.b/*\"]\nca_file = \"{ca}\"\n"
        )
    };
    std::fs::write(&cfg, text("ca.pem")).unwrap();
    let c = Config::load(&cfg, Vec::new(), &Overrides::default()).unwrap();
    assert_eq!(c.webhook.unwrap().ca_pem.as_deref(), Some(pem));
    std::fs::write(&cfg, text("key.pem")).unwrap();
    let e = Config::load(&cfg, Vec::new(), &Overrides::default()).unwrap_err().to_string();
    assert!(e.contains("webhook.ca_file") && e.contains("private key"), "{e}");
}

#[test]
fn example_config_is_valid() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/broker.toml");
    Config::load(&p, Vec::new(), &Overrides::default()).unwrap();
}

#[test]
fn a_public_upstream_is_one_goproxy_without_credentials_and_makes_the_webhook_default_off() {
    let public =
        "[[upstreams]]\nname = \"public\"\nkind = \"goproxy\"\nurl = \"https://proxy.golang.org\"\npublic = true\n";
    let c = parse(&format!("{MIN}{public}"), &[]).unwrap();
    assert!(c.upstreams[0].public && c.upstreams[0].modules.is_empty());
    for (bad, why) in [
        (format!("{public}credentials = \"vault:x\"\n"), "with credentials"),
        (format!("{public}{}", public.replace("name = \"public\"", "name = \"public2\"")), "two public"),
        ("[[upstreams]]\nname = \"g\"\nkind = \"git\"\nhosts = [\"h.example\"]\nurl = \"https://h.example\"\npublic = true\n".into(), "git"),
    ] {
        let e = parse(&format!("{MIN}{bad}"), &[]).unwrap_err().to_string();
        assert!(e.contains(".public") && e.contains("only one upstream may be public"), "{why}: {e}");
    }
    let hook = "[[oidc.issuers]]\nname = \"cluster\"\nissuer = \"https://k.example\"\nkind = \"kubernetes\"\naudiences = [\"gocred\"]\n\
                [[upstreams]]\nname = \"mods\"\nkind = \"goproxy\"\nmodules = [\"a.b\"]\nurl = \"https://127.0.0.1:2\"\n\
                [webhook]\nenabled = true\nimage = \"i:1\"\nbroker_url = \"https://b.example\"\n";
    let c = parse(&format!("{MIN}{public}{hook}"), &[]).unwrap();
    assert_eq!(c.webhook.unwrap().goproxy_fallback, "off");
}

#[test]
fn store_section_defaults_and_validation() {
    let c = parse(MIN, &[]).unwrap();
    assert_eq!(c.store.dir, Path::new("/etc/gocred/store"));
    assert_eq!(c.store.backend, StoreBackend::Dir);
    assert_eq!(c.store.max_size, 10 << 30);
    assert_eq!(c.store.list_ttl, Duration::from_secs(60));
    let s3 = format!(
        "{MIN}[store]\nmax_size = \"512MiB\"\nlist_ttl = \"5s\"\n[store.s3]\nbucket = \"mods\"\nendpoint = \"http://127.0.0.1:9000\"\nallow_http = true\n"
    );
    let c = parse(&s3, &[("GOCRED_STORE__S3__PREFIX", "prod/")]).unwrap();
    assert_eq!(c.store.max_size, 512 << 20);
    match &c.store.backend {
        StoreBackend::S3(s) => {
            assert_eq!((s.bucket.as_str(), s.prefix.as_str(), s.region.as_str()), ("mods", "prod", "us-east-1"))
        }
        other => panic!("{other:?}"),
    }
    for (bad, key) in [
        ("[store]\nmax_size = \"lots\"\n", "store.max_size"),
        ("[store]\nbackend = \"tape\"\n", "store.backend"),
        ("[store]\nbackend = \"s3\"\n", "store.s3"),
        ("[store.s3]\nbucket = \"b\"\nendpoint = \"http://x:1\"\n", "store.s3.endpoint"),
        ("[store.s3]\nbucket = \"b\"\ncredentials = \"AKIA...\"\n", "store.s3.credentials"),
        ("[store]\nlist_ttl = \"soon\"\n", "store.list_ttl"),
    ] {
        let e = parse(&format!("{MIN}{bad}"), &[]).unwrap_err().to_string();
        assert!(e.contains(key), "{bad}: {e}");
    }
    assert!(
        !parse(&format!("{MIN}[store.s3]\nbucket = \"b\"\ncredentials = \"AKIA...\"\n"), &[])
            .unwrap_err()
            .to_string()
            .contains("AKIA")
    );
}

#[test]
fn mirrors_resolve_in_order_are_never_routed_and_bad_ones_are_named() {
    let git = |name: &str, extra: &str| {
        format!(
            "[[upstreams]]\nname = \"{name}\"\nkind = \"git\"\nhosts = [\"corp.test\"]\nurl = \"https://{name}.example\"\n{extra}"
        )
    };
    let athens = "[[upstreams]]\nname = \"athens\"\nkind = \"goproxy\"\nurl = \"https://athens.example\"\n";
    let text = format!(
        "{MIN}{}{}{athens}",
        git("primary", "mirrors = [\"replica\", \"athens\"]\nretries = 3\ndeadline = \"20s\"\n"),
        git("replica", "")
    );
    let c = parse(&text, &[]).unwrap();
    assert_eq!(c.upstreams[0].mirrors, [1, 2]);
    assert_eq!((c.upstreams[0].retries, c.upstreams[0].deadline), (3, std::time::Duration::from_secs(20)));
    assert_eq!(c.upstreams[1].mirror_of.as_deref(), Some("primary"));
    assert_eq!(c.upstreams[2].modules, ["corp.test"], "a mirror without modules serves its primary's");
    assert!(!c.upstreams[2].routable() && c.upstreams[0].routable());
    assert_eq!(crate::proxy::route::git_upstream(&c.upstreams, "corp.test"), Some(0));
    let t = crate::proxy::route::resolve_mod(&c.upstreams, "corp.test/a/b/@v/list", None).unwrap();
    assert_eq!(t.upstream, 0, "the goproxy mirror claims the path but is never routed to");
    for (bad, want) in [
        (git("p", "mirrors = [\"nope\"]\n"), "not the name of an upstream"),
        (git("p", "mirrors = [\"p\"]\n"), "its own mirror"),
        (format!("{}{}{}", git("p", "mirrors = [\"q\"]\n"), git("q", "mirrors = [\"r\"]\n"), git("r", "")), "chained"),
        (
            format!(
                "{}{}",
                athens.replace("athens.example\"\n", "athens.example\"\nmodules = [\"x.test\"]\nmirrors = [\"g\"]\n"),
                git("g", "")
            ),
            "must be module proxies",
        ),
        (git("p", "retries = 11\n"), "more than 10"),
    ] {
        let e = parse(&format!("{MIN}{bad}"), &[]).unwrap_err().to_string();
        assert!(e.contains(want), "{want}: {e}");
    }
}

#[test]
fn upstream_durations_are_bounded_and_credential_ttl_defaults_to_five_minutes() {
    let up = |extra: &str| {
        format!(
            "{MIN}[[upstreams]]\nname = \"g\"\nkind = \"git\"\nhosts = [\"corp.test\"]\nurl = \"https://g.example\"\n{extra}"
        )
    };
    let c = parse(&up("credential_ttl = \"30s\"\n"), &[]).unwrap();
    assert_eq!(c.upstreams[0].credential_ttl, std::time::Duration::from_secs(30));
    assert_eq!(parse(&up(""), &[]).unwrap().upstreams[0].credential_ttl, std::time::Duration::from_secs(300));
    for (bad, key) in [
        ("deadline = \"2h\"\n", "deadline"),
        ("timeout = \"0s\"\n", "timeout"),
        ("credential_ttl = \"500ms\"\n", "credential_ttl"),
        ("credential_ttl = \"2d\"\n", "credential_ttl"),
    ] {
        let e = parse(&up(bad), &[]).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains("is not between 1s and"), "{bad}: {e}");
    }
}
