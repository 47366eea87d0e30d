//! Certificates for the TLS tests, made with `openssl` at test time: a CA, a server certificate
//! for 127.0.0.1 and a client certificate, all signed by that CA. Shared by the exporter's
//! tests and the CLI's (`#[path]`).
#![allow(dead_code)] // each test binary uses a subset

use std::path::Path;
use std::process::{Command, Stdio};

/// A CA made in `dir` and a server certificate for 127.0.0.1 it signed: (ca, cert, key).
/// The CA's key stays in `dir` for [`client_certificate`].
pub fn certificates(dir: &Path) -> (String, String, String) {
    let path = |name: &str| dir.join(name).to_str().unwrap().to_string();
    let (ca, ca_key) = (path("ca.pem"), path("ca.key"));
    let ca_args = [
        &["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", &ca_key, "-out", &ca, "-days", "1"][..],
        &["-subj", "/CN=bpfstream test CA", "-addext", "basicConstraints=critical,CA:TRUE"],
        &["-addext", "keyUsage=critical,keyCertSign"],
    ]
    .concat();
    openssl(&ca_args);
    let (cert, key) = signed(dir, "server", "127.0.0.1", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
    (ca, cert, key)
}

/// A client certificate signed by the CA [`certificates`] made in `dir`: (cert, key).
pub fn client_certificate(dir: &Path) -> (String, String) {
    signed(dir, "client", "bpfstream agent", "extendedKeyUsage=clientAuth\n")
}

/// A key and a certificate named `name` for `subject`, signed by the CA in `dir` with
/// `extensions` (openssl's extension file syntax).
fn signed(dir: &Path, name: &str, subject: &str, extensions: &str) -> (String, String) {
    let path = |suffix: &str| dir.join(format!("{name}{suffix}")).to_str().unwrap().to_string();
    let (ca, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let (ca, ca_key) = (ca.to_str().unwrap(), ca_key.to_str().unwrap());
    let (cert, key, csr, ext) = (path(".pem"), path(".key"), path(".csr"), path(".ext"));
    std::fs::write(&ext, format!("basicConstraints=CA:FALSE\n{extensions}")).unwrap();
    let subject = format!("/CN={subject}");
    openssl(&["req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", &subject]);
    openssl(
        &[
            &["x509", "-req", "-in", &csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial"][..],
            &["-out", &cert, "-days", "1", "-extfile", &ext],
        ]
        .concat(),
    );
    (cert, key)
}

fn openssl(args: &[&str]) {
    let status = Command::new("openssl").args(args).stdout(Stdio::null()).stderr(Stdio::null()).status();
    assert!(status.expect("openssl").success(), "openssl {args:?}");
}
