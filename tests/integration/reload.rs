//! SIGHUP to the real binary: the config file is reread and what it changes
//! goes into force, or the running configuration stays (invalid file, or a
//! setting that needs a restart), each outcome counted.

use std::time::{Duration, Instant};

use velro_authz::testkit::Check;
use velro_authz::testkit::procs::TestDb;
use velro_authz::testkit::sidecar::{Sidecar, SidecarOptions, migrate};

const BIN: &str = env!("CARGO_BIN_EXE_velro-authz");

/// Waits (≤ 20 s) until the sidecar has counted `n` reloads with `result`.
async fn reloads_reach(sidecar: &Sidecar, result: &str, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = sidecar
            .metrics()
            .await
            .sum("velro_authz_config_reloads_total", &[("result", result)]);
        if got == Some(n) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "config_reloads_total{{result={result}}} = {got:?}, want {n}\n{}",
            sidecar.logs(20)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn sighup_reloads_the_config_file_or_keeps_the_running_one() {
    let db = TestDb::from_env("reload_sighup").await;
    migrate(BIN, &db.url);
    let options = SidecarOptions::new(BIN, "reload", &db.url);
    let sidecar = Sidecar::start(&options).await;
    let within = Duration::from_secs(5);
    // No credentials on a resource route: 401, until dry run is on.
    let check = Check::new(
        "GET",
        "/api/v1/generations/40000000-0000-4000-8000-000000000001",
    );
    let status =
        |v: Result<velro_authz::testkit::Verdict, tonic::Status>| v.expect("answered").status;
    assert_eq!(status(sidecar.check(&check, within).await), 401);
    reloads_reach(&sidecar, "applied", 0.0).await;

    let dry_run = options
        .yaml()
        .replace("decision:\n", "decision:\n  dry_run: true\n");
    std::fs::write(sidecar.config_path(), &dry_run).expect("write config");
    sidecar.hangup();
    reloads_reach(&sidecar, "applied", 1.0).await;
    assert_eq!(
        status(sidecar.check(&check, within).await),
        200,
        "dry run after SIGHUP"
    );

    // A broken file: the running configuration stays, the process lives on.
    std::fs::write(sidecar.config_path(), "decision: [").expect("break config");
    sidecar.hangup();
    reloads_reach(&sidecar, "error", 1.0).await;
    assert_eq!(status(sidecar.check(&check, within).await), 200);

    // A restart-only setting: refused whole, dry run stays as it was.
    let restart = format!("{}cache:\n  max_facts: 5\n", options.yaml());
    std::fs::write(sidecar.config_path(), restart).expect("write config");
    sidecar.hangup();
    reloads_reach(&sidecar, "restart_required", 1.0).await;
    assert_eq!(status(sidecar.check(&check, within).await), 200);
    let logs = sidecar.logs(200);
    assert!(
        logs.contains("configuration reload refused") && logs.contains("cache"),
        "{logs}"
    );
}
