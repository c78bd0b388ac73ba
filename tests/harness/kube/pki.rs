//! Credentials of one test cluster, made with the openssl CLI (installed by scripts/kube-bins.sh):
//! a CA, the apiserver's serving certificate for 127.0.0.1/localhost signed by it, the
//! service-account signing keypair, a static admin token and a kubeconfig using it.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

pub(crate) struct Pki {
    pub(crate) ca_crt: PathBuf,
    pub(crate) serving_crt: PathBuf,
    pub(crate) serving_key: PathBuf,
    pub(crate) sa_key: PathBuf,
    pub(crate) sa_pub: PathBuf,
    pub(crate) token: String,
    pub(crate) token_file: PathBuf,
}

/// openssl configuration: the extensions Go's TLS verification wants (a CA allowed to sign, a
/// serverAuth leaf whose SANs cover how clients reach the apiserver). A private file instead of
/// the system openssl.cnf keeps the result independent of the machine's defaults.
const OPENSSL_CNF: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign,digitalSignature
subjectKeyIdentifier = hash
[serving]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc
authorityKeyIdentifier = keyid
";

fn openssl(dir: &Path, args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .context("running openssl (run `bash scripts/kube-bins.sh`, it installs it)")?;
    if !out.status.success() {
        bail!(
            "`openssl {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Write everything into `dir` (which exists). P-256 keys: generating them takes milliseconds,
/// RSA keys take noticeably longer on a busy machine.
pub(crate) fn generate(dir: &Path) -> Result<Pki> {
    std::fs::write(dir.join("openssl.cnf"), OPENSSL_CNF)?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec![
        "req",
        "-x509",
        "-config",
        "openssl.cnf",
        "-extensions",
        "ca",
    ];
    ca.extend(ec);
    ca.extend(["-days", "2", "-subj", "/CN=meshpath-test-ca"]);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    openssl(dir, &ca)?;
    let mut csr = vec!["req", "-new", "-config", "openssl.cnf"];
    csr.extend(ec);
    csr.extend(["-subj", "/CN=kube-apiserver"]);
    csr.extend(["-keyout", "serving.key", "-out", "serving.csr"]);
    openssl(dir, &csr)?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "serving.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            "serving",
            "-out",
            "serving.crt",
        ],
    )?;
    openssl(
        dir,
        &[
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
            "sa.key",
        ],
    )?;
    openssl(dir, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;

    let token = random_hex(16)?;
    let token_file = dir.join("tokens.csv");
    // token,user,uid,"groups": system:masters is bound to cluster-admin by the default RBAC policy.
    std::fs::write(
        &token_file,
        format!("{token},meshpath-test-admin,meshpath-test-admin,\"system:masters\"\n"),
    )?;
    Ok(Pki {
        ca_crt: dir.join("ca.crt"),
        serving_crt: dir.join("serving.crt"),
        serving_key: dir.join("serving.key"),
        sa_key: dir.join("sa.key"),
        sa_pub: dir.join("sa.pub"),
        token,
        token_file,
    })
}

fn random_hex(bytes: usize) -> Result<String> {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .context("reading /dev/urandom")?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A kubeconfig for `server` that trusts `ca` and authenticates with `token`.
pub(crate) fn kubeconfig(server: &str, ca: &Path, token: &str) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: meshpath-test
  cluster:
    server: {server}
    certificate-authority: {ca}
users:
- name: admin
  user:
    token: {token}
contexts:
- name: meshpath-test
  context:
    cluster: meshpath-test
    user: admin
    namespace: default
current-context: meshpath-test
",
        ca = ca.display()
    )
}
