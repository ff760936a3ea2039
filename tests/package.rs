//! The Debian package: `scripts/package` packs the binary this test run built (debug, so CI
//! never waits for a release build), the package is unpacked into a clean directory, and the
//! installed binary runs from there.

use std::path::Path;
use std::process::Command;

#[test]
fn the_package_installs_into_a_clean_root_and_runs() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = tempfile::tempdir().unwrap();
    let built = Command::new(repo.join("scripts/package"))
        .arg("--binary")
        .arg(env!("CARGO_BIN_EXE_cutover"))
        .arg("--out")
        .arg(out.path())
        .arg("--fast")
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "{}",
        String::from_utf8_lossy(&built.stderr)
    );
    let deb = String::from_utf8(built.stdout).unwrap().trim().to_string();
    assert!(deb.ends_with(".deb"), "{deb}");

    let info = Command::new("dpkg-deb")
        .args(["-f", &deb])
        .output()
        .unwrap();
    let control = String::from_utf8_lossy(&info.stdout);
    assert!(control.contains("Package: cutover"), "{control}");
    assert!(
        control.contains(&format!("Version: {}", env!("CARGO_PKG_VERSION"))),
        "{control}"
    );

    let root = tempfile::tempdir().unwrap();
    let unpacked = Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(root.path())
        .status()
        .unwrap();
    assert!(unpacked.success());
    for file in [
        "usr/bin/cutover",
        "usr/share/man/man1/cutover.1.gz",
        "usr/share/bash-completion/completions/cutover",
        "usr/share/zsh/vendor-completions/_cutover",
        "usr/share/fish/vendor_completions.d/cutover.fish",
        "usr/share/doc/cutover/examples/commcare-example.yaml",
    ] {
        assert!(root.path().join(file).is_file(), "{file} is installed");
    }
    let bash = std::fs::read_to_string(
        root.path()
            .join("usr/share/bash-completion/completions/cutover"),
    )
    .unwrap();
    assert!(
        bash.contains("shard-split"),
        "runbooks are in the completions"
    );

    let cutover = root.path().join("usr/bin/cutover");
    let version = Command::new(&cutover).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("cutover {}", env!("CARGO_PKG_VERSION"))
    );
    let example = root
        .path()
        .join("usr/share/doc/cutover/examples/commcare-example.yaml");
    let check = Command::new(&cutover)
        .arg("check")
        .arg(&example)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    assert!(String::from_utf8_lossy(&check.stdout).contains(": ok ("));
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("are not verified"),
        "the example has no root certificate: check warns"
    );
}
