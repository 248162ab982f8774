//! `gantry trust`: where the local CA is, its fingerprint and expiry, made
//! when missing and the same on every later call; never the key.

use gantry_testkit::TestProject;

fn fingerprint_of(pem_path: &std::path::Path) -> String {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject as _;
    let der = CertificateDer::from_pem_file(pem_path).expect("a PEM certificate");
    gantry_proxy::fingerprint_sha256(&der)
}

#[test]
fn trust_prints_the_local_ca_path_fingerprint_and_expiry_as_json() {
    let project = TestProject::new(env!("CARGO_BIN_EXE_gantry"));
    let run = project.gantry(&["trust", "--output", "json"]);
    run.expect_code(0);
    let report = run.json();
    let keys: Vec<&str> = report
        .as_object()
        .expect("an object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["path", "fingerprint_sha256", "not_after"],
        "{report}"
    );

    let path = std::path::PathBuf::from(report["path"].as_str().expect("a path"));
    assert_eq!(path, project.state_dir().join("proxy/ca/ca.pem"));
    assert!(path.is_file(), "the CA was made so that the path exists");
    let fingerprint = report["fingerprint_sha256"].as_str().expect("a string");
    assert_eq!(fingerprint, fingerprint_of(&path));
    assert_eq!(fingerprint.len(), 32 * 3 - 1, "AB:CD:... over 32 bytes");
    let not_after = report["not_after"].as_str().expect("a string");
    assert!(
        not_after.len() >= 20 && not_after.as_bytes()[4] == b'-',
        "RFC 3339: {not_after}"
    );
    let key = std::fs::read_to_string(path.with_file_name("ca.key")).expect("the key file");
    assert!(
        !run.stdout.contains(key.trim()) && !run.stdout.contains("PRIVATE KEY"),
        "the key is never printed"
    );

    // The next call finds the same CA.
    let again = project.gantry(&["trust", "--output", "json"]);
    again.expect_code(0);
    assert_eq!(again.json(), report);

    // The text names the file and how to trust it on each system.
    let text = project.gantry(&["trust", "--output", "text"]);
    text.expect_code(0);
    for expected in [
        path.to_str().expect("utf-8"),
        fingerprint,
        "update-ca-certificates",
        "update-ca-trust",
        "security add-trusted-cert",
        "certutil",
    ] {
        assert!(
            text.stdout.contains(expected),
            "{expected}: {}",
            text.stdout
        );
    }
    assert!(!text.stdout.contains("PRIVATE KEY"));
}

#[test]
fn a_damaged_local_ca_is_an_error_naming_the_file_not_replaced() {
    let project = TestProject::new(env!("CARGO_BIN_EXE_gantry"));
    let ca = project.state_dir().join("proxy/ca");
    std::fs::create_dir_all(&ca).expect("creates");
    std::fs::write(ca.join("ca.pem"), "garbage").expect("writes");
    std::fs::write(ca.join("ca.key"), "garbage").expect("writes");
    let run = project.gantry(&["trust", "--output", "json"]);
    run.expect_code(6);
    let error = &run.json()["error"];
    assert_eq!(error["code"], "tls.local_ca_failed");
    assert!(
        error["message"]
            .as_str()
            .expect("a message")
            .contains("ca.pem"),
        "{error}"
    );
    assert!(error["hint"].as_str().is_some(), "{error}");
    assert_eq!(
        std::fs::read_to_string(ca.join("ca.pem")).expect("reads"),
        "garbage"
    );
}
