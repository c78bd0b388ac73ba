//! Command lines of the three control-plane components, and waiting until each one serves.

use std::process::Command;
use std::time::Duration;

use anyhow::Result;

use super::process::{http_ok, wait_ready, Proc};
use super::KubeCluster;

impl KubeCluster {
    pub(super) fn spawn_etcd(&self, peer_port: u16) -> Result<Proc> {
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(self.bins.join("etcd"));
        cmd.arg("--name=meshpath-test")
            .arg(format!("--data-dir={}", self.dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={}", self.etcd_url))
            .arg(format!("--advertise-client-urls={}", self.etcd_url))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=meshpath-test={peer}"))
            .arg("--log-level=warn")
            // Test data need not survive a machine crash; fsync would only slow every write.
            .arg("--unsafe-no-fsync");
        let mut p = Proc::spawn("etcd", cmd, &self.dir.join("etcd.log"))?;
        let health = format!("{}/health", self.etcd_url);
        wait_ready(&mut p, "healthy", Duration::from_secs(30), || {
            http_ok(&health, None)
        })?;
        Ok(p)
    }

    pub(super) fn spawn_apiserver(&self) -> Result<Proc> {
        let pki = self.pki();
        let mut cmd = Command::new(self.bins.join("kube-apiserver"));
        cmd.arg(format!("--etcd-servers={}", self.etcd_url))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={}", self.apiserver_port))
            // The default reconciler keeps writing the advertise address into the `kubernetes`
            // Endpoints, which rejects loopback addresses, and logs that error forever.
            .arg("--endpoint-reconciler-type=none")
            // SIGTERM otherwise waits ~40 s for the controller-manager's open watches to end;
            // with a bounded grace they are cut after it and the apiserver exits in ~1 s.
            .arg("--shutdown-watch-termination-grace-period=2s")
            .arg(format!("--tls-cert-file={}", pki.serving_crt.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving_key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca_crt.display()))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ))
            .arg(format!("--token-auth-file={}", pki.token_file.display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--service-cluster-ip-range={}",
                self.opts.service_cidr
            ))
            // The agent's DaemonSet (deploy/) runs privileged, like any eBPF loader.
            .arg("--allow-privileged=true")
            .arg(format!(
                "--cert-dir={}",
                self.dir.join("apiserver-certs").display()
            ));
        let mut p = Proc::spawn("kube-apiserver", cmd, &self.dir.join("apiserver.log"))?;
        let readyz = format!("{}/readyz", self.server_url());
        let ca = pki.ca_crt.clone();
        wait_ready(&mut p, "ready", Duration::from_secs(90), || {
            http_ok(&readyz, Some(&ca))
        })?;
        Ok(p)
    }

    pub(super) fn spawn_controller_manager(&self) -> Result<Proc> {
        let pki = self.pki();
        let mut cmd = Command::new(self.bins.join("kube-controller-manager"));
        cmd.arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .arg("--leader-elect=false")
            // No HTTPS endpoint: nothing scrapes it, and its default port is a fixed one.
            .arg("--secure-port=0")
            // Without kubelets no node ever reports in: the node lifecycle controller would
            // mark every pod NotReady and taint-evict it. The others need a cloud or node CIDRs.
            .arg(
                "--controllers=*,-node-lifecycle-controller,-taint-eviction-controller,\
                 -node-ipam-controller,-cloud-node-lifecycle-controller,-node-route-controller,\
                 -service-lb-controller",
            )
            .arg(format!("--root-ca-file={}", pki.ca_crt.display()))
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.sa_key.display()
            ))
            .arg(format!(
                "--service-cluster-ip-range={}",
                self.opts.service_cidr
            ));
        Proc::spawn(
            "kube-controller-manager",
            cmd,
            &self.dir.join("controller-manager.log"),
        )
    }
}
