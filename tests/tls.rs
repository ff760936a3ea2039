//! TLS against a real lab: every lab server has a certificate from the lab's own CA and the lab
//! inventory says `verify-full`. A wrong host name, a missing root certificate and a server
//! without TLS under `require` are refused with the reason, never downgraded.

mod common;

use common::*;
use cutover::inventory::{SslMode, Tls};
use cutover::pg::{self, Endpoint, PgError, SessionSettings};

async fn ssl_in_use(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0)
}

fn refused(result: Result<tokio_postgres::Client, PgError>) -> String {
    match result {
        Ok(_) => panic!("connected, but it had to be refused"),
        Err(e @ PgError::Tls { .. }) => e.to_string(),
        Err(other) => panic!("refused for another reason: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_connects_and_bad_certificates_or_settings_are_refused() {
    let lab = lab(100).await;
    let pg1 = lab.inventory.node("pg1").unwrap().clone();
    assert_eq!(
        pg1.tls.as_ref().and_then(|t| t.sslmode),
        Some(SslMode::VerifyFull)
    );
    let settings = SessionSettings::EXECUTOR.named("cutover/tls-test");

    let verified = pg::connect(&Endpoint::maintenance(&pg1), settings)
        .await
        .expect("verify-full against the lab CA");
    assert!(ssl_in_use(&verified).await);
    let name: String = verified
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(name, "cutover/tls-test");
    let in_step = pg::in_step(
        "promote",
        pg::connect(&Endpoint::maintenance(&pg1), settings),
    )
    .await
    .unwrap();
    let name: String = in_step
        .query_one("SELECT current_setting('application_name')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        name, "cutover/promote",
        "a step's connections carry its name"
    );

    // The console follows the same settings.
    let bouncer = &lab.inventory.pgbouncers[0];
    let admin = pg::connect(
        &Endpoint::pgbouncer_admin(bouncer),
        SessionSettings::PGBOUNCER,
    )
    .await
    .expect("verify-full to the pgbouncer console");
    pg::simple_rows(&admin, "pgbouncer", "SHOW VERSION")
        .await
        .unwrap();

    // The certificate names 127.0.0.1; `localhost` reaches the same server under another name.
    let mut wrong_name = Endpoint::maintenance(&pg1);
    wrong_name.address = "localhost".into();
    let reason = refused(pg::connect(&wrong_name, settings).await);
    assert!(reason.contains("sslmode verify-full"), "{reason}");
    let lower = reason.to_lowercase();
    assert!(
        lower.contains("not valid for name") || lower.contains("notvalidforname"),
        "{reason}"
    );
    // verify-ca checks the chain only, so the same name passes there.
    wrong_name.tls.sslmode = Some(SslMode::VerifyCa);
    let chain_only = pg::connect(&wrong_name, settings).await.expect("verify-ca");
    assert!(ssl_in_use(&chain_only).await);

    let mut missing_root = Endpoint::maintenance(&pg1);
    missing_root.tls.sslrootcert =
        Some(lab.config.dir.join("nowhere/ca.crt").display().to_string());
    let reason = refused(pg::connect(&missing_root, settings).await);
    assert!(
        reason.contains("root certificate file") && reason.contains("does not exist"),
        "{reason}"
    );

    // A root certificate that did not sign the server's: the chain does not verify.
    let other_dir = lab.config.dir.join("other-ca");
    std::fs::create_dir_all(&other_dir).unwrap();
    cutover::lab::certs::issue_server_cert(
        &other_dir,
        "other",
        &other_dir.join("x.crt"),
        &other_dir.join("x.key"),
    )
    .unwrap();
    let mut other_root = Endpoint::maintenance(&pg1);
    other_root.tls.sslrootcert = Some(
        cutover::lab::certs::ca_cert(&other_dir)
            .display()
            .to_string(),
    );
    // Same subject, other key: the signature does not verify.
    let reason = refused(pg::connect(&other_root, settings).await);
    assert!(reason.contains("invalid peer certificate"), "{reason}");

    // A server without TLS: refused under require, plain under prefer.
    for sql in ["ALTER SYSTEM SET ssl = off", "SELECT pg_reload_conf()"] {
        verified.simple_query(sql).await.unwrap();
    }
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let mut require = Endpoint::maintenance(&pg1);
    require.tls = Tls {
        sslmode: Some(SslMode::Require),
        ..Tls::default()
    };
    let reason = refused(pg::connect(&require, settings).await);
    assert!(reason.contains("sslmode require"), "{reason}");
    assert!(reason.to_lowercase().contains("tls"), "{reason}");
    let reason = refused(pg::connect(&Endpoint::maintenance(&pg1), settings).await);
    assert!(reason.contains("sslmode verify-full"), "{reason}");
    let mut prefer = require.clone();
    prefer.tls.sslmode = Some(SslMode::Prefer);
    let plain = pg::connect(&prefer, settings).await.expect("prefer");
    assert!(!ssl_in_use(&plain).await);
    for sql in ["ALTER SYSTEM RESET ssl", "SELECT pg_reload_conf()"] {
        plain.simple_query(sql).await.unwrap();
    }
}

#[test]
fn the_lab_inventory_has_no_tls_warnings_and_a_remote_one_without_a_root_does() {
    let lab = cutover::inventory::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/inventories/lab.yaml"
    )))
    .unwrap();
    let env = cutover::tls::TlsEnv::default();
    assert!(cutover::tls::warnings_with(&lab, &env).is_empty());
    let example = cutover::inventory::load(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/inventories/commcare-example.yaml"
    )))
    .unwrap();
    let warnings = cutover::tls::warnings_with(&example, &env);
    assert!(
        warnings
            .iter()
            .any(|w| w.starts_with("connections to pg1 are not verified")),
        "{warnings:?}"
    );
    let with_root = cutover::tls::TlsEnv {
        sslrootcert: Some("/etc/cutover/ca.crt".into()),
        ..env
    };
    assert!(cutover::tls::warnings_with(&example, &with_root).is_empty());
}
